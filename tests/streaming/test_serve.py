"""rest-serve's protocol (issue 15), with a Python WebSocket client against a server on 127.0.0.1 (an
ephemeral port) built by the CLI's own path from ``conf/serve.yaml`` with a freshly initialised tiny model:

- audio sent gives frames back: ceil(S / 640) frames for S samples, in chunk order, JPEGs of the served
  size, each chunk's audio span next to the last, then a 1000 close;
- one session more than ``max_sessions`` is closed "busy" (1013), and a freed slot takes a new session;
- malformed or oversized messages, a wrong sample rate or format, bad samples, and a client that stops
  reading are closed with a code and a reason while another session goes on streaming;
- a disconnect gives the slot back and drops the session's generator (and with it its cache) at once.

No sleeps: every wait is a blocking receive or ``StreamServer.wait_for_sessions`` with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import urllib.error
import urllib.request
import weakref

import cv2
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from rest_lightning.cli.serve import build_server, main
from rest_lightning.config import compose
from rest_lightning.data.synthetic import make_identity, render_face
from rest_lightning.streaming.serve_config import CloseCode
from rest_lightning.streaming.server import BackgroundServer

SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
SIDE = 16  # video side: a 2x2 latent grid with vae_tiny
PIECE = 320  # 20 ms, as the page sends
MAX_MESSAGE_BYTES = 4096
MAX_UNACKED = 2
SEND_TIMEOUT_S = 1.0  # how long a client that stops reading is waited for
DEADLINE_S = 60.0  # a failing server fails the test instead of hanging it


def write_ref(path) -> str:
    face = render_face(make_identity(0, 0), 4 * SIDE, mouth_open=0.0)
    cv2.imwrite(str(path), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ref = write_ref(tmp_path_factory.mktemp("serve") / "ref.png")
    cfg = compose("serve", [
        f"ref={ref}", "ref_detector=center", f"resolution={SIDE}", "serve.port=0", "serve.max_sessions=2",
        f"serve.max_message_bytes={MAX_MESSAGE_BYTES}", f"serve.max_unacked_chunks={MAX_UNACKED}",
        f"serve.send_timeout_s={SEND_TIMEOUT_S}",
    ])
    with BackgroundServer(build_server(cfg)) as running:
        yield running


@pytest.fixture(autouse=True)
def _sessions_end(server):
    """Each test starts and ends with every slot free."""
    assert server.server.wait_for_sessions(0, DEADLINE_S)
    yield
    assert server.server.wait_for_sessions(0, DEADLINE_S), "a session outlived its test"


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * SAMPLE_RATE)).astype("<f4")


def hello(ws: ClientConnection, sample_rate: int = SAMPLE_RATE, fmt: str = "f32le") -> None:
    ws.send(json.dumps({"type": "hello", "sample_rate": sample_rate, "format": fmt}))


def open_session(server) -> tuple[ClientConnection, dict]:
    ws = connect(server.ws_url, open_timeout=DEADLINE_S)
    hello(ws)
    ready = json.loads(ws.recv(timeout=DEADLINE_S))
    assert ready["type"] == "ready", ready
    return ws, ready


def send_audio(ws: ClientConnection, audio: np.ndarray) -> None:
    for start in range(0, len(audio), PIECE):
        ws.send(audio[start : start + PIECE].tobytes())


def decode_frames(header: dict, payload: bytes) -> list[np.ndarray]:
    """A chunk's binary message -> its frames ``(H, W, 3)`` uint8, split by the header's ``sizes``."""
    assert sum(header["sizes"]) == len(payload)
    ends = np.cumsum(header["sizes"])
    starts = ends - np.array(header["sizes"])
    return [cv2.imdecode(np.frombuffer(payload[a:b], np.uint8), cv2.IMREAD_COLOR) for a, b in zip(starts, ends, strict=True)]


def acknowledge(ws: ClientConnection, header: dict) -> None:
    with contextlib.suppress(ConnectionClosed):  # the server may have sent "end" and closed meanwhile
        ws.send(json.dumps({"type": "ack", "chunk": header["index"]}))


def receive_chunk(ws: ClientConnection) -> tuple[dict, list[np.ndarray]]:
    """One chunk: its header and decoded frames; acknowledged as the page does."""
    header = json.loads(ws.recv(timeout=DEADLINE_S))
    assert header["type"] == "chunk", header
    payload = ws.recv(timeout=DEADLINE_S)
    assert isinstance(payload, bytes), "a chunk header was not followed by its frames"
    acknowledge(ws, header)
    return header, decode_frames(header, payload)


def receive_until_end(ws: ClientConnection) -> tuple[list[dict], list[np.ndarray], dict]:
    """Chunks until the server's "end": their headers, all frames, and the "end" message."""
    headers, frames = [], []
    while True:
        message = json.loads(ws.recv(timeout=DEADLINE_S))
        if message["type"] == "end":
            return headers, frames, message
        assert message["type"] == "chunk", message
        payload = ws.recv(timeout=DEADLINE_S)
        acknowledge(ws, message)
        headers.append(message)
        frames += decode_frames(message, payload)


def close_of(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server's close; its code and reason (messages before it are skipped)."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=DEADLINE_S)
    assert closed.value.rcvd is not None, "the connection ended without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


# --- frames for audio ------------------------------------------------------------------------------------


def test_audio_sent_gives_its_frames_back_in_chunk_order(server):
    audio = speech(2.3)
    ws, ready = open_session(server)
    with ws:
        assert (ready["sample_rate"], ready["fps"], ready["resolution"]) == (SAMPLE_RATE, 25, [SIDE, SIDE])
        assert (ready["chunk_ms"], ready["lookahead_ms"]) == (320.0, 80.0)  # 8 frames; log_mel_tiny's 2 frames
        send_audio(ws, audio)
        ws.send(json.dumps({"type": "end"}))
        headers, frames, end = receive_until_end(ws)
        assert close_of(ws) == (CloseCode.DONE, f"done: {len(frames)} frames")
    assert len(frames) == end["frames"] == math.ceil(len(audio) / SAMPLES_PER_FRAME)  # FrameRule
    assert [h["index"] for h in headers] == list(range(len(headers)))
    assert all(frame.shape == (SIDE, SIDE, 3) for frame in frames)
    assert headers[0]["audio_start"] == 0
    for before, after in zip(headers[:-1], headers[1:], strict=True):
        assert after["audio_start"] == before["audio_end"]
        assert after["first_frame"] == before["first_frame"] + before["frames"]
    assert all(h["compute_ms"] > 0 and h["server_ms"] >= h["compute_ms"] for h in headers)


def test_frames_come_while_audio_streams_before_the_end(server):
    """A chunk is sent as soon as its audio and look-ahead have arrived, not at the end of speech."""
    ws, _ = open_session(server)
    with ws:
        send_audio(ws, speech(1.0))  # chunk 0 needs 1,920 samples, chunk 1 8,000 (its look-ahead included)
        first, _ = receive_chunk(ws)
        second, frames = receive_chunk(ws)
        assert (first["index"], second["index"], len(frames)) == (0, 1, 8)


def test_pcm16_audio_is_taken_too(server):
    ws = connect(server.ws_url, open_timeout=DEADLINE_S)
    with ws:
        hello(ws, fmt="s16le")
        assert json.loads(ws.recv(timeout=DEADLINE_S))["type"] == "ready"
        pcm16 = (speech(0.5) * 32767).astype("<i2")
        for start in range(0, len(pcm16), PIECE):
            ws.send(pcm16[start : start + PIECE].tobytes())
        ws.send(json.dumps({"type": "end"}))
        _, frames, _ = receive_until_end(ws)
    assert len(frames) == math.ceil(0.5 * SAMPLE_RATE / SAMPLES_PER_FRAME)


# --- sessions and the limit ----------------------------------------------------------------------------------


def test_one_more_than_max_sessions_is_refused_busy_and_a_freed_slot_is_taken(server):
    first, second = open_session(server)[0], open_session(server)[0]
    with first, second:
        refused = connect(server.ws_url, open_timeout=DEADLINE_S)
        code, reason = close_of(refused)
        assert code == CloseCode.BUSY and reason.startswith("busy: 2 sessions running")
        first.close()
        assert server.server.wait_for_sessions(1, DEADLINE_S)
        third, _ = open_session(server)
        with third:
            send_audio(second, speech(0.5))
            assert receive_chunk(second)[0]["index"] == 0


def test_a_disconnect_frees_the_slot_and_drops_the_sessions_generator_at_once(server):
    ws, _ = open_session(server)
    send_audio(ws, speech(1.0))
    receive_chunk(ws)  # the worker has built its generator and cache
    (session,) = server.server.sessions()
    generator = weakref.ref(session.generator)
    assert generator() is not None
    ws.close()  # mid-stream: more audio was queued, more chunks were coming
    assert server.server.wait_for_sessions(0, DEADLINE_S)
    # No garbage collection needed: the generator and the IDContextCache it owns were released by reference
    # counting before the slot was given back.
    assert generator() is None


# --- refusals, each while another session goes on ----------------------------------------------------------


def _binary_before_hello(ws):
    ws.send(b"\x00" * 8)


def _not_json(ws):
    ws.send("{this is not json")


def _json_not_hello(ws):
    ws.send(json.dumps({"type": "ack", "chunk": 0}))


def _wrong_sample_rate(ws):
    hello(ws, sample_rate=48000)


def _unknown_format(ws):
    hello(ws, fmt="mp3")


def _unknown_hello_key(ws):
    ws.send(json.dumps({"type": "hello", "sample_rate": SAMPLE_RATE, "format": "f32le", "channels": 2}))


def _oversized(ws):
    hello(ws)
    ws.recv(timeout=DEADLINE_S)
    ws.send(b"\x00" * (MAX_MESSAGE_BYTES + 4))


def _partial_sample(ws):
    hello(ws)
    ws.recv(timeout=DEADLINE_S)
    ws.send(b"\x00" * 6)  # 1.5 float32 samples


def _nan_audio(ws):
    hello(ws)
    ws.recv(timeout=DEADLINE_S)
    ws.send(np.array([0.0, np.nan], "<f4").tobytes())


def _unknown_type(ws):
    hello(ws)
    ws.recv(timeout=DEADLINE_S)
    ws.send(json.dumps({"type": "pause"}))


def _end_before_audio(ws):
    hello(ws)
    ws.recv(timeout=DEADLINE_S)
    ws.send(json.dumps({"type": "end"}))


def _ack_of_unsent_chunk(ws):
    hello(ws)
    ws.recv(timeout=DEADLINE_S)
    ws.send(json.dumps({"type": "ack", "chunk": 5}))


def _stops_reading(ws):
    """Sends speech and never reads nor acknowledges a chunk."""
    hello(ws)
    send_audio(ws, speech(4.0))


BAD_CLIENTS = [
    (_binary_before_hello, CloseCode.POLICY, "the first message must be the JSON hello"),
    (_not_json, CloseCode.POLICY, "malformed message: not JSON"),
    (_json_not_hello, CloseCode.POLICY, "the first message must be type 'hello', got 'ack'"),
    (_wrong_sample_rate, CloseCode.UNSUPPORTED, "sample_rate=48000: this server takes 16000 Hz mono"),
    (_unknown_format, CloseCode.UNSUPPORTED, "format='mp3': expected one of f32le, s16le"),
    (_unknown_hello_key, CloseCode.POLICY, "hello: unknown keys ['channels']"),
    (_oversized, CloseCode.TOO_BIG, f"exceeds limit of {MAX_MESSAGE_BYTES} bytes"),
    (_partial_sample, CloseCode.BAD_DATA, "an audio message of 6 bytes is not whole f32le samples"),
    (_nan_audio, CloseCode.BAD_DATA, "audio with NaN or infinite samples"),
    (_unknown_type, CloseCode.POLICY, "unknown message type 'pause'"),
    (_end_before_audio, CloseCode.POLICY, "'end' before any audio"),
    (_ack_of_unsent_chunk, CloseCode.POLICY, "ack of chunk 5, but 0 chunks were sent"),
    (_stops_reading, CloseCode.POLICY, f"client stopped reading: {MAX_UNACKED} chunks not acknowledged in {SEND_TIMEOUT_S:g} s"),
]


@pytest.mark.parametrize(("misbehave", "code", "reason"), BAD_CLIENTS, ids=[c[0].__name__.strip("_") for c in BAD_CLIENTS])
def test_a_bad_client_is_closed_with_a_reason_while_another_session_goes_on(server, misbehave, code, reason):
    """The reason is the server's, except for an oversized message: websockets closes that itself (1009)."""
    good, _ = open_session(server)
    with good:
        send_audio(good, speech(0.4))
        assert receive_chunk(good)[0]["index"] == 0
        bad = connect(server.ws_url, open_timeout=DEADLINE_S)
        with bad:
            misbehave(bad)
            assert server.server.wait_for_sessions(1, DEADLINE_S)  # the bad one's slot is free again
            received_code, received_reason = close_of(bad)
        assert received_code == code
        assert reason in received_reason
        send_audio(good, speech(0.4, seed=1))
        good.send(json.dumps({"type": "end"}))
        headers, frames, _ = receive_until_end(good)
        assert headers[0]["index"] == 1 and len(frames) == math.ceil(0.8 * SAMPLE_RATE / SAMPLES_PER_FRAME) - 1
        assert close_of(good)[0] == CloseCode.DONE


def test_silent_clients_are_closed_after_the_hello_and_idle_timeouts(tmp_path):
    ref = write_ref(tmp_path / "ref.png")
    cfg = compose("serve", [f"ref={ref}", "ref_detector=center", f"resolution={SIDE}", "serve.port=0",
                            "serve.hello_timeout_s=0.2", "serve.idle_timeout_s=0.2", "serve.warmup_chunks=0"])
    with BackgroundServer(build_server(cfg)) as quick:
        mute = connect(quick.ws_url, open_timeout=DEADLINE_S)
        assert close_of(mute) == (CloseCode.POLICY, "no hello within 0.2 s")
        idle, _ = open_session(quick)
        assert close_of(idle) == (CloseCode.POLICY, "idle: no message in 0.2 s")
        assert quick.server.wait_for_sessions(0, DEADLINE_S)


# --- the page and the command --------------------------------------------------------------------------------


def test_the_page_and_its_scripts_are_served_and_nothing_else(server):
    with urllib.request.urlopen(server.url, timeout=DEADLINE_S) as page:
        assert page.headers["Content-Type"].startswith("text/html") and b"REST live" in page.read()
    for script in ("app.js", "capture-worklet.js"):
        with urllib.request.urlopen(server.url + script, timeout=DEADLINE_S) as response:
            assert response.headers["Content-Type"].startswith("text/javascript")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.url + "config.yaml", timeout=DEADLINE_S)
    assert missing.value.code == 404


def test_it_binds_to_loopback_by_default(server):
    assert server.server.address[0] == "127.0.0.1"
    assert compose("serve", ["ref=x.png"]).serve.host == "127.0.0.1"


@pytest.fixture
def root_logging():
    """``run_cli`` points the root logger at this test's captured stderr: put the handlers back after it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "ref=... is required"),
        (["ref=face.png", "serve.max_sessions=0"], "serve.max_sessions=0: expected a positive integer"),
        (["ref=face.png", "serve.port=70000"], "serve.port=70000"),
        (["ref=face.png", "size=huge"], "size='huge' is not one of"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(overrides, message, capsys, root_logging):
    assert main(overrides) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rest-serve: error: ") and message in err and "\n" not in err, err
