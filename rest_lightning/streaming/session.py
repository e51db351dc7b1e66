"""One ``rest-serve`` session: the protocol spoken over a WebSocket, and the worker thread that runs the
session's own ``StreamingGenerator`` (DESIGN §5, issue 15).

Protocol, one session per connection:

- client: text ``{"type": "hello", "sample_rate": 16000, "format": "f32le" | "s16le"}`` (mono PCM at the audio
  encoder's rate; the server resamples nothing, so another rate is refused);
- server: text ``{"type": "ready", ...}``: the session's facts (fps, resolution, chunk and look-ahead lengths,
  limits);
- client: binary PCM pieces of any length up to ``max_message_bytes`` (the page sends 20 ms); text
  ``{"type": "ack", "chunk": c}`` once chunk ``c`` has been read; text ``{"type": "end"}`` at the end of speech
  (the rest of the video is generated, then the server closes with 1000);
- server, per chunk: text ``{"type": "chunk", "index", "first_frame", "frames", "sizes", "audio_start",
  "audio_end", "compute_ms", "server_ms"}``, then one binary message: the chunk's frames as JPEGs, concatenated
  (``sizes`` in bytes). ``[audio_start, audio_end)`` are the samples the chunk's frames show; after ``end``,
  text ``{"type": "end", "frames": N}``.

Every close says why, in its code and reason (``CloseCode``): a wrong sample rate or format, a malformed
message, a message over ``max_message_bytes`` (websockets' own 1009 close), a client that stops reading
(``max_unacked_chunks`` chunks not acknowledged, or a send that does not complete in ``send_timeout_s``),
idle, an audio backlog the device cannot keep up with, a failed generation. One session's close never
touches another's.

Threads: the event loop only moves bytes. The session's generator runs in a worker thread, fed through
``AudioFeed``; when the session ends, however it ends, the worker stops at its next audio piece and drops
the generator (and its ``IDContextCache``) before ``Session.run`` returns. Sessions share the model
modules: ``ModelGate`` keeps a new session's generator construction (``StreamingGenerator`` calls ``.to()``
on the shared modules, a write) from overlapping another session's chunk step.

Latency: ``compute_ms`` is the worker's time from taking the audio piece that completed a chunk to its JPEGs
(audio tokens, denoising, VAE decode, encoding); ``server_ms`` counts from that piece's arrival. The page
measures the rest (``static/app.js``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from torch import Tensor
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from rest_lightning.streaming.generator import StreamingGenerator, VideoChunk
from rest_lightning.streaming.media import frames_to_uint8
from rest_lightning.streaming.serve_config import CloseCode, ServeConfig

log = logging.getLogger(__name__)

PCM_FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
PCM16_SCALE = 32768.0
HELLO_KEYS = frozenset({"type", "sample_rate", "format"})
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455 §5.5: a control frame carries 125 bytes, 2 of them the code
MS_PER_S = 1000.0


# --- the shared models -------------------------------------------------------------------------------------


class ModelGate:
    """Lets session workers run the shared models at the same time, and builds a new session's generator
    only while none of them runs (``StreamingGenerator.__init__`` moves the shared modules with ``.to()``).

    A worker holds ``running()`` for its whole stream and steps out in ``idle()`` while it waits for audio
    and at ``checkpoint()`` after each chunk, so a builder waits at most one chunk step."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._running = 0
        self._building = False

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._building)
            self._building = True
            self._condition.wait_for(lambda: self._running == 0)
        try:
            yield
        finally:
            with self._condition:
                self._building = False
                self._condition.notify_all()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._enter()
        try:
            yield
        finally:
            self._leave()

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        self._leave()
        try:
            yield
        finally:
            self._enter()

    def checkpoint(self) -> None:
        with self.idle():
            pass

    def _enter(self) -> None:
        with self._condition:
            self._condition.wait_for(lambda: not self._building)
            self._running += 1

    def _leave(self) -> None:
        with self._condition:
            self._running -= 1
            self._condition.notify_all()


# --- one session ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionEngine:
    """What every session of a server shares.

    Fields:
        make_generator: builds a new ``StreamingGenerator`` (its own cache); called in the worker thread.
        ref: the reference image ``(1, 3, 1, H, W)`` float in [-1, 1].
        sample_rate: the audio encoder's rate, the only one a client may send.
        facts: what the "ready" message reports (fps, resolution, chunk and look-ahead lengths).
        gate: the ``ModelGate`` of the shared modules.
    """

    make_generator: Callable[[], StreamingGenerator]
    ref: Tensor
    sample_rate: int
    facts: dict
    gate: ModelGate


class _Close(Exception):
    """Ends a session with ``code`` and ``reason``."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class _Aborted(Exception):
    """Raised inside the generator's audio iteration when the session has ended."""


@dataclass(frozen=True)
class _ChunkOut:
    """A chunk's frames, encoded, on their way from the worker to the socket."""

    index: int
    first_frame: int
    jpegs: list[bytes]
    audio_start: int
    audio_end: int
    compute_ms: float
    server_ms: float


@dataclass(frozen=True)
class _WorkerEnded:
    error: str | None  # None: the stream ended (or was aborted) cleanly


class AudioFeed:
    """The session's audio on its way from the event loop to the worker: ``StreamingGenerator.generate``
    iterates it, blocking (outside the ``ModelGate``) until the next piece, the end, or an abort."""

    _END = object()

    def __init__(self, gate: ModelGate) -> None:
        self._gate = gate
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.aborted = threading.Event()
        self.received = 0  # samples put (event loop thread)
        self.consumed = 0  # samples taken (worker thread)
        self.last_arrival = 0.0  # perf_counter() when the last piece taken arrived
        self.last_taken = 0.0  # perf_counter() when the worker took it

    def put(self, samples: np.ndarray, arrival: float) -> None:
        self.received += len(samples)
        self._queue.put((samples, arrival))

    def end(self) -> None:
        self._queue.put(self._END)

    def abort(self) -> None:
        self.aborted.set()
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            with self._gate.idle():
                item = self._queue.get()
        if self.aborted.is_set():
            raise _Aborted
        if item is self._END:
            raise StopIteration
        samples, self.last_arrival = item
        self.last_taken = time.perf_counter()
        self.consumed += len(samples)
        return samples


def _encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """``(H, W, 3)`` uint8 RGB -> JPEG bytes."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "OpenCV failed to encode a uint8 RGB frame as JPEG"
    return data.tobytes()


def cut_reason(reason: str) -> str:
    """``reason`` cut to what a close frame carries (UTF-8 bytes)."""
    data = reason.encode()
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return data[: MAX_CLOSE_REASON_BYTES - len("...")].decode(errors="ignore") + "..."


class Session:
    """One connection: hello, the worker thread, and the receive and send loops."""

    def __init__(self, ws: ServerConnection, number: int, config: ServeConfig, engine: SessionEngine) -> None:
        self.ws, self.number, self.config, self.engine = ws, number, config, engine
        self.loop = asyncio.get_running_loop()
        self.feed = AudioFeed(engine.gate)
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.worker_finished = asyncio.Event()
        self.generator: StreamingGenerator | None = None  # set by the worker while it streams
        self.format = PCM_FORMATS["f32le"]
        self.ended_by_client = False
        self.chunks_sent = 0
        self.frames_sent = 0
        self.acked = -1  # the highest chunk index acknowledged
        self.ack_arrived = asyncio.Event()

    async def run(self) -> tuple[CloseCode, str] | None:
        """The session; returns how to close (None: the client is gone)."""
        worker = None
        try:
            await self._hello()
            worker = threading.Thread(target=self._work, name=f"rest-serve-session-{self.number}", daemon=True)
            worker.start()
            await self._send(json.dumps(self._ready()))
            await self._stream()
            return CloseCode.DONE, f"done: {self.frames_sent} frames"
        except _Close as close:
            return close.code, close.reason
        except ConnectionClosed as closed:
            sent = closed.sent  # websockets' own close, e.g. 1009 for a message over max_size
            log.info("session %d: connection closed (%s)", self.number, sent or closed.rcvd or "no close frame")
            return None
        finally:
            self.feed.abort()
            if worker is not None:
                await self.worker_finished.wait()  # the worker dropped its generator and cache

    # --- the exchange ----------------------------------------------------------------------------------

    async def _hello(self) -> None:
        try:
            message = await asyncio.wait_for(self.ws.recv(), self.config.hello_timeout_s)
        except asyncio.TimeoutError:
            raise _Close(CloseCode.POLICY, f"no hello within {self.config.hello_timeout_s:g} s") from None
        if not isinstance(message, str):
            raise _Close(CloseCode.POLICY, "the first message must be the JSON hello, got binary data")
        hello = self._parse(message)
        if hello.get("type") != "hello":
            raise _Close(CloseCode.POLICY, f"the first message must be type 'hello', got {hello.get('type')!r}")
        unknown = sorted(set(hello) - HELLO_KEYS)
        if unknown:
            raise _Close(CloseCode.POLICY, f"hello: unknown keys {unknown}; expected {sorted(HELLO_KEYS)}")
        rate = self.engine.sample_rate
        if hello.get("sample_rate") != rate:
            raise _Close(
                CloseCode.UNSUPPORTED,
                f"sample_rate={hello.get('sample_rate')!r}: this server takes {rate} Hz mono; resample on the client",
            )
        if hello.get("format") not in PCM_FORMATS:
            raise _Close(CloseCode.UNSUPPORTED, f"format={hello.get('format')!r}: expected one of {', '.join(PCM_FORMATS)}")
        self.format = PCM_FORMATS[hello["format"]]

    def _ready(self) -> dict:
        facts = self.engine.facts
        return {"type": "ready", "session": self.number, **facts,
                "max_message_bytes": self.config.max_message_bytes,
                "max_unacked_chunks": self.config.max_unacked_chunks}

    async def _stream(self) -> None:
        """Receive and send until the video is complete (returns) or the session must end (raises)."""
        tasks = [asyncio.create_task(self._receive_loop()), asyncio.create_task(self._send_loop())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await asyncio.wait_for(self.ws.recv(), self.config.idle_timeout_s)
            except asyncio.TimeoutError:
                raise _Close(CloseCode.POLICY, f"idle: no message in {self.config.idle_timeout_s:g} s") from None
            if isinstance(message, bytes):
                self._on_audio(message)
            else:
                self._on_text(self._parse(message))

    def _on_audio(self, data: bytes) -> None:
        if self.ended_by_client:
            raise _Close(CloseCode.POLICY, "audio after 'end'")
        if len(data) % self.format.itemsize:
            raise _Close(CloseCode.BAD_DATA, f"an audio message of {len(data)} bytes is not whole {self._format_name()} samples")
        samples = np.frombuffer(data, dtype=self.format).astype(np.float32)
        if self.format.kind == "i":
            samples /= PCM16_SCALE
        if not np.isfinite(samples).all():
            raise _Close(CloseCode.BAD_DATA, "audio with NaN or infinite samples")
        backlog_s = (self.feed.received + len(samples) - self.feed.consumed) / self.engine.sample_rate
        if backlog_s > self.config.max_backlog_s:
            raise _Close(
                CloseCode.POLICY,
                f"audio backlog {backlog_s:.1f} s > max_backlog_s={self.config.max_backlog_s:g}: slower than real time here",
            )
        if len(samples):
            self.feed.put(np.clip(samples, -1.0, 1.0), time.perf_counter())

    def _on_text(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "ack":
            chunk = message.get("chunk")
            if isinstance(chunk, bool) or not isinstance(chunk, int) or not 0 <= chunk < self.chunks_sent:
                raise _Close(CloseCode.POLICY, f"ack of chunk {chunk!r}, but {self.chunks_sent} chunks were sent")
            self.acked = max(self.acked, chunk)
            self.ack_arrived.set()
        elif kind == "end":
            if self.ended_by_client:
                raise _Close(CloseCode.POLICY, "'end' twice")
            if self.feed.received == 0:
                raise _Close(CloseCode.POLICY, "'end' before any audio: nothing to animate")
            self.ended_by_client = True
            self.feed.end()
        else:
            raise _Close(CloseCode.POLICY, f"unknown message type {kind!r}; expected 'ack' or 'end'")

    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, _WorkerEnded):
                if item.error is not None:
                    raise _Close(CloseCode.FAILED, f"generation failed: {item.error}")
                await self._send(json.dumps({"type": "end", "frames": self.frames_sent}))
                return
            await self._wait_for_acks()
            header = {"type": "chunk", "index": item.index, "first_frame": item.first_frame,
                      "frames": len(item.jpegs), "sizes": [len(j) for j in item.jpegs],
                      "audio_start": item.audio_start, "audio_end": item.audio_end,
                      "compute_ms": round(item.compute_ms, 2), "server_ms": round(item.server_ms, 2)}
            # Counted before the sends: the client may acknowledge before this task resumes.
            self.chunks_sent += 1
            self.frames_sent += len(item.jpegs)
            await self._send(json.dumps(header))
            await self._send(b"".join(item.jpegs))

    async def _wait_for_acks(self) -> None:
        """Flow control: at most ``max_unacked_chunks`` chunks in flight; a client that acknowledges none for
        ``send_timeout_s`` has stopped reading. (Chunks come in bursts, e.g. after "end": a reading client's
        acknowledgements are merely late, so the limit waits instead of closing at once.)"""
        limit, timeout = self.config.max_unacked_chunks, self.config.send_timeout_s
        while self.chunks_sent - (self.acked + 1) >= limit:
            self.ack_arrived.clear()
            try:
                await asyncio.wait_for(self.ack_arrived.wait(), timeout)
            except asyncio.TimeoutError:
                raise _Close(
                    CloseCode.POLICY,
                    f"client stopped reading: {self.chunks_sent - (self.acked + 1)} chunks not acknowledged in "
                    f"{timeout:g} s (max_unacked_chunks={limit})",
                ) from None

    async def _send(self, message: str | bytes) -> None:
        try:
            await asyncio.wait_for(self.ws.send(message), self.config.send_timeout_s)
        except asyncio.TimeoutError:
            raise _Close(
                CloseCode.POLICY, f"client stopped reading: a send waited {self.config.send_timeout_s:g} s"
            ) from None

    def _parse(self, text: str) -> dict:
        try:
            message = json.loads(text)
        except json.JSONDecodeError as err:
            raise _Close(CloseCode.POLICY, f"malformed message: not JSON ({err.msg} at {err.pos})") from None
        if not isinstance(message, dict):
            raise _Close(CloseCode.POLICY, f"malformed message: expected a JSON object, got {type(message).__name__}")
        return message

    def _format_name(self) -> str:
        return next(name for name, dtype in PCM_FORMATS.items() if dtype == self.format)

    # --- the worker thread -------------------------------------------------------------------------------

    def _work(self) -> None:
        """Runs the session's generator over its audio feed, posting encoded chunks to the event loop.

        The generator leaves a chunk's cache write pending while the chunk is out (generator.py) and does it
        when asked for the next one, before it takes more audio. So an abort is raised by the audio feed, after
        that write; stopping the generator at a chunk instead would leave a cycle (the pending write closes over
        the stream and the generator) that only the cycle collector frees, and a full collection holds the GIL,
        stalling every session. That remains the way out only after "end", when no more audio is taken."""
        error = None
        chunks = None
        stopped_at_a_chunk = False
        try:
            with self.engine.gate.building():
                self.generator = self.engine.make_generator()
            with self.engine.gate.running():
                chunks = self.generator.generate(self.engine.ref, self.feed)
                for chunk in chunks:
                    self._post(self._encode(chunk))
                    self.engine.gate.checkpoint()
                    if self.feed.aborted.is_set() and self.ended_by_client:
                        stopped_at_a_chunk = True
                        break
        except _Aborted:
            pass
        except Exception as err:  # reported to the client (1011) and logged with its traceback
            log.exception("session %d: generation failed", self.number)
            error = f"{type(err).__name__}: {err}"
            stopped_at_a_chunk = True
        finally:
            if chunks is not None:
                chunks.close()
            # Dropped before the slot is given back: the cache is freed when the session's slot is.
            chunks = self.generator = None
            if stopped_at_a_chunk:
                gc.collect()
            self._post(_WorkerEnded(error), finished=True)

    def _encode(self, chunk: VideoChunk) -> _ChunkOut:
        frames = frames_to_uint8(chunk.frames)[0]  # (n, H, W, 3) uint8 RGB
        jpegs = [_encode_jpeg(frame, self.config.jpeg_quality) for frame in frames]
        samples_per_frame = self.generator.frame_rule.samples_per_video_frame
        now = time.perf_counter()
        return _ChunkOut(
            chunk.index, chunk.first_frame, jpegs,
            audio_start=chunk.first_frame * samples_per_frame,
            audio_end=(chunk.first_frame + len(jpegs)) * samples_per_frame,
            compute_ms=(now - self.feed.last_taken) * MS_PER_S,
            server_ms=(now - self.feed.last_arrival) * MS_PER_S,
        )

    def _post(self, item: _ChunkOut | _WorkerEnded, finished: bool = False) -> None:
        def deliver() -> None:
            self.outbox.put_nowait(item)
            if finished:
                self.worker_finished.set()

        with contextlib.suppress(RuntimeError):  # the event loop has already closed (server shut down)
            self.loop.call_soon_threadsafe(deliver)
