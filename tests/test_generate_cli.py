"""``rest-generate`` and ``rest-bench`` on a synthetic reference and speech (issue 6), tiny models, CPU.

- the mp4 has ``ceil(S / 640)`` frames (25 fps) and the input audio as its audio track;
- ``audio=-`` (raw PCM on stdin) gives the same frames as the file;
- other rates / channel counts are resampled;
- bad input (unreadable image, no face, empty audio, a checkpoint of another stage) fails with a clear
  message, exit status 2, and leaves no output file (complete-looking or partial);
- a failure after some frames keeps them, playable, at ``out.partial.mp4`` and says so, never at ``out``
  (stopping by signal or kill: ``test_generate_interrupt.py``);
- weights load from stage checkpoints by prefix;
- ``rest-bench`` writes the JSON that DESIGN §9 names.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep.media import probe_and_decode_audio
from rest_lightning import generation, sizes
from rest_lightning.cli import bench as bench_cli
from rest_lightning.cli import generate as generate_cli
from rest_lightning.config import ConfigError
from rest_lightning.data.codecs import decode_mp4, encode_png, encode_wav, float_to_pcm16
from rest_lightning.data.synthetic import make_identity, synthesize_video
from rest_lightning.streaming.media import MediaError

SR, FPS, SPF = 16000, 25, 640
FAST = ["resolution=32", "stream.window=2"]  # tiny models at 32x32: a 4x4 latent grid


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("media")
    video = synthesize_video(make_identity(1, 0), 1.5, 128, 0)
    audio = video.audio[: SR + 1234]  # 1.08 s: not a whole number of frames
    (root / "face.png").write_bytes(encode_png(video.frames[0]))
    (root / "speech.wav").write_bytes(encode_wav(audio, SR))
    return {"root": root, "ref": root / "face.png", "wav": root / "speech.wav", "audio": audio}


def run_generate(media, out: Path, *extra: str) -> int:
    return generate_cli.main([f"ref={media['ref']}", f"audio={media['wav']}", f"out={out}", *FAST, *extra])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_mp4_has_one_frame_per_40ms_of_audio_and_the_input_audio(media, tmp_path) -> None:
    out = tmp_path / "out.mp4"
    assert run_generate(media, out) == 0
    frames = decode_mp4(out.read_bytes())
    audio = media["audio"]
    assert frames.shape == (math.ceil(len(audio) / SPF), 32, 32, 3)
    probe = probe_and_decode_audio(str(out), FPS, SR)  # the track as a player decodes it (AAC)
    track = probe.audio.astype(np.float32) / 32768
    assert abs(len(track) - len(audio)) <= SPF  # probe trims audio to whole frames
    n = min(len(track), len(audio))
    assert np.corrcoef(track[:n], audio[:n])[0, 1] > 0.99  # the input audio, in sync (no offset)
    assert leftovers(tmp_path) == ["out.mp4"]


def test_stdin_pcm_stream_gives_the_same_frames_as_the_file(media, tmp_path, monkeypatch) -> None:
    from_file, from_pipe = tmp_path / "file.mp4", tmp_path / "pipe.mp4"
    assert run_generate(media, from_file) == 0
    pcm = float_to_pcm16(media["audio"]).astype("<i2").tobytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(pcm)))
    code = generate_cli.main([f"ref={media['ref']}", "audio=-", f"out={from_pipe}", *FAST, "audio_chunk_ms=40"])
    assert code == 0
    np.testing.assert_array_equal(decode_mp4(from_pipe.read_bytes()), decode_mp4(from_file.read_bytes()))


def test_other_rates_and_channel_counts_are_resampled(media, tmp_path) -> None:
    seconds, rate = 0.7, 44100
    t = np.arange(int(seconds * rate)) / rate
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1) * 0.3
    wav = tmp_path / "stereo44k.wav"
    sf.write(wav, stereo.astype(np.float32), rate, subtype="PCM_16")
    out = tmp_path / "out.mp4"
    assert generate_cli.main([f"ref={media['ref']}", f"audio={wav}", f"out={out}", *FAST]) == 0
    frames = decode_mp4(out.read_bytes())
    assert abs(len(frames) - seconds * FPS) <= 1


@pytest.mark.parametrize("case", ["unreadable_image", "no_face", "empty_audio", "vae_stage_ckpt", "missing_ref"])
def test_bad_input_fails_clearly_and_leaves_no_output(media, tmp_path, capsys, case) -> None:
    args = {"ref": str(media["ref"]), "audio": str(media["wav"])}
    extra: list[str] = []
    expected = {
        "unreadable_image": "cannot be read as an image",
        "no_face": "no face found",
        "empty_audio": "empty",
        "vae_stage_ckpt": "'vae' checkpoint",
        "missing_ref": "does not exist",
    }[case]
    if case == "unreadable_image":
        (tmp_path / "bad.png").write_text("not an image")
        args["ref"] = str(tmp_path / "bad.png")
    elif case == "no_face":
        (tmp_path / "wall.png").write_bytes(encode_png(np.full((96, 96, 3), 128, np.uint8)))
        args["ref"] = str(tmp_path / "wall.png")
    elif case == "empty_audio":
        (tmp_path / "empty.wav").write_bytes(encode_wav(np.zeros(0, np.float32), SR))
        args["audio"] = str(tmp_path / "empty.wav")
    elif case == "vae_stage_ckpt":
        torch.save({"state_dict": {"vae.x": torch.zeros(1)}, "rest": {"stage": "vae"}}, tmp_path / "vae.ckpt")
        extra = [f"ckpt={tmp_path / 'vae.ckpt'}"]
    else:
        args["ref"] = str(tmp_path / "nowhere.png")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = generate_cli.main([f"{k}={v}" for k, v in args.items()] + [f"out={out_dir / 'o.mp4'}", *FAST, *extra])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert leftovers(out_dir) == []


@pytest.mark.parametrize("error", [RuntimeError("simulated crash"), MediaError("simulated bad input")])
def test_a_failure_mid_stream_keeps_what_was_made_under_the_partial_name(
    media, tmp_path, monkeypatch, capsys, error
) -> None:
    from rest_lightning.streaming.generator import StreamingGenerator

    original = StreamingGenerator._denoise_and_decode

    def fail_at_chunk_2(self, stream, trace):
        if stream.chunk == 2:
            raise error
        return original(self, stream, trace)

    monkeypatch.setattr(StreamingGenerator, "_denoise_and_decode", fail_at_chunk_2)
    if isinstance(error, MediaError):  # a user error: one line, exit 2, naming what was kept
        assert run_generate(media, tmp_path / "out.mp4") == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "simulated bad input; the 0.36 s (9 frames) made before it are kept in" in err, err
    else:  # a bug: the traceback, and a log line naming what was kept
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_generate(media, tmp_path / "out.mp4")
        assert "(9 frames) made before it are kept in" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["out.partial.mp4"], "never a file at out= that looks complete"
    assert len(decode_mp4((tmp_path / "out.partial.mp4").read_bytes())) == 1 + 8  # chunks 0 and 1, playable


def test_weights_load_from_stage_checkpoints_by_prefix(media, tmp_path) -> None:
    from omegaconf import OmegaConf

    from rest_lightning.config import compose

    cfg = compose("generate", sizes.with_size_overrides(["ref=x", "audio=y", "stream.seed=7"]))
    source = generation.build_models(cfg)
    student = {f"ema.module.dit.{k}": v for k, v in source.dit.state_dict().items()}
    student |= {f"model.audio_encoder.{k}": v for k, v in source.audio.state_dict().items()}
    torch.save({"state_dict": student, "rest": {"stage": "student"}}, tmp_path / "student.ckpt")
    vae = {f"vae.{k}": v for k, v in source.vae.state_dict().items()}
    torch.save({"state_dict": vae, "rest": {"stage": "vae"}}, tmp_path / "vae.ckpt")
    cfg = OmegaConf.merge(
        cfg, {"ckpt": str(tmp_path / "student.ckpt"), "vae_ckpt": str(tmp_path / "vae.ckpt"), "stream": {"seed": 8}}
    )
    loaded = generation.build_models(cfg)
    for a, b in ((source.dit, loaded.dit), (source.audio, loaded.audio), (source.vae, loaded.vae)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    # The same checkpoint for a model of another config is refused, saying what does not fit.
    other = compose("generate", sizes.with_size_overrides(["ref=x", "audio=y", "model.dit.width=32"]))
    other = OmegaConf.merge(other, {"ckpt": str(tmp_path / "student.ckpt")})
    with pytest.raises(ConfigError, match="(?s)shape mismatch.*model config"):
        generation.build_models(other)


def test_bench_reports_the_design_keys(tmp_path) -> None:
    out = tmp_path / "bench.json"
    args = ["chunks=12", "warmup_chunks=2", "speedup_repeats=2", "resolution=32", "stream.window=2", f"out={out}"]
    assert bench_cli.main(args) == 0
    report = json.loads(out.read_text())
    for key in ("first_frame_latency_s", "fps", "rtf", "peak_memory_bytes", "cache_speedup"):
        assert report[key] > 0, key
    assert set(report["chunk_latency_s"]) >= {"p50", "p95", "p99"}
    assert report["video_frames"] == 1 + 8 * 11 and report["chunks"] == 12
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["resolution"] == [32, 32]
    assert report["chunk_latency_at_s"].keys() == {"10"}


def test_default_prefixes_match_the_teacher_stage_layout(tiny_shards):
    """The prefixes rest-generate tries by default (weights.* null: stored_models.MODULE_PREFIXES) are the ones
    the diffusion stages really save, then a bare denoiser state dict; an explicit weights.* list replaces them."""
    from rest_lightning.config import compose
    from rest_lightning.generation import module_prefixes
    from rest_lightning.training import instantiate_node

    cfg = compose("train", ["experiment=tiny_teacher", f"data.cfg.root={tiny_shards}", "stage.vae_checkpoint=null"])
    stage = instantiate_node(cfg.stage, "stage")
    keys, bare = list(stage.state_dict()), list(stage.model.state_dict())
    generate = compose("generate", sizes.with_size_overrides(["ref=x", "audio=y"]))
    prefixes = module_prefixes(generate)
    for module in ("dit", "audio"):
        *stage_prefixes, bare_prefix = getattr(prefixes, module)
        for prefix in stage_prefixes:
            assert any(k.startswith(prefix) for k in keys), f"no teacher key starts with {prefix!r} ({module})"
        assert any(k.startswith(bare_prefix) for k in bare), f"no denoiser key starts with {bare_prefix!r}"
    custom = compose("generate", sizes.with_size_overrides(["ref=x", "audio=y", "weights.dit=[student.dit.]"]))
    assert module_prefixes(custom).dit == ("student.dit.",) and module_prefixes(custom).vae == prefixes.vae


def _stored_student(tmp_path: Path, resolution: int, **cache) -> Path:
    """A student checkpoint as StudentStage writes one: weights plus its stored architectures and cache, a
    DiT narrower than size=tiny's, and the resolution it trained at."""
    import dataclasses

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rest_lightning.models.audio import AudioEncoder
    from rest_lightning.models.dit import DiT
    from rest_lightning.stages.identity import diffusion_identity_config

    conf = Path(__file__).resolve().parents[1] / "conf" / "model"
    dit_config = dataclasses.replace(instantiate(OmegaConf.load(conf / "dit" / "dit_tiny.yaml")), width=48, num_heads=2)
    audio_config = instantiate(OmegaConf.load(conf / "audio" / "log_mel_tiny.yaml"))
    vae_config = instantiate(OmegaConf.load(conf / "vae" / "vae_tiny.yaml"))
    torch.manual_seed(0)
    state = {f"ema.module.dit.{k}": v for k, v in DiT(dit_config).state_dict().items()}
    state |= {f"ema.module.audio_encoder.{k}": v for k, v in AudioEncoder(audio_config).state_dict().items()}
    config = diffusion_identity_config(dit_config, audio_config, vae_config, 1, True)
    config["cache"] = {"window": 2, "use_id_sink": True, "use_context_cache": True, **cache}
    path = tmp_path / "student.ckpt"
    torch.save({"state_dict": state, "rest": {"stage": "student", "config": config, "resolution": resolution}}, path)
    return path


def test_the_checkpoint_decides_models_cache_and_resolution(media, tmp_path, capsys) -> None:
    from rest_lightning.config import compose

    ckpt = _stored_student(tmp_path, resolution=32, use_id_sink=False)
    cfg = compose("generate", sizes.with_size_overrides(["ref=x", "audio=y", f"ckpt={ckpt}"]))
    models = generation.build_models(cfg)
    assert models.dit.config.width == 48, "the stored DiT, not size=tiny's"
    generator = generation.build_generator(cfg, models)
    assert (generator.config.window, generator.config.use_id_sink) == (2, False), "the trained cache"
    assert generation.resolution_of(cfg, generator, models) == 32, "the trained resolution"

    out = tmp_path / "out.mp4"
    assert generate_cli.main([f"ref={media['ref']}", f"audio={media['wav']}", f"out={out}", f"ckpt={ckpt}"]) == 0
    assert decode_mp4(out.read_bytes()).shape[1:3] == (32, 32), "written at the trained resolution"

    # An explicit setting that contradicts the trained cache is refused, naming both values.
    bad = tmp_path / "bad.mp4"
    code = generate_cli.main([f"ref={media['ref']}", f"audio={media['wav']}", f"out={bad}", f"ckpt={ckpt}",
                              "stream.window=4"])
    err = capsys.readouterr().err
    assert code == 2 and not bad.exists()
    assert "stream.window=4 contradicts" in err and "window=2" in err, err
