"""rest-eval protocol=synthtalk_v1 (eval/synthtalk.py) and the stored-model loader its rows stream with
(rest_lightning/stored_models.py), on the tiny eval corpus with freshly initialised tiny checkpoints
written the way the stages write them (weights under the stage prefixes, ``rest.config``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from eval.synthtalk import (
    COLUMNS,
    bootstrap,
    calibrate,
    evaluate,
    held_out_speakers,
    read_split,
    score,
    summarise,
    truth_row,
)
from rest_lightning.cli.eval import main as eval_main
from rest_lightning.config import compose
from rest_lightning.data.codecs import decode_mp4
from rest_lightning.models.audio import AudioEncoder
from rest_lightning.models.dit import DiT
from rest_lightning.models.vae import CausalVideoVAE
from rest_lightning.stages.base import plain_config
from rest_lightning.stages.identity import diffusion_identity_config
from rest_lightning.stored_models import StoredModelError, load_denoiser, load_vae, stream_config

WINDOW = 1


@pytest.fixture(scope="module")
def stored(eval_corpus) -> dict[str, Path]:
    """Random tiny VAE / teacher / student checkpoints with the metadata the stages save."""
    from dataclasses import asdict

    torch.manual_seed(0)
    root = eval_corpus["root"] / "synthtalk_ckpts"
    root.mkdir(exist_ok=True)
    cfg = compose("train", ["experiment=tiny_student", "data.cfg.root=x"])
    dit_cfg, audio_cfg, vae_cfg = (instantiate(cfg.model[k]) for k in ("dit", "audio", "vae"))
    dit, audio, vae = DiT(dit_cfg), AudioEncoder(audio_cfg), CausalVideoVAE(vae_cfg)
    weights = {f"ema.module.dit.{k}": v for k, v in dit.state_dict().items()}
    weights |= {f"ema.module.audio_encoder.{k}": v for k, v in audio.state_dict().items()}
    identity = diffusion_identity_config(dit_cfg, audio_cfg, vae_cfg, 1, True)
    cache = {"window": WINDOW, "use_id_sink": True, "use_context_cache": True}
    paths = {name: root / f"{name}.ckpt" for name in ("vae", "teacher", "student")}
    torch.save({"state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()},
                "rest": {"stage": "vae", "config": {"vae": plain_config(asdict(vae_cfg)), "ema": False}}}, paths["vae"])
    torch.save({"state_dict": weights, "rest": {"stage": "teacher", "config": identity}}, paths["teacher"])
    torch.save({"state_dict": weights, "rest": {"stage": "student", "config": {**identity, "cache": cache}}},
               paths["student"])
    return paths


def test_student_streams_with_its_trained_cache(stored):
    model = load_denoiser(stored["student"])
    assert model.stage == "student" and model.cache["window"] == WINDOW
    assert stream_config(model, seed=3).window == WINDOW
    assert stream_config(model, window=WINDOW).window == WINDOW  # repeating a stored value is fine
    with pytest.raises(StoredModelError, match="contradicts"):
        stream_config(model, window=WINDOW + 1)
    teacher = load_denoiser(stored["teacher"])
    assert teacher.cache is None and stream_config(teacher).window == 1


def test_stored_model_loader_refuses_the_wrong_stage(stored):
    with pytest.raises(StoredModelError, match="not a VAE-stage"):
        load_vae(stored["student"])
    with pytest.raises(StoredModelError, match="'vae' stage checkpoint"):
        load_denoiser(stored["vae"])


def test_frozen_copy_of_the_reference_wins_identity_but_scores_no_lip_sync(eval_corpus):
    """The degenerate student issue 12 warns about: identity and drift are perfect, lip-sync and motion 0."""
    clips = read_split(eval_corpus["shards"])
    calibration = calibrate(clips)
    speakers = held_out_speakers(clips, seconds=4.0, seed=0, limit=3)

    def frozen(speaker):
        return truth_row(speaker)[:1].expand(len(speaker.truth), -1, -1, -1).clone()

    scores, _ = evaluate({"truth": truth_row, "frozen": frozen}, speakers, calibration)
    # 32 px: the measured mouth follows the truth with r 0.93 on average over speakers (docs/synthtalk.md)
    assert np.mean([s.sync_r for s in scores["truth"]]) >= 0.85
    for truth, copy in zip(scores["truth"], scores["frozen"], strict=True):
        assert truth.motion > 0.1
        assert copy.sync_r == 0.0 and copy.motion == 0.0 and copy.mouth_std == 0.0
        assert copy.identity <= calibration.percentile("same", 95) and copy.drift_holds
    # The same frames two frames late against the audio: sync at offset 0 drops, the best offset pairs video
    # frame t with audio frame t - 2 (lip_sync's offset k pairs video t with audio t + k).
    late = score(torch.cat([truth_row(speakers[0])[:1]] * 2 + [truth_row(speakers[0])[:-2]]), speakers[0],
                 calibration, with_truth=False)
    assert late.sync_offset == -2 and late.sync_r < scores["truth"][0].sync_r - 0.2


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_agreement():
    spread = bootstrap([0.1, 0.5, 0.9, 0.3])
    assert spread.low < spread.mean < spread.high
    agree = bootstrap([0.5, 0.5, 0.5, 0.5])
    assert agree.low == agree.mean == agree.high == 0.5
    assert np.isnan(bootstrap([]).mean)
    summary = summarise({"row": []})
    assert summary["row"]["sync_r"].text() == "-"


def test_rest_eval_synthtalk_writes_table_plot_and_side_by_side(stored, eval_corpus, tmp_path, capsys):
    out = tmp_path / "synthtalk"
    code = eval_main([
        f"testset={eval_corpus['shards']}", "protocol=synthtalk_v1", f"out={out}", f"vae_ckpt={stored['vae']}",
        f"ckpts={{teacher: '{stored['teacher']}', student: '{stored['student']}'}}", "max_items=2",
        "synthtalk.stream_seconds=3", "synthtalk.teacher_steps=2", "synthtalk.teacher_seconds=1",
    ])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert list(rows) == ["ground truth", "ground truth through the VAE (clips)", "ground truth through the VAE (streamed)",
                          "teacher (clips)", "student (streamed)"]
    assert rows["ground truth"]["sync_r"]["mean"] >= 0.85  # 32 px (see above)
    # Random networks make colour noise: no lip-sync, far from the reference, PSNR only where defined.
    for row in ("ground truth through the VAE (clips)", "ground truth through the VAE (streamed)", "teacher (clips)",
                "student (streamed)"):
        assert rows[row]["sync_r"]["mean"] < 0.5, row
        assert rows[row]["identity"]["mean"] > results["identity_calibration"]["same_p95"], row
    assert np.isfinite(rows["teacher (clips)"]["psnr"]["mean"])
    assert rows["student (streamed)"]["psnr"]["mean"] is None or np.isnan(rows["student (streamed)"]["psnr"]["mean"])
    table = (out / "table.md").read_text()
    assert all(f"| {row} |" in table for row in rows)
    assert (out / "mouth.png").read_bytes()[:4] == b"\x89PNG"
    frames = decode_mp4((out / "side_by_side.mp4").read_bytes())
    size = 32 * 4  # upscaled 4x
    assert frames.shape[1:] == (size, size * len(rows), 3) and frames.shape[0] >= 3 * 25 - 8
    # The teacher's clips cover teacher_seconds=1 (one 17-frame clip): its column is grey after that, the
    # streams go on to the end.
    teacher_column = frames[:, :, 3 * size : 4 * size].astype(int)
    assert np.abs(teacher_column[-1] - 128).max() <= 3 and np.abs(teacher_column[5] - 128).mean() > 3


def _seed_run(folder: Path, speakers: list[str], sync_r: list[float]) -> Path:
    """The two files one synthtalk_v1 run writes that pooling reads, with chosen lip-sync per speaker."""
    folder.mkdir(parents=True)
    scores = [{key: 0.0 for key, _, _ in COLUMNS} | {"sync_r": r} for r in sync_r]
    (folder / "scores.json").write_text(json.dumps({"speakers": speakers, "rows": {"student (streamed)": scores}}))
    (folder / "results.json").write_text(json.dumps({"identity_calibration": {"same_p95": 0.06, "different_p5": 0.4}}))
    return folder


def test_rest_eval_pools_synthtalk_runs_over_seeds(tmp_path, capsys):
    seed0 = _seed_run(tmp_path / "seed0", ["a", "b"], [0.2, 0.4])
    seed1 = _seed_run(tmp_path / "seed1", ["a", "b"], [0.6, 0.8])
    code = eval_main(["mode=table", "protocol=synthtalk_v1", f"results=[{seed0},{seed1}]", f"out={tmp_path / 'pooled'}"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    table = (tmp_path / "pooled" / "table.md").read_text()
    assert table.strip() in printed.out
    assert "| student (streamed) | 0.50 [" in table  # the mean of the four (seed, speaker) pairs
    assert "| row | seed0 | seed1 | mean over seeds | std over seeds |" in table
    assert "| student (streamed) | 0.30 | 0.70 | 0.50 | 0.28 |" in table  # std with ddof 1: 0.4 / sqrt(2)

    other = _seed_run(tmp_path / "other", ["a", "c"], [0.1, 0.2])
    code = eval_main(["mode=table", "protocol=synthtalk_v1", f"results=[{seed0},{other}]", f"out={tmp_path / 'x'}"])
    err = capsys.readouterr().err
    assert code == 2 and "test speakers differ" in err and "Traceback" not in err


def test_rest_eval_synthtalk_needs_a_vae_and_ground_truth(eval_corpus, tmp_path, capsys):
    code = eval_main([f"testset={eval_corpus['shards']}", "protocol=synthtalk_v1", f"out={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "vae_ckpt" in err and "Traceback" not in err
