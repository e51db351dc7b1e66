"""``rest-demo``: run the pipeline end to end on built-in data, as far as it is built, and print where
the outputs are. Each step calls the same library function as its own CLI:

1. synthetic talking-head corpus (``rest-prep mode=synth``);
2. prep to WebDataset shards (``rest-prep``), manifest summary printed;
3. stage 1, the tiny causal VAE (``rest-train experiment=tiny_vae``), with a side-by-side
   reconstruction video;
4. stage 2, the tiny teacher on that VAE's latents (``rest-train experiment=tiny_teacher``), with a
   sampled clip (ground truth | sample, with its audio);
5. stage 3, the tiny ASD student distilled from that teacher (``rest-train experiment=tiny_student``);
6. streaming: a 10-second clip from the student through the ID-Context Cache (``rest-generate``);
7. the engine benchmark (``rest-bench size=tiny``), its table printed;
8. evaluation of the student on the held-out test split (``rest-eval``, protocol smoke_v1) with
   random-weight metric networks: every number is labelled uncalibrated. table.md is printed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from rest_lightning.cli.common import run_cli
from rest_lightning.config import compose

log = logging.getLogger(__name__)

SUMMARY = "Run the REST pipeline end to end on built-in data on a CPU and print where the outputs are."


def _stream_inputs(folder: Path, raw: Path, cfg: DictConfig) -> tuple[Path, Path]:
    """A reference face (first frame of the first synthetic video) and cfg.stream_seconds of new speech."""
    import numpy as np

    from rest_lightning.data.codecs import decode_mp4, encode_png, encode_wav
    from rest_lightning.data.schema import MediaSpec
    from rest_lightning.data.synthetic import make_identity, synthesize_speech

    folder.mkdir(parents=True, exist_ok=True)
    first_video = sorted(raw.rglob("*.mp4"))[0]
    ref = folder / "ref.png"
    ref.write_bytes(encode_png(decode_mp4(first_video.read_bytes())[0]))
    media = MediaSpec()
    rng = np.random.default_rng([cfg.seed, 10])
    audio = synthesize_speech(cfg.stream_seconds, media.sample_rate, make_identity(0, cfg.seed).base_f0, rng)
    speech = folder / "speech.wav"
    speech.write_bytes(encode_wav(audio, media.sample_rate))
    return ref, speech


def _demo(cfg: DictConfig) -> None:
    from rest_lightning.cli.bench import bench
    from rest_lightning.cli.eval import run as run_eval
    from rest_lightning.cli.generate import generate, with_size_overrides
    from rest_lightning.cli.prep import run as run_prep_cli
    from rest_lightning.training import train

    out = Path(cfg.out_dir).resolve()
    outputs: dict[str, Path | None] = {}
    raw, shards = out / "raw", out / "shards"

    log.info("[demo 1/8] synthetic talking-head corpus -> %s", raw)
    run_prep_cli(compose("prep", [
        "mode=synth", f"output={raw}", f"synth.seed={cfg.seed}",
        *(f"synth.{k}={v}" for k, v in cfg.synth.items()),
    ]))
    outputs["synthetic videos"] = raw

    log.info("[demo 2/8] rest-prep -> %s", shards)
    run_prep_cli(compose("prep", [
        f"input={raw}", f"output={shards}", f"prep.seed={cfg.seed}", "prep.progress=false",
        *(f"prep.{k}={v}" for k, v in cfg.prep.items()),
    ]))
    outputs["shards"] = shards
    outputs["manifest"] = shards / "manifest.json"

    log.info("[demo 3/8] stage 1: tiny causal VAE")
    vae = train(compose("train", [
        "experiment=tiny_vae", f"data.cfg.root={shards}", f"data.cfg.latent_frames={cfg.prep.latent_frames}",
        f"run_dir={out / 'runs' / 'tiny_vae'}", "resume=never", f"seed={cfg.seed}",
        f"trainer.max_steps={cfg.vae_steps}", f"trainer.val_check_interval={cfg.vae_steps}",
        f"checkpoint.every_n_steps={cfg.vae_steps}", f"stage.loss.disc_start={cfg.vae_steps // 2}",
    ]))
    outputs["VAE run"] = vae.run_dir
    outputs["VAE checkpoint"] = vae.last_checkpoint
    videos = sorted((vae.run_dir / "media").glob("reconstruction_step*.mp4"))
    outputs["VAE reconstruction"] = videos[-1] if videos else None

    log.info("[demo 4/8] stage 2: tiny teacher on the VAE's latents")
    teacher = train(compose("train", [
        "experiment=tiny_teacher", f"data.cfg.root={shards}", f"data.cfg.latent_frames={cfg.prep.latent_frames}",
        f"stage.vae_checkpoint={vae.last_checkpoint}", f"run_dir={out / 'runs' / 'tiny_teacher'}", "resume=never",
        f"seed={cfg.seed}", f"trainer.max_steps={cfg.teacher_steps}",
        f"trainer.val_check_interval={cfg.teacher_steps}", f"checkpoint.every_n_steps={cfg.teacher_steps}",
    ]))
    outputs["teacher run"] = teacher.run_dir
    outputs["teacher checkpoint"] = teacher.last_checkpoint
    samples = sorted((teacher.run_dir / "media").glob("sample_step*.mp4"))
    outputs["teacher sample"] = samples[-1] if samples else None

    log.info("[demo 5/8] stage 3: tiny ASD student distilled from the teacher")
    student = train(compose("train", [
        "experiment=tiny_student", f"data.cfg.root={shards}", f"data.cfg.latent_frames={cfg.prep.latent_frames}",
        f"init_from={teacher.last_checkpoint}", f"stage.vae_checkpoint={vae.last_checkpoint}",
        "stage.random_teacher_ok=false", f"run_dir={out / 'runs' / 'tiny_student'}", "resume=never",
        f"seed={cfg.seed}", f"trainer.max_steps={cfg.student_steps}",
        f"trainer.val_check_interval={cfg.student_steps}", f"checkpoint.every_n_steps={cfg.student_steps}",
    ]))
    outputs["student run"] = student.run_dir
    outputs["student checkpoint"] = student.last_checkpoint
    window = compose("train", ["experiment=tiny_student", "data.cfg.root=x"]).stage.cache.window
    stream = [f"stream.window={window}", f"resolution={cfg.prep.size}"]

    log.info("[demo 6/8] streaming %.0f s from the student (ID-Context Cache, W=%d)", cfg.stream_seconds, window)
    ref, speech = _stream_inputs(out / "stream", raw, cfg)
    outputs["streamed video"] = generate(compose("generate", with_size_overrides([
        f"ckpt={student.last_checkpoint}", f"vae_ckpt={vae.last_checkpoint}", f"ref={ref}", f"audio={speech}",
        f"out={out / 'stream' / 'student_stream.mp4'}", "ref_detector=haar", *stream,
    ])))

    log.info("[demo 7/8] rest-bench: the tiny engine, %d chunks", cfg.bench_chunks)
    bench_json = out / "bench_tiny.json"
    bench(compose("bench", with_size_overrides([f"chunks={cfg.bench_chunks}", f"out={bench_json}", *stream])))
    outputs["bench report"] = bench_json

    log.info("[demo 8/8] rest-eval: the student on the held-out test split (random-weight metrics)")
    run_eval(compose("eval", [
        f"testset={shards}", "protocol=smoke_v1", f"out={out / 'eval'}", f"max_items={cfg.eval_items}",
        f"ckpts={{student: '{student.last_checkpoint}'}}", f"vae_ckpt={vae.last_checkpoint}",
        f"bench={{student: '{bench_json}'}}", "generate=[" + ",".join(f"'{o}'" for o in stream) + "]",
        "eval.networks=tiny", "eval.allow_random_weights=true", "bootstrap.samples=200", "bootstrap.frechet_samples=20",
    ]))
    table = out / "eval" / "table.md"
    outputs["evaluation table"] = table
    print("\n" + table.read_text())

    print("\nrest-demo finished. Outputs:")
    for name, path in outputs.items():
        print(f"  {name:<20} {path}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("rest-demo", "demo", SUMMARY, _demo, argv)


if __name__ == "__main__":
    sys.exit(main())
