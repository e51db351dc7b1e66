"""Issue 12's learning check: on held-out synthetic speakers, two seeds of the SynthTalk recipe improve the
VAE's PSNR and the teacher's identity distance over their untrained start by more than 3x the spread
between the seeds (their standard deviation), both measured here. About 4.6 minutes on 2 cores, hence ``slow``
(not in ``make test``; ``make test-slow`` runs it).

What it does not claim: lip-sync. At this budget no stage learns the mouth (docs/synthtalk.md); the demo's
table reports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eval.synthtalk import calibrate, held_out_speakers, read_split, score, teacher_clips_row, vae_row
from rest_lightning.config import compose
from rest_lightning.stored_models import load_denoiser, load_vae

pytestmark = pytest.mark.slow

SEEDS = (0, 1)
# Sized to stay under 6 minutes on a 2-core CPU (4.6 min measured; 1600 VAE and 400 teacher steps took 11.5).
# One run: VAE 12.3 / 13.0 -> 18.5 / 19.9 dB (gain 6.6 dB against 3 x 1.0 of seed spread), teacher identity
# 0.78 / 0.78 -> 0.35 / 0.25 (drop 0.48 against 3 x 0.07). The teacher trains at batch 4 for time.
VAE_STEPS, TEACHER_STEPS, TEACHER_BATCH = 600, 250, 4
SECONDS = 2.0  # of speech per held-out speaker
EULER_STEPS = 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 synthetic speakers at 32 px; a quarter of them held out for testing."""
    from data_prep.config import PrepConfig
    from data_prep.run import run_prep
    from rest_lightning.data.synthetic import SynthConfig, write_synthetic_corpus

    root = tmp_path_factory.mktemp("synthtalk_learning")
    write_synthetic_corpus(SynthConfig(output=str(root / "raw"), n_videos=24, n_speakers=24, seconds=2.0, size=64,
                                       seed=0))
    summary = run_prep(PrepConfig(input=str(root / "raw"), output=str(root / "shards"), size=32, latent_frames=2,
                                  val_fraction=0.1, test_fraction=0.25, progress=False, workers=1, seed=0))
    assert summary.clips_per_split["test"] > 0, summary
    return root / "shards"


def _train(experiment: str, run_dir: Path, steps: int, seed: int, *overrides: str) -> Path:
    from rest_lightning.training import train

    return train(compose("train", [
        f"experiment={experiment}", f"run_dir={run_dir}", f"seed={seed}", f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}", f"checkpoint.every_n_steps={steps}", "trainer.limit_val_batches=1",
        *overrides,
    ])).last_checkpoint


def _encode(shards: Path, vae_ckpt: Path, out: Path) -> Path:
    from rest_lightning.cli.prep import run as run_prep_cli

    run_prep_cli(compose("prep", ["mode=encode", f"input={shards}", f"output={out}", f"encode.vae={vae_ckpt}",
                                  "encode.progress=false"]))
    return out


@pytest.fixture(scope="module")
def measured(corpus, tmp_path_factory) -> dict[str, np.ndarray]:
    """Per seed: VAE PSNR (dB) and teacher identity distance, untrained (one step) and trained."""
    clips = read_split(corpus, "test")
    calibration = calibrate(clips)
    speakers = held_out_speakers(clips, SECONDS, seed=0)
    runs = tmp_path_factory.mktemp("runs")
    result: dict[str, list[float]] = {k: [] for k in ("psnr_start", "psnr_end", "identity_start", "identity_end")}

    def mean_score(row, attribute: str) -> float:
        return float(np.mean([getattr(score(row(s), s, calibration, True), attribute) for s in speakers]))

    for seed in SEEDS:
        clip = "data.cfg.latent_frames=2"
        vae_start = _train("synthtalk_vae", runs / f"vae0_{seed}", 1, seed, f"data.cfg.root={corpus}", clip)
        vae_end = _train("synthtalk_vae", runs / f"vae_{seed}", VAE_STEPS, seed, f"data.cfg.root={corpus}", clip)
        result["psnr_start"].append(mean_score(vae_row(load_vae(vae_start)), "psnr"))
        vae = load_vae(vae_end)
        result["psnr_end"].append(mean_score(vae_row(vae), "psnr"))

        latents = _encode(corpus, vae_end, runs / f"latents_{seed}")
        teacher = [f"data.cfg.root={latents}", clip, f"stage.vae_checkpoint={vae_end}",
                   f"data.cfg.batch_size={TEACHER_BATCH}"]
        for key, steps in (("identity_start", 1), ("identity_end", TEACHER_STEPS)):
            ckpt = _train("synthtalk_teacher", runs / f"teacher{steps}_{seed}", steps, seed, *teacher)
            row = teacher_clips_row(load_denoiser(ckpt), vae, 2, EULER_STEPS, 3.5, seed)
            result[key].append(mean_score(row, "identity"))
    print({k: np.round(v, 3).tolist() for k, v in result.items()})
    return {k: np.asarray(v) for k, v in result.items()}


# The seed spread is the standard deviation (n - 1) of the trained values over the seeds: what a user of the
# recipe sees from seed to seed. The untrained start varies with the random init (teacher identity 0.81 vs
# 0.86 in one run) and only enters through its mean.


def _spread(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1))


def test_vae_psnr_improves_by_more_than_3x_the_seed_spread(measured):
    start, end = measured["psnr_start"], measured["psnr_end"]
    gain = float(end.mean() - start.mean())
    assert gain > 3 * _spread(end), f"PSNR {start} -> {end} dB"


def test_teacher_identity_distance_falls_by_more_than_3x_the_seed_spread(measured):
    start, end = measured["identity_start"], measured["identity_end"]
    drop = float(start.mean() - end.mean())
    assert drop > 3 * _spread(end), f"identity distance {start} -> {end}"
