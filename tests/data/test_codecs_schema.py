"""Codecs round-trip what the sample format promises; schema constants are derived, not typed twice."""

from __future__ import annotations

import numpy as np
import pytest

from rest_lightning.data.codecs import decode_mp4, decode_png, decode_wav, encode_mp4, encode_png, encode_wav
from rest_lightning.data.schema import ClipRecord, MediaSpec, sample_key


def test_media_spec_derives_samples_per_frame_and_clip_length():
    spec = MediaSpec()
    assert spec.samples_per_frame == 640
    assert spec.clip_frames(4) == 33 and spec.latent_frames(33) == 4
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        spec.latent_frames(32)
    with pytest.raises(ValueError, match="multiple of data.fps"):
        MediaSpec(fps=30, sample_rate=16_000)


def test_wav_is_bit_exact_and_png_lossless():
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32767, size=6400, dtype=np.int16)
    audio, rate = decode_wav(encode_wav(pcm, 16_000))
    assert rate == 16_000
    np.testing.assert_array_equal(np.round(audio * 32768).astype(np.int16), pcm)
    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)


def test_mp4_roundtrip_keeps_frame_count_and_content():
    ramp = np.linspace(20, 80, 32)[None, :, None, None] + np.linspace(0, 40, 32)[None, None, :, None]
    level = 10.0 * np.arange(9)[:, None, None, None]  # each frame brighter: order is checkable
    frames = np.broadcast_to(ramp + level + np.array([0, 20, 40]), (9, 32, 32, 3)).astype(np.uint8)
    decoded = decode_mp4(encode_mp4(frames, 25))
    assert decoded.shape == frames.shape
    mse = np.mean((decoded.astype(float) - frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35  # crf 18 on smooth content
    np.testing.assert_allclose(decoded.mean(axis=(1, 2, 3)), frames.mean(axis=(1, 2, 3)), atol=2.0)
    with pytest.raises(ValueError, match="even"):
        encode_mp4(np.zeros((1, 7, 8, 3), np.uint8), 25)
    with pytest.raises(ValueError, match="cannot decode"):
        decode_mp4(b"not a video")


def test_clip_record_roundtrip_and_key_is_tar_safe():
    rec = ClipRecord("a.b/c", "spk", 3, 66, 33, 25, 16_000, 5, [1, 2, 3], "/x/\udcff.mp4", "train")
    assert ClipRecord.from_json(rec.to_json()) == rec
    assert rec.start_sample == 66 * 640
    key = sample_key("a.b/c", 3)
    assert "." not in key and "/" not in key and key.endswith("000003")


def _decode_shape(data: bytes) -> tuple[int, ...]:
    return decode_mp4(data).shape


def test_a_forked_child_decodes_after_its_parent_did():
    """A DataLoader worker is a forked child of a process that has usually decoded video already. PyAV 18.1.1
    reuses the parent's threaded swscale converter in the child, whose pool has no threads: the child's
    first frame conversion waited for ever. ``frame_to_rgb`` converts on one thread; the pixels are the same
    as the threaded default's."""
    import io
    import multiprocessing

    import av

    from rest_lightning.data.codecs import frame_to_rgb

    frames = (np.random.default_rng(0).random((9, 48, 64, 3)) * 255).astype(np.uint8)
    data = encode_mp4(frames, fps=25)
    parent = decode_mp4(data)  # the parent decodes first, as the main process does before workers start
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_decode_shape, (data,)).get(timeout=120) == parent.shape
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            np.testing.assert_array_equal(frame_to_rgb(frame), frame.to_ndarray(format="rgb24"))
