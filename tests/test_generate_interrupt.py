"""``rest-generate`` stopped part-way keeps what it made (issue 15), tiny models, CPU.

- ``kill -9`` of a real process fed audio on stdin leaves ``out.partial.mp4`` that PyAV reads: the frames
  written up to the last log line but at most ``Mp4StreamWriter.max_unsaved_frames`` (one fragment plus
  the video the muxer holds back for audio still in the AAC encoder), with durations that match its frames;
- SIGINT (a real process) and SIGTERM finish the file at ``out``: every frame written, a duration that
  matches them, audio as long as the video, exit 130 / 143 and one line on stderr saying how much was saved;
- a signal that arrives while a chunk is muxed takes effect after the chunk (no hole in the video);
- the signal handlers are the previous ones again afterwards (in-process signals meet a guard handler
  if rest-generate's is missing: the defaults would end pytest).
End of input (stdin closed, exit 0, every frame):
``test_generate_cli.py::test_stdin_pcm_stream_gives_the_same_frames_as_the_file``
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from rest_lightning.cli import generate as generate_cli
from rest_lightning.data.codecs import encode_png, float_to_pcm16
from rest_lightning.data.synthetic import make_identity, synthesize_video
from rest_lightning.streaming.media import AAC_FRAME_SAMPLES, Mp4StreamWriter, partial_path

SR, FPS, SPF = 16000, 25, 640
FAST = ["resolution=32", "stream.window=2", "audio_chunk_ms=40"]
CHUNK_LINE = re.compile(r"chunk \d+: frames \d+\.\.(\d+)")
DEADLINE_S = 120  # a generous bound on a loaded 2-core machine; a healthy run takes a few seconds

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("media")
    video = synthesize_video(make_identity(1, 0), 4.0, 128, 0)
    (root / "face.png").write_bytes(encode_png(video.frames[0]))
    return {"ref": root / "face.png", "pcm": float_to_pcm16(video.audio).astype("<i2").tobytes()}


def unsaved_frames_bound() -> int:
    """``max_unsaved_frames`` of the writer rest-generate builds (25 fps, 16 kHz)."""
    return Mp4StreamWriter("x.mp4", FPS, 32, 32, SR).max_unsaved_frames


@dataclass
class Mp4Facts:
    frames: int  # decoded video frames
    first_pts_s: float
    video_s: float  # the video stream's duration
    audio_end_samples: int  # where the last audio packet ends (pts + duration, at 16 kHz)
    container_s: float  # the file's duration as FFmpeg reports it


def read_mp4(path: Path) -> Mp4Facts:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = [frame.pts * frame.time_base for frame in container.decode(stream)]
        video_s = float(stream.duration * stream.time_base)
        container_s = container.duration / av.time_base
    with av.open(str(path)) as container:
        last = [packet for packet in container.demux(audio=0) if packet.size][-1]
        audio_end = (last.pts + last.duration) * last.time_base * SR
    return Mp4Facts(len(pts), float(pts[0]), video_s, int(audio_end), container_s)


def assert_consistent(facts: Mp4Facts, finished: bool = True) -> None:
    """Frames, durations and audio agree: the video starts at 0 with no gap and the sound ends with it. A
    file cut by a kill ends where a fragment ends, with the AAC frames interleaved into it (one frame of
    slack). FFmpeg's duration of a fragmented file also counts the AAC priming frame (64 ms) that the edit
    list skips."""
    aac_frame_s = AAC_FRAME_SAMPLES / SR
    assert facts.frames > 0
    assert facts.first_pts_s == 0, "the video starts at 0 (the AAC priming is an edit list, not a shift)"
    assert facts.video_s == pytest.approx(facts.frames / FPS, abs=1e-6)
    if finished:
        assert facts.audio_end_samples == facts.frames * SPF, facts
        assert facts.container_s == pytest.approx(facts.video_s + aac_frame_s, abs=1e-3), facts
    else:
        assert abs(facts.audio_end_samples - facts.frames * SPF) <= AAC_FRAME_SAMPLES, facts
        assert 0 <= facts.container_s - facts.video_s <= 2 * aac_frame_s, facts


class LiveGenerate:
    """A real ``rest-generate audio=-`` process: audio goes in on stdin, progress comes back on stderr."""

    def __init__(self, media: dict, out: Path) -> None:
        env = os.environ | {"REST_LOG_LEVEL": "DEBUG", "OMP_NUM_THREADS": "1"}  # DEBUG: the chunk lines
        command = [sys.executable, "-m", "rest_lightning.cli.generate", f"ref={media['ref']}", "audio=-",
                   f"out={out}", *FAST]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.watchdog = threading.Timer(DEADLINE_S, self.proc.kill)  # a hang fails the test, not the suite
        self.watchdog.start()
        self.stderr: list[str] = []
        self.frames_logged = 0

    def feed(self, pcm: bytes) -> None:
        """Write ``pcm`` to stdin from a thread (more than a pipe holds would block us before reading
        stderr); stdin stays open, as a live microphone's pipe does."""

        def write() -> None:
            try:
                self.proc.stdin.write(pcm)
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):  # the process ended (or was killed) first
                pass

        threading.Thread(target=write, daemon=True).start()

    def wait_for_frames(self, frames: int) -> None:
        """Read stderr until the process says it has written ``frames`` frames (blocking reads, no sleeps)."""
        while self.frames_logged < frames:
            line = self.proc.stderr.readline().decode()
            assert line, f"rest-generate ended before frame {frames}:\n{''.join(self.stderr)}"
            self.stderr.append(line)
            if match := CHUNK_LINE.search(line):
                self.frames_logged = int(match.group(1)) + 1

    def finish(self, signum: int) -> tuple[int, list[str]]:
        """Send ``signum``, wait for the exit; returns the exit status (128 + n for death by signal n, as
        a shell reports it) and all of stderr."""
        self.proc.send_signal(signum)
        _, rest = self.proc.communicate()
        self.watchdog.cancel()
        code = self.proc.returncode
        return (128 - code if code < 0 else code), self.stderr + rest.decode().splitlines(keepends=True)


def test_kill_9_leaves_a_playable_prefix_missing_at_most_one_fragment(media, tmp_path) -> None:
    out = tmp_path / "live.mp4"
    live = LiveGenerate(media, out)
    live.feed(media["pcm"])  # 4 s (100 frames); stdin stays open: the stream is live
    bound = unsaved_frames_bound()
    live.wait_for_frames(bound + FPS)  # past the first fragment, whatever the bound
    written = live.frames_logged
    code, stderr = live.finish(signal.SIGKILL)
    assert code == 128 + signal.SIGKILL
    assert not out.exists(), "a killed run never leaves a file at out= (it would look complete)"
    facts = read_mp4(partial_path(out))
    assert_consistent(facts, finished=False)
    assert written - bound <= facts.frames <= 4 * FPS, (written, facts)


@pytest.mark.parametrize("how", ["sigint_subprocess", "sigterm_while_reading_stdin"])
def test_a_stop_signal_finishes_the_file_with_all_frames_written(media, tmp_path, monkeypatch, capsys, how):
    out = tmp_path / "live.mp4"
    if how == "sigint_subprocess":  # Ctrl-C on a real process, wherever it is (computing or reading stdin)
        signum = signal.SIGINT
        live = LiveGenerate(media, out)
        live.feed(media["pcm"][: 2 * SR * 2])
        live.wait_for_frames(FPS)
        written = live.frames_logged
        code, stderr = live.finish(signum)
    else:  # in-process: the signal comes while rest-generate waits for more audio, as a blocked read would
        signum, written = signal.SIGTERM, 1
        stdin = io.BufferedReader(SignalAfter(media["pcm"][: SR * 2], signum))  # 1 s, then SIGTERM
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        with guarded_signals():
            code = generate_cli.main([f"ref={media['ref']}", "audio=-", f"out={out}", *FAST])
        stderr = capsys.readouterr().err.splitlines(keepends=True)
    assert code == 128 + signum  # 130, 143
    assert sum("stopped by" in line for line in stderr) == 1
    message = stderr[-1]
    name = signal.Signals(signum).name
    line = rf"rest-generate: stopped by {name}; saved (\S+) s \((\d+) frames at 25 fps\) in (.+)\n"
    match = re.fullmatch(line, message)
    assert match, message
    seconds, frames = float(match.group(1)), int(match.group(2))
    assert Path(match.group(3)) == out and not partial_path(out).exists()
    facts = read_mp4(out)
    assert_consistent(facts)
    assert facts.frames == frames >= written, "every frame written before the signal is in the file"
    assert seconds == pytest.approx(frames / FPS, abs=0.005)


def not_reached(signum, frame) -> None:
    raise AssertionError(f"{signal.Signals(signum).name} reached the test's handler, not rest-generate's")


@contextmanager
def guarded_signals():
    """SIGINT and SIGTERM raised in-process reach ``not_reached`` unless rest-generate handles them (the
    defaults would end pytest); rest-generate must give the handlers back."""
    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, not_reached) for signum in signums}
    try:
        yield
        assert all(signal.getsignal(signum) is not_reached for signum in signums), "handlers restored"
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class SignalAfter(io.RawIOBase):
    """A stdin that serves ``data`` and then, where a pipe would block for more, receives ``signum``."""

    def __init__(self, data: bytes, signum: int) -> None:
        self.data, self.signum = data, signum

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self.data:
            signal.raise_signal(self.signum)  # rest-generate's handler raises here
            return 0
        n = min(len(buffer), len(self.data))
        buffer[:n], self.data = self.data[:n], self.data[n:]
        return n


def test_a_signal_during_muxing_takes_effect_after_the_chunk(media, tmp_path, monkeypatch, capsys) -> None:
    original = Mp4StreamWriter.write_frames
    calls = []

    def signal_mid_chunk(self, frames):  # chunk 2: half its frames, Ctrl-C, the other half
        calls.append(len(frames))
        if len(calls) == 3:
            original(self, frames[:4])
            signal.raise_signal(signal.SIGINT)
            frames = frames[4:]
        original(self, frames)

    monkeypatch.setattr(Mp4StreamWriter, "write_frames", signal_mid_chunk)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(media["pcm"])))
    out = tmp_path / "out.mp4"
    with guarded_signals():
        assert generate_cli.main([f"ref={media['ref']}", "audio=-", f"out={out}", *FAST]) == 130
    assert len(calls) == 3, "stopped after the chunk the signal came in"
    whole_chunks = sum(calls)  # 1 + 8 + 8
    assert f"saved {whole_chunks / FPS:.2f} s ({whole_chunks} frames" in capsys.readouterr().err
    facts = read_mp4(out)
    assert_consistent(facts)
    assert facts.frames == whole_chunks
