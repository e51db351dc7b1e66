"""StreamingGenerator properties (DESIGN §5, issue 6), tiny models, float32 on CPU, fixed seeds.

- parity: every denoising step of every chunk of a stream of N > W + 2 chunks equals an uncached forward
  of the same DiT over the whole history [reference, clean chunks 0..i-1 as generated, noisy chunk i]
  with the block-causal windowed pattern, and after chunk W every layer attends over a constant length;
- the switches act: no ID-Sink == no reference at all; no Context-Cache -> chunk i ignores earlier chunks;
- the frame-count rule (``streaming/frames.py``) holds for any audio length;
- audio features from the live buffer equal those of the whole waveform, so how the audio is cut into
  pieces does not change the video.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from rest_lightning.models.attention import AttentionPattern, SelfAttention
from rest_lightning.streaming import DenoiseStep, FrameRule
from rest_lightning.streaming.audio_buffer import AudioBuffer
from tests.streaming.conftest import SAMPLES_PER_LATENT, make_audio, make_generator, make_ref, pieces

TOL = 1e-5  # float32 on CPU: the cached and uncached paths sum the same terms in another order


def run(generator, ref, audio, piece=SAMPLES_PER_LATENT, trace=None, resolution=None):
    return list(generator.generate(ref, pieces(audio, piece), resolution=resolution, trace=trace))


@pytest.mark.parametrize(("window", "chunk_frames"), [(2, 1), (1, 2)])
def test_every_cached_step_equals_the_uncached_block_causal_forward_over_the_history(
    tiny_models, window: int, chunk_frames: int
) -> None:
    num_chunks = window + 3  # N > W + 2: the ring wraps and chunks are evicted
    generator = make_generator(tiny_models, window=window, chunk_frames=chunk_frames, seed=3)
    ref = make_ref(1)
    steps: list[DenoiseStep] = []
    samples = (1 + 8 * (num_chunks * chunk_frames - 1)) * 640  # exactly N chunks
    chunks = run(generator, ref, make_audio(samples, 1), trace=steps.append)
    assert len(chunks) == num_chunks
    assert len(steps) == num_chunks * len(generator.config.timesteps)

    dit = tiny_models.dit
    pattern = AttentionPattern.block_causal(window, chunk_frames)
    with torch.no_grad():
        ref_latent = tiny_models.vae.encode(ref)
        for step in steps:
            i = step.chunk
            history = [c.latent for c in chunks[:i]]
            latents = torch.cat([*history, step.latents], dim=2)
            times = torch.cat([torch.zeros(1, i * chunk_frames), step.timesteps], dim=1)
            audio = torch.cat([c.audio_tokens for c in chunks[: i + 1]], dim=1)
            full = dit(latents, times, audio, ref_latent, pattern)[:, :, i * chunk_frames :]
            torch.testing.assert_close(step.velocity, full, rtol=TOL, atol=TOL)
    assert [s.num_context_chunks for s in steps[:: len(generator.config.timesteps)]] == [
        min(i, window) for i in range(num_chunks)
    ]


def test_attended_key_length_is_constant_after_chunk_w(tiny_models, monkeypatch) -> None:
    """Measured where attention happens: a "cache" that recomputed the context would attend over a
    growing history, or (if windowed) recompute keys over longer sequences; neither passes."""
    window, num_chunks = 2, 7
    lengths: list[int] = []
    original = SelfAttention.attend

    def recording_attend(self, q, k, v, key_mask=None):
        lengths.append(k.shape[-2])
        return original(self, q, k, v, key_mask)

    monkeypatch.setattr(SelfAttention, "attend", recording_attend)
    generator = make_generator(tiny_models, window=window)
    stream = generator.generate(make_ref(), pieces(make_audio((1 + 8 * (num_chunks - 1)) * 640), 5120))
    marks = []
    for _ in stream:
        marks.append(len(lengths))  # calls so far: everything up to this chunk's denoising
    sink_tokens = chunk_tokens = 4  # 2x2 latent grid
    steady = sink_tokens + (window + 1) * chunk_tokens
    calls_per_denoise = len(generator.config.timesteps) * tiny_models.dit.config.num_layers
    start = marks[window] - calls_per_denoise  # chunk W's first denoising step
    after_w = lengths[start:]
    assert len(after_w) > calls_per_denoise and set(after_w) == {steady}, sorted(set(after_w))
    assert max(lengths[:start]) < steady  # before, the window was still filling


def test_cache_bytes_after_200_chunks_equal_those_after_w_plus_1(tiny_models) -> None:
    window = 2
    generator = make_generator(tiny_models, window=window)
    audio = make_audio((1 + 8 * 199) * 640)  # 200 chunks
    sizes = [generator._cache.nbytes() for _ in run(generator, make_ref(), audio)]
    assert len(sizes) == 200 and set(sizes[window + 1 :]) == {sizes[window + 1]}


def test_sink_disabled_equals_no_reference_and_the_sink_matters(tiny_models) -> None:
    audio = make_audio(3 * SAMPLES_PER_LATENT)
    without_sink = run(make_generator(tiny_models, use_id_sink=False), make_ref(2), audio)
    no_ref = run(make_generator(tiny_models), None, audio, resolution=(16, 16))
    with_sink = run(make_generator(tiny_models), make_ref(2), audio)
    for a, b in zip(without_sink, no_ref, strict=True):
        torch.testing.assert_close(a.latent, b.latent, rtol=0, atol=0)
        torch.testing.assert_close(a.frames, b.frames, rtol=0, atol=0)
    assert not torch.allclose(with_sink[-1].latent, no_ref[-1].latent)


def test_context_disabled_makes_a_chunk_independent_of_earlier_chunks(tiny_models) -> None:
    last = 4
    samples = (1 + 8 * last) * 640
    audio = make_audio(samples, 0)
    other = audio.clone()
    window_start = (1 + 8 * last) * 640 + 2 * 640 - 16 * 640  # AudioAlignment.window(last).start
    other[: window_start - 1] = make_audio(window_start - 1, 9)  # earlier chunks hear other audio

    def last_latent(**config):
        return run(make_generator(tiny_models, **config), make_ref(), audio)[last].latent, run(
            make_generator(tiny_models, **config), make_ref(), other
        )[last].latent

    a, b = last_latent(window=2, use_context_cache=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    a, b = last_latent(window=2)  # with the context, the earlier chunks do reach chunk `last`
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("samples", [1, 639, 640, 641, 1920, 5760, 5761, 6400, 11520, 12345])
def test_frame_count_rule_for_any_audio_length(tiny_models, samples: int) -> None:
    chunk_frames = 2
    rule = FrameRule(640, 8, chunk_frames)
    generator = make_generator(tiny_models, window=1, chunk_frames=chunk_frames)
    chunks = run(generator, make_ref(), make_audio(samples), piece=1000)
    expected_frames = -(-samples // 640)
    assert sum(c.frames.shape[2] for c in chunks) == expected_frames == rule.video_frames(samples)
    assert len(chunks) == rule.num_chunks(expected_frames)
    first = 0
    for c in chunks:
        assert c.first_frame == first == rule.first_video_frame(c.index)
        first += c.frames.shape[2]
    assert chunks[0].frames.shape[2] == min(expected_frames, 1 + 8 * (chunk_frames - 1))


def test_frame_rule_arithmetic() -> None:
    rule = FrameRule(640, 8, 1)
    for frames in range(1, 60):
        latents = rule.latent_frames(frames)
        assert 1 + 8 * (latents - 1) >= frames > 1 + 8 * (latents - 2)  # the fewest that cover T
    assert [rule.chunk_video_frames(c) for c in range(3)] == [1, 8, 8]
    assert rule.video_frames(640 * 25) == 25  # one second of audio -> 25 frames
    with pytest.raises(ValueError, match="empty"):
        rule.video_frames(0)


def test_empty_audio_is_refused(tiny_models) -> None:
    with pytest.raises(ValueError, match="empty"):
        list(make_generator(tiny_models).generate(make_ref(), []))


def test_audio_buffer_tokens_equal_whole_waveform_tokens(tiny_models) -> None:
    encoder = tiny_models.audio
    latents = 9
    audio = make_audio((1 + 8 * (latents - 1)) * 640 + 300, 4)[None]
    with torch.no_grad():
        # One frame per call on both sides: a batch of one frame, as the stream computes it.
        whole = torch.cat([encoder.encode_latent_frames(audio, i, 1) for i in range(latents)], dim=1)
        buffer = AudioBuffer(encoder.alignment, 1, torch.device("cpu"))
        got, next_frame = [], 0
        for piece in audio.split(777, dim=1):
            buffer.append(piece)
            while next_frame < latents and buffer.ready(next_frame):
                got.append(buffer.tokens(encoder, next_frame, 1))
                next_frame += 1
        got += [buffer.tokens(encoder, i, 1) for i in range(next_frame, latents)]  # the stream ended
    torch.testing.assert_close(torch.cat(got, dim=1), whole, rtol=0, atol=0)
    assert buffer._samples.shape[1] < audio.shape[1] // 2, "the buffer must drop samples no frame needs"


def test_how_the_audio_is_cut_does_not_change_the_video(tiny_models) -> None:
    audio = make_audio(4 * SAMPLES_PER_LATENT + 77)
    whole = run(make_generator(tiny_models, window=2), make_ref(), audio, piece=audio.shape[0])
    trickle = run(make_generator(tiny_models, window=2), make_ref(), audio, piece=160)
    assert len(whole) == len(trickle)
    for a, b in zip(whole, trickle, strict=True):
        torch.testing.assert_close(a.frames, b.frames, rtol=0, atol=0)


def test_bad_inputs_are_refused_with_the_fix(tiny_models) -> None:
    generator = make_generator(tiny_models)
    with pytest.raises(ValueError, match="multiple of the VAE's spatial compression 8"):
        list(generator.generate(make_ref(size=12), [make_audio(640)]))
    with pytest.raises(ValueError, match="resolution"):
        list(generator.generate(None, [make_audio(640)]))
    with pytest.raises(ValueError, match="compile=none"):
        make_generator(tiny_models, compile="default")



def test_a_stream_closed_before_a_cache_write_frees_the_generator_without_garbage_collection(tiny_models) -> None:
    """A consumer that stops after a chunk (its clean pass still pending) and drops the stream and the
    generator frees both at once, by reference counting: nothing holds them in a cycle."""
    gc.disable()
    try:
        generator = make_generator(tiny_models, window=2)
        alive, cache = weakref.ref(generator), weakref.ref(generator.new_cache(1, (2, 2)))
        stream = generator.generate(make_ref(), pieces(make_audio(4 * SAMPLES_PER_LATENT), SAMPLES_PER_LATENT))
        next(stream), next(stream)  # chunk 1 is out, its cache write not done
        stream.close()
        del stream, generator
        assert alive() is None and cache() is None
    finally:
        gc.enable()
