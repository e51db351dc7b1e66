"""``rest-eval`` end to end on a tiny synthetic test set (issue 9), CPU, tiny stand-in metric networks.

- a checkpoint run writes results.json, table.md, table.tex, drift.csv with every metric column, the
  real-video row, the paper's reported numbers and the protocol name + hash in every row;
- every number from a random-weight network is labelled uncalibrated in every output;
- every bootstrap interval contains its point estimate;
- a rerun keeps and skips the finished videos; a deleted one is regenerated alone;
- two ranks split the generation (disjoint, together complete) and rank 0 writes the tables;
- a folder of already generated videos is scored against a test set built from a folder of videos;
- missing metric weights without eval.allow_random_weights fail before any work with the fix named;
- mode=table merges two runs into one table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eval.aggregate import METRICS, REAL_SYSTEM
from eval.manifest import load_manifest
from rest_lightning.cli import eval as eval_cli
from rest_lightning.data.codecs import decode_mp4, encode_mp4

ALL_METRICS = [m.name for m in METRICS]
DLIB_IDENTITY = {"identity_dist", "identity_match"}  # protocol identity.dlib (v2); smoke_v1 has none: null
UNCALIBRATED_WITH_TINY = {"fid", "fvd", "sync_c", "sync_d", "csim", "lpips"}
PAIRED = {"lpips", "psnr", "ssim"}


def run_cli(*args: str) -> int:
    return eval_cli.main(list(args))


@pytest.fixture(scope="module")
def checkpoint_run(eval_corpus, eval_checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_ckpt_run")
    args = [
        f"testset={eval_corpus['shards']}", f"out={out}", f"ckpts={{student:{eval_checkpoints['student']}}}",
        f"vae_ckpt={eval_checkpoints['vae']}", f"bench={{student:{eval_checkpoints['bench']}}}",
        "protocol=smoke_v1", "eval.networks=tiny", "eval.allow_random_weights=true", "eval.device=cpu",
        "bootstrap.samples=200", "bootstrap.frechet_samples=30", "generate=['resolution=32','stream.window=2']",
    ]
    assert run_cli(*args) == 0
    (out / "args.json").write_text(json.dumps(args))
    return out


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_checkpoint_run_writes_every_file_and_column(checkpoint_run) -> None:
    out = checkpoint_run
    for name in ("results.json", "table.md", "table.tex", "drift.csv"):
        assert (out / name).is_file(), name
    results = _results(out)
    rows = {(r["system"], r["kind"]): r for r in results["rows"]}
    assert set(rows) == {("student", "generated"), (REAL_SYSTEM, "real")}  # synthetic set: no reported row
    for row in rows.values():
        assert row["protocol"] == "smoke_v1" and row["protocol_hash"] == results["protocol"]["hash"]
        assert set(row["metrics"]) == set(ALL_METRICS)
    student, real = rows[("student", "generated")]["metrics"], rows[(REAL_SYSTEM, "real")]["metrics"]
    assert all(student[m]["value"] is not None for m in set(ALL_METRICS) - DLIB_IDENTITY)
    assert all(student[m]["value"] is None for m in DLIB_IDENTITY)
    assert student["fps"]["value"] == 500.0
    assert all(real[m]["value"] is None for m in PAIRED | {"fps"})  # undefined for a video against itself
    assert all(real[m]["value"] is not None for m in set(ALL_METRICS) - PAIRED - {"fps"} - DLIB_IDENTITY)
    assert rows[("student", "generated")]["videos"] == 8
    assert rows[("student", "generated")]["generation"] == {"generated": 8, "skipped": 0}
    table = (out / "table.md").read_text()
    tex = (out / "table.tex").read_text()
    for label in ("FID", "FVD", "Sync-C", "Sync-D", "CSIM", "FPS", "LPIPS", "PSNR", "SSIM", "Real video", "student"):
        assert label in table and label in tex, label
    # The main table always carries HDTF and MEAD with the paper's reported FIDs.
    assert "14.597 (reported)" in table and "46.54 (reported)" in table
    assert "first frame (s)" in table and "cache speed-up" in table  # speed table from the bench JSON
    header = (out / "drift.csv").read_text().splitlines()[0]
    assert header == "system,chunk,csim,psnr,lpips"


def test_random_weight_numbers_are_labelled_uncalibrated_everywhere(checkpoint_run) -> None:
    results = _results(checkpoint_run)
    assert results["uncalibrated"] and set(results["uncalibrated_metrics"]) == UNCALIBRATED_WITH_TINY
    for row in results["rows"]:
        for name, metric in row["metrics"].items():
            expected = name in UNCALIBRATED_WITH_TINY
            assert metric["uncalibrated"] is expected
            assert metric["key"] == name + ("_uncalibrated" if expected else "")
    table = (checkpoint_run / "table.md").read_text()
    for label in ("FID", "FVD", "Sync-C", "Sync-D", "CSIM", "LPIPS"):
        assert f"synthetic {label} {'↑' if label in ('Sync-C', 'CSIM') else '↓'} (uncalibrated)" in table, label
    for label in ("PSNR", "SSIM"):
        assert f"synthetic {label} ↑ |" in table or f"synthetic {label} ↑ " in table
    student_line = next(line for line in table.splitlines() if line.startswith("| student |"))
    assert student_line.count("†") == 5  # FID, FVD, Sync-C, Sync-D, CSIM in the main table
    assert "UNCALIBRATED" in table and "UNCALIBRATED" in (checkpoint_run / "table.tex").read_text()


def test_every_bootstrap_interval_contains_its_point_estimate(checkpoint_run) -> None:
    checked = 0
    for row in _results(checkpoint_run)["rows"]:
        for name, metric in row["metrics"].items():
            if metric["value"] is None or metric["ci_low"] is None:
                continue
            assert metric["ci_low"] <= metric["value"] <= metric["ci_high"], (row["system"], name, metric)
            assert metric["n"] >= 4
            checked += 1
    assert checked == 8 + 5  # student: all but FPS; real row: FID, FVD, Sync-C, Sync-D, CSIM


def test_rerun_skips_finished_videos_and_regenerates_only_a_missing_one(checkpoint_run, tmp_path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(checkpoint_run, out)
    args = [a if not a.startswith("out=") else f"out={out}" for a in json.loads((out / "args.json").read_text())]
    videos = sorted((out / "videos" / "student").glob("*.mp4"))
    assert len(videos) == 8
    stamps = {p.name: p.stat().st_mtime_ns for p in videos}
    assert run_cli(*args) == 0
    row = next(r for r in _results(out)["rows"] if r["system"] == "student")
    assert row["generation"] == {"generated": 0, "skipped": 8}
    assert {p.name: p.stat().st_mtime_ns for p in videos} == stamps
    videos[3].unlink()
    assert run_cli(*args) == 0
    row = next(r for r in _results(out)["rows"] if r["system"] == "student")
    assert row["generation"] == {"generated": 1, "skipped": 7}
    assert videos[3].is_file()
    assert not list((out / "videos" / "student").glob(".*partial*"))  # no temporary file left behind


def test_two_ranks_split_the_generation_and_rank_zero_writes_the_tables(eval_corpus, eval_checkpoints, fast_args, tmp_path) -> None:
    out = tmp_path / "ranks"
    common = [
        f"testset={eval_corpus['shards']}", f"out={out}", f"ckpts={{student:{eval_checkpoints['student']}}}",
        f"vae_ckpt={eval_checkpoints['vae']}", "world_size=2", *fast_args,
    ]
    assert run_cli(*common, "rank=1") == 0
    items = load_manifest(out / "testset" / "testset.json").items
    rank1 = {p.stem for p in (out / "videos" / "student").glob("*.mp4")}
    assert rank1 == {item.id for item in items[1::2]}
    assert not (out / "results.json").exists()  # only rank 0 aggregates
    assert run_cli(*common, "rank=0", "wait_timeout_s=30") == 0
    assert {p.stem for p in (out / "videos" / "student").glob("*.mp4")} == {item.id for item in items}
    row = next(r for r in _results(out)["rows"] if r["system"] == "student")
    assert row["videos"] == len(items) and row["generation"] == {"generated": 4, "skipped": 0}


def test_folder_of_generated_videos_is_scored_against_a_folder_test_set(eval_corpus, fast_args, tmp_path) -> None:
    """A baseline given as videos (named <item id>.mp4): the ground truth with noise added."""
    out = tmp_path / "folder_run"
    assert run_cli(f"testset={eval_corpus['raw']}", f"out={out}", "max_items=8", *fast_args) == 0  # builds the manifest
    testset = load_manifest(out / "testset" / "testset.json")
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    rng = np.random.default_rng(0)
    for item in testset.items[:8]:
        frames = decode_mp4(testset.resolve(item.video).read_bytes())
        noisy = np.clip(frames.astype(np.int16) + rng.integers(-60, 60, frames.shape), 0, 255).astype(np.uint8)
        (baseline / f"{item.id}.mp4").write_bytes(encode_mp4(noisy, 25))
    assert run_cli(f"testset={out / 'testset' / 'testset.json'}", f"out={out}", "max_items=8",
                   f"videos={{noisy:{baseline}}}", *fast_args) == 0
    results = _results(out)
    row = next(r for r in results["rows"] if r["system"] == "noisy")
    assert row["kind"] == "generated" and row["source"] == str(baseline) and row["generation"] is None
    assert row["videos"] == 8 and row["metrics"]["psnr"]["value"] < 40  # noise against the ground truth
    assert row["metrics"]["fid"]["value"] > 0
    assert "noisy" in (out / "table.md").read_text()


def test_missing_weights_fail_before_any_work_and_name_the_fix(eval_corpus, eval_checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "no_weights"
    code = run_cli(
        f"testset={eval_corpus['shards']}", f"out={out}", f"ckpts={{student:{eval_checkpoints['student']}}}",
        "protocol=smoke_v1", "eval.device=cpu",
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "pt_inception-2015-12-05-6726825d.pth" in err
    assert "eval.weights.fid_inception=PATH" in err and "eval.allow_random_weights=true" in err
    assert not (out / "videos").exists() and not (out / "results.json").exists()


def test_tiny_networks_demand_allow_random_weights(eval_corpus, tmp_path, capsys) -> None:
    code = run_cli(f"testset={eval_corpus['shards']}", f"out={tmp_path}", "protocol=smoke_v1", "eval.networks=tiny")
    assert code == 2 and "eval.allow_random_weights=true" in capsys.readouterr().err


def test_table_mode_merges_two_test_sets_into_one_table(checkpoint_run, tmp_path) -> None:
    results = _results(checkpoint_run)
    for dataset in ("HDTF", "MEAD"):
        copy = json.loads(json.dumps(results))
        copy["protocol"]["dataset"] = dataset
        for row in copy["rows"]:
            row["dataset"] = dataset
        (tmp_path / f"{dataset}.json").write_text(json.dumps(copy))
    out = tmp_path / "merged"
    assert run_cli("mode=table", f"results=[{tmp_path / 'HDTF.json'},{tmp_path / 'MEAD.json'}]", f"out={out}") == 0
    table = (out / "table.md").read_text()
    student_line = next(line for line in table.splitlines() if line.startswith("| student |"))
    cells = [c.strip() for c in student_line.strip("|").split("|")]
    assert all(c != "–" for c in cells[1:13])  # HDTF and MEAD groups both filled
    assert "HDTF FID ↓ (uncalibrated)" in table and "MEAD FID ↓ (uncalibrated)" in table
    assert (out / "table.tex").is_file()
