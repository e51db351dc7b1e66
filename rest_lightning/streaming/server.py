"""``rest-serve``'s engine: an asyncio server that turns a browser's microphone into a live talking head
(DESIGN §5, issue 15). The page (``streaming/static/``) is served at ``/``, each session is one WebSocket at
``/ws`` speaking ``streaming/session.py``'s protocol, up to ``ServeConfig.max_sessions`` at once; one more
is closed "busy" (1013). A session's slot is given back only after its worker has dropped its generator
and cache, so ``max_sessions`` bounds the caches alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources

import numpy as np
from torch import Tensor
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rest_lightning.streaming.generator import StreamingGenerator
from rest_lightning.streaming.serve_config import CloseCode, ServeConfig
from rest_lightning.streaming.session import MS_PER_S, ModelGate, Session, SessionEngine, cut_reason

log = logging.getLogger(__name__)

WS_PATH = "/ws"
STATIC_FILES = {  # URL path -> (file in streaming/static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/capture-worklet.js": ("capture-worklet.js", "text/javascript; charset=utf-8"),
}


def warm_up(generator: StreamingGenerator, ref: Tensor, chunks: int) -> None:
    """Stream ``chunks`` chunks of silence with ``ref`` and drop them (``ServeConfig.warmup_chunks``)."""
    if chunks < 1:
        return
    rule = generator.frame_rule
    frames = rule.first_video_frame(chunks - 1) + rule.chunk_video_frames(chunks - 1)
    silence = np.zeros(frames * rule.samples_per_video_frame, dtype=np.float32)
    for _ in generator.generate(ref, [silence]):
        pass


class StreamServer:
    """Serves the page and runs up to ``config.max_sessions`` streaming sessions (module doc).

    Args:
        config: ``ServeConfig``.
        make_generator: builds a new ``StreamingGenerator`` (one per session: its own cache); called in the
            session's worker thread.
        ref: the reference image ``(1, 3, 1, H, W)`` float in [-1, 1], shared by all sessions.
        sample_rate, fps: the audio encoder's rate and the video frame rate.
        chunk_video_frames: video frames per chunk after the first (8 with one latent frame per chunk).
        lookahead_samples: audio past a chunk's end its features wait for (``AudioConfig.lookahead_samples``).
    """

    def __init__(
        self,
        config: ServeConfig,
        make_generator: Callable[[], StreamingGenerator],
        ref: Tensor,
        sample_rate: int,
        fps: int,
        chunk_video_frames: int,
        lookahead_samples: int,
    ) -> None:
        if ref.ndim != 5 or ref.shape[:3] != (1, 3, 1):
            raise ValueError(f"ref must be one image (1, 3, 1, H, W) in [-1, 1], got {tuple(ref.shape)}")
        self.config = config
        facts = {  # what each session's "ready" message reports
            "sample_rate": sample_rate,
            "fps": fps,
            "resolution": list(ref.shape[3:]),
            "frame_format": "jpeg",
            "chunk_ms": chunk_video_frames * MS_PER_S / fps,
            "lookahead_ms": lookahead_samples * MS_PER_S / sample_rate,
        }
        self.engine = SessionEngine(make_generator, ref, sample_rate, facts, ModelGate())
        self.address: tuple[str, int] | None = None
        self._static = {
            path: (resources.files(__package__).joinpath("static", name).read_bytes(), content_type)
            for path, (name, content_type) in STATIC_FILES.items()
        }
        self._sessions: dict[int, Session] = {}
        self._opened = 0
        self._changed = threading.Condition()

    # --- observing (tests, the CLI) ----------------------------------------------------------------------

    @property
    def session_count(self) -> int:
        with self._changed:
            return len(self._sessions)

    def sessions(self) -> list[Session]:
        with self._changed:
            return list(self._sessions.values())

    def wait_for_sessions(self, count: int, timeout: float) -> bool:
        """Block (any thread but the server's) until exactly ``count`` sessions hold a slot; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._sessions) == count, timeout)

    # --- serving -----------------------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event, on_bound: Callable[[str, int], None] | None = None) -> None:
        """Listen until ``stop`` is set, then close every session (1001) and wait for their workers."""
        async with serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._http,
            max_size=self.config.max_message_bytes,
            close_timeout=self.config.send_timeout_s,
        ) as server:
            host, port = server.sockets[0].getsockname()[:2]
            self.address = (host, port)
            log.info("rest-serve listening on http://%s:%d/ (max_sessions=%d)", host, port, self.config.max_sessions)
            if on_bound is not None:
                on_bound(host, port)
            await stop.wait()
            server.close(close_connections=True)
            await server.wait_closed()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == WS_PATH:
            return None  # the WebSocket handshake goes on
        if path not in self._static:
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found: {path}; the page is at /\n")
        body, content_type = self._static[path]
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-store")])
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)

    async def _handle(self, ws: ServerConnection) -> None:
        session = self._reserve(ws)
        if session is None:
            reason = f"busy: {self.config.max_sessions} sessions running (max_sessions); try again later"
            log.info("refused a session from %s: %s", ws.remote_address, reason)
            await ws.close(CloseCode.BUSY, reason)
            return
        log.info("session %d: opened from %s", session.number, ws.remote_address)
        close = None
        try:
            close = await session.run()
        finally:
            self._release(session)  # after the worker has dropped its cache (Session.run)
        if close is not None:
            code, reason = close
            log.info("session %d: closing %d %s", session.number, code, reason)
            await ws.close(code, cut_reason(reason))

    def _reserve(self, ws: ServerConnection) -> Session | None:
        with self._changed:
            if len(self._sessions) >= self.config.max_sessions:
                return None
            self._opened += 1
            session = Session(ws, self._opened, self.config, self.engine)
            self._sessions[session.number] = session
            self._changed.notify_all()
            return session

    def _release(self, session: Session) -> None:
        with self._changed:
            del self._sessions[session.number]
            self._changed.notify_all()


class BackgroundServer:
    """A ``StreamServer`` on its own event loop in a daemon thread (tests, notebooks): a context manager whose
    ``url`` is the page and ``ws_url`` the session endpoint."""

    def __init__(self, server: StreamServer, start_timeout_s: float = 60.0) -> None:
        self.server = server
        self._start_timeout_s = start_timeout_s
        self._bound = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="rest-serve", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.address
        return f"http://{host}:{port}/"

    @property
    def ws_url(self) -> str:
        host, port = self.server.address
        return f"ws://{host}:{port}{WS_PATH}"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        if not self._bound.wait(self._start_timeout_s):
            raise TimeoutError(f"rest-serve did not start listening within {self._start_timeout_s:g} s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self._start_timeout_s)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.server.serve(self._stop, on_bound=lambda host, port: self._bound.set())
        except BaseException as err:  # handed to the thread that entered the context
            self._error = err
            self._bound.set()
