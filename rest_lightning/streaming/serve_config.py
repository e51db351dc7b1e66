"""What ``rest-serve`` promises a client: the limits of a session (``ServeConfig``, ``conf/serve.yaml``
``serve:``) and the codes a session ends with (``CloseCode``). The protocol is in ``streaming/session.py``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class CloseCode(IntEnum):
    """The close codes a session ends with (RFC 6455 §7.4.1; 1013 from the IANA registry)."""

    DONE = 1000  # the video of all audio up to "end" was sent
    GOING_AWAY = 1001  # the server is shutting down (websockets' own close)
    UNSUPPORTED = 1003  # wrong sample rate or PCM format
    BAD_DATA = 1007  # audio bytes that are not whole samples, or NaN / infinite samples
    POLICY = 1008  # protocol misuse, idle, a client that stopped reading, an audio backlog
    TOO_BIG = 1009  # a message over max_message_bytes (websockets closes with this itself)
    FAILED = 1011  # generation raised: the reason names the error, the server log has the traceback
    BUSY = 1013  # "try again later": max_sessions sessions are running


@dataclass(frozen=True)
class ServeConfig:
    """The server's network and per-session limits (``conf/serve.yaml`` ``serve:``).

    Fields:
        host: address to listen on; loopback by default, so only this machine can connect (a browser allows
            the microphone only on https or on localhost / 127.0.0.1 anyway).
        port: TCP port; 0 picks a free one.
        max_sessions: sessions streaming at once, each with its own cache; one more is closed "busy".
        max_message_bytes: largest message a client may send.
        max_unacked_chunks: chunks in flight (sent, not acknowledged); the next waits for an acknowledgement,
            and a session that sends none for ``send_timeout_s`` has stopped reading.
        max_backlog_s: received audio not yet taken by the generator before a session is closed (a device
            slower than real time would otherwise queue audio without bound).
        hello_timeout_s, idle_timeout_s: seconds a client may take to say hello, and to stay silent after.
        send_timeout_s: seconds one send, or an acknowledgement the next chunk waits for, may take before the
            client counts as not reading (also the close handshake's limit).
        jpeg_quality: quality of the frames sent (OpenCV, 0-100).
        warmup_chunks: chunks of silence streamed before listening (``warm_up``), so that the first
            session's first chunk does not pay the one-time costs (allocations, kernel selection, compile).
    """

    host: str = "127.0.0.1"
    port: int = 8765  # design choice: a free port unlikely to clash
    max_sessions: int = 2  # design choice: a 2-core CPU runs two tiny streams in real time
    max_message_bytes: int = 65536  # design choice: 1 s of f32 mono at 16 kHz (64,000 bytes) fits
    max_unacked_chunks: int = 8  # design choice: 2.56 s of video at 8 frames per chunk and 25 fps
    max_backlog_s: float = 10.0  # design choice
    hello_timeout_s: float = 10.0  # design choice
    idle_timeout_s: float = 30.0  # design choice
    send_timeout_s: float = 10.0  # design choice
    jpeg_quality: int = 90  # design choice: blocking artefacts invisible at 512 px
    warmup_chunks: int = 2  # design choice: as rest-bench's warm-up, shorter

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"serve.host={self.host!r}: expected an address such as 127.0.0.1 or 0.0.0.0")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"serve.port={self.port!r}: expected 0 (any free port) .. 65535")
        for name in ("max_sessions", "max_message_bytes", "max_unacked_chunks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"serve.{name}={value!r}: expected a positive integer")
        for name in ("max_backlog_s", "hello_timeout_s", "idle_timeout_s", "send_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"serve.{name}={value!r}: expected a positive number of seconds")
        if isinstance(self.warmup_chunks, bool) or not isinstance(self.warmup_chunks, int) or self.warmup_chunks < 0:
            raise ValueError(f"serve.warmup_chunks={self.warmup_chunks!r}: expected an integer >= 0")
        if isinstance(self.jpeg_quality, bool) or not isinstance(self.jpeg_quality, int) or not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"serve.jpeg_quality={self.jpeg_quality!r}: expected an integer 0..100")
