"""``rest-eval``: generate (or take) each system's test videos, score them, write the tables.

``run_eval(cfg)`` (``mode=run``), with ``cfg`` the composed ``conf/eval.yaml``:

1. the protocol (``eval/protocols/<name>.yaml``) and the test set (a manifest, or one built from a
   rest-prep output or a folder of videos into ``<out>/testset/``);
2. the metric networks (``eval.*``; missing weight files fail here, before any generation);
3. this rank's share of the items: every checkpoint system generates the videos it lacks into
   ``<out>/videos/<system>/<id>.mp4`` (``eval.generation``); folders of videos are used as they are;
4. per-video scores of the ground truth and of every system, cached under ``<out>/scores/``;
5. on rank 0, once every rank's scores exist: set-level metrics with bootstrap intervals, the
   real-video row, the paper's reported numbers, FPS from rest-bench JSONs, and the outputs
   ``results.json``, ``table.md``, ``table.tex``, ``drift.csv`` (+ ``drift.png`` with matplotlib) and a
   W&B table when ``wandb.enabled``.

``eval/report.py: render_tables(cfg)`` (``mode=table``) merges several ``results.json`` (e.g. HDTF and MEAD runs) into
one ``table.md`` / ``table.tex``.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from eval.aggregate import METRICS, REAL_SYSTEM, drift_curve, generated_metrics, real_metrics
from eval.bootstrap import BootstrapConfig, Estimate
from eval.generation import GenerationReport, generate_videos, rank_and_world, shard, video_path
from eval.manifest import (
    MANIFEST_NAME,
    ManifestError,
    TestItem,
    TestSet,
    build_manifest_from_shards,
    build_manifest_from_videos,
    is_prep_output,
    load_clip,
    load_manifest,
    read_video_frames,
)
from eval.networks import MetricSuite, build_suite
from eval.protocol import EvalProtocol, load_protocol
from eval.report import RESULTS_SCHEMA, write_drift, write_tables
from eval.report import atomic_write as _atomic_write
from eval.scoring import (
    ScoringInput,
    VideoRecord,
    cache_stamp,
    load_cached,
    protocol_frames,
    save_record,
    score_video,
    scoring_input,
)
from eval.tables import load_reported

log = logging.getLogger(__name__)

WAIT_POLL_S = 5.0  # how often rank 0 looks for the other ranks' score files
CSIM_TEMPLATE_NOTE = (
    "CSIM landmarks: the ArcFace template positions are placed on the (already aligned) face crops (protocol "
    "csim.landmarks=template, template_fraction); faces that are not centred and upright in their crop are aligned "
    "wrongly. Version-2 protocols align by dlib's 68 landmarks (csim.landmarks=dlib68)."
)
FPS_NOTE = "FPS from rest-bench (chunk-latency percentiles, no per-video samples): no bootstrap interval."


@dataclass(frozen=True)
class System:
    """A row of the table: a checkpoint to generate with, or a folder of generated videos."""

    name: str
    kind: str  # "checkpoint" | "videos"
    source: Path
    videos: Path  # where its <item id>.mp4 files are (generated into, for a checkpoint)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"eval.device={name!r} but CUDA is not available here; use eval.device=cpu")
    return device


# --- inputs ---------------------------------------------------------------------------------------------


def resolve_testset(spec: str, split: str, out: Path, protocol: EvalProtocol) -> TestSet:
    """``testset=``: a manifest file, a rest-prep output folder (split ``testset_split``) or a folder of
    videos; the last two are turned into a manifest under ``<out>/testset/`` first."""
    if not spec:
        raise ValueError("testset=... is required: a manifest .json, a rest-prep output folder or a folder of videos")
    path = Path(spec).expanduser()
    if path.is_file():
        return load_manifest(path)
    if not path.is_dir():
        raise ManifestError(f"testset={spec!r} does not exist")
    target = out / "testset"
    if is_prep_output(path):
        return load_manifest(build_manifest_from_shards(path, split, target))
    return load_manifest(build_manifest_from_videos(path, target / MANIFEST_NAME, fps=protocol.fps, sample_rate=protocol.sample_rate))


def systems_of(cfg: DictConfig, out: Path) -> list[System]:
    systems = []
    for name, path in (cfg.ckpts or {}).items():
        systems.append(System(str(name), "checkpoint", Path(path).expanduser(), out / "videos" / str(name)))
    for name, path in (cfg.videos or {}).items():
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ManifestError(f"videos.{name}={path!r} is not a folder of generated videos (<item id>.mp4)")
        systems.append(System(str(name), "videos", folder, folder))
    names = [s.name for s in systems]
    clashes = sorted({n for n in names if names.count(n) > 1} | ({REAL_SYSTEM} & set(names)))
    if clashes:
        raise ValueError(f"system names must be unique and not {REAL_SYSTEM!r}; clashing: {clashes} (ckpts / videos)")
    unknown = sorted(set(cfg.system_overrides or {}) - {s.name for s in systems if s.kind == "checkpoint"})
    if unknown:
        raise ValueError(f"system_overrides names {unknown} are not checkpoint systems (ckpts={{name:PATH}})")
    return systems


def generate_config(cfg: DictConfig, system: System) -> DictConfig:
    from rest_lightning.config import compose
    from rest_lightning.sizes import with_size_overrides

    overrides = ["ref=unused", "audio=unused", f"ckpt={system.source}"]
    if cfg.vae_ckpt:
        overrides.append(f"vae_ckpt={cfg.vae_ckpt}")
    overrides += [*cfg.generate, *((cfg.system_overrides or {}).get(system.name) or [])]
    return compose("generate", with_size_overrides(overrides))


# --- scoring --------------------------------------------------------------------------------------------


def score_items(
    suite: MetricSuite, protocol: EvalProtocol, testset: TestSet, items: list[TestItem],
    systems: list[System], scores: Path, device: torch.device,
) -> None:
    """Score this rank's items (ground truth and every system), skipping valid cached records."""
    truth_stamp = cache_stamp(protocol, suite, None)
    for item in items:
        data: ScoringInput | None = None
        jobs = [(REAL_SYSTEM, None)] + [(s.name, video_path(s.videos, item)) for s in systems]
        for name, source in jobs:
            if source is not None and not source.is_file():
                raise ManifestError(f"{name}: {source} is missing (each system needs <item id>.mp4 for every test item)")
            stamp = truth_stamp if source is None else cache_stamp(protocol, suite, source)
            target = scores / name / f"{item.id}.pt"
            if load_cached(target, stamp) is not None:
                continue
            if data is None:
                data = scoring_input(item.id, load_clip(testset, item, protocol.fps, protocol.sample_rate), protocol)
            frames = None if source is None else protocol_frames(read_video_frames(source, protocol.fps), protocol)
            save_record(target, score_video(suite, protocol, data, frames, device), stamp)


def collect_records(
    suite: MetricSuite, protocol: EvalProtocol, items: list[TestItem], systems: list[System], scores: Path,
    timeout_s: float,
) -> dict[str, list[VideoRecord]]:
    """Every item's record of every system (waiting up to ``timeout_s`` for other ranks' files)."""
    truth_stamp = cache_stamp(protocol, suite, None)
    deadline = time.monotonic() + timeout_s
    records: dict[str, list[VideoRecord]] = {}
    for name, folder in [(REAL_SYSTEM, None)] + [(s.name, s.videos) for s in systems]:
        records[name] = []
        for item in items:
            target = scores / name / f"{item.id}.pt"
            while True:
                stamp = truth_stamp if folder is None else (
                    cache_stamp(protocol, suite, video_path(folder, item)) if video_path(folder, item).is_file() else None
                )
                record = load_cached(target, stamp) if stamp is not None else None
                if record is not None:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no valid scores for {name}/{item.id} at {target} after {timeout_s:.0f} s: did every rank of "
                        "world_size finish? (rerun with the same out= to resume)"
                    )
                time.sleep(WAIT_POLL_S)
            records[name].append(record)
    return records


# --- results --------------------------------------------------------------------------------------------


def _metric_entry(name: str, estimate: Estimate | None, uncalibrated: bool, **extra: Any) -> dict[str, Any]:
    spec = next(m for m in METRICS if m.name == name)
    entry: dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None, "n": None}
    if estimate is not None:
        entry |= estimate.as_dict()
    return entry | {
        "key": name + ("_uncalibrated" if uncalibrated else ""),
        "uncalibrated": uncalibrated,
        "higher_is_better": spec.higher_is_better,
        "reported": False,
    } | extra


def _read_bench(cfg: DictConfig) -> dict[str, dict]:
    benches = {}
    for name, path in (cfg.bench or {}).items():
        file = Path(path).expanduser()
        if not file.is_file():
            raise ManifestError(f"bench.{name}={path!r} does not exist (a rest-bench JSON report)")
        report = json.loads(file.read_text())
        if "fps" not in report:
            raise ValueError(f"bench.{name}={path}: not a rest-bench report (no 'fps' key)")
        benches[str(name)] = {"path": str(file), "report": report}
    return benches


def build_results(
    cfg: DictConfig, protocol: EvalProtocol, testset: TestSet, items: list[TestItem], suite: MetricSuite,
    systems: list[System], records: dict[str, list[VideoRecord]], generation: dict[str, GenerationReport],
) -> dict[str, Any]:
    boot = BootstrapConfig(**OmegaConf.to_container(cfg.bootstrap))
    uncalibrated = suite.uncalibrated()
    benches = _read_bench(cfg)
    common = {"dataset": protocol.dataset, "protocol": protocol.name, "protocol_hash": protocol.content_hash}
    rows = []

    def row(system: str, kind: str, source: str, estimates: dict[str, Estimate], recs: list[VideoRecord]) -> dict:
        metrics = {}
        for spec in METRICS:
            if spec.name == "fps":
                bench = benches.get(system)
                fps = Estimate(bench["report"]["fps"], None, None, None) if bench else None  # type: ignore[arg-type]
                metrics["fps"] = _metric_entry("fps", fps, False, note=FPS_NOTE, bench=bench["path"] if bench else None)
            else:
                metrics[spec.name] = _metric_entry(spec.name, estimates.get(spec.name), uncalibrated.get(spec.name, False))
        return {
            "system": system, "kind": kind, "source": source, **common, "metrics": metrics,
            "videos": len(recs), "frames": sum(r.frames for r in recs),
            "sync_offsets": {r.item_id: r.sync_offset for r in recs},
        }

    truth = records[REAL_SYSTEM]
    for system in systems:
        estimates = generated_metrics(records[system.name], truth, protocol, boot)
        entry = row(system.name, "generated", str(system.source), estimates, records[system.name])
        entry["generation"] = generation[system.name].as_dict() if system.name in generation else None
        rows.append(entry)
    rows.append(row(REAL_SYSTEM, "real", str(testset.path), real_metrics(truth, protocol, boot), truth))
    for reported in load_reported():
        if reported["dataset"] == protocol.dataset:
            rows.append({
                "system": reported["system"], "kind": "reported", "source": reported["source"], **common,
                "metrics": {reported["metric"]: {
                    "value": reported["value"], "ci_low": None, "ci_high": None, "n": None,
                    "key": reported["metric"], "uncalibrated": False, "reported": True, "source": reported["source"],
                }},
            })
    notes = [FPS_NOTE]
    if protocol.csim.landmarks == "template":
        notes.append(CSIM_TEMPLATE_NOTE)
    for key, expected in protocol.weights.items():
        given = suite.weights.get(key)
        if given and Path(given).name != expected:
            notes.append(f"eval.weights.{key}={given} is not named {expected} as protocol {protocol.name} expects.")
    any_uncalibrated = any(uncalibrated.values())
    if any_uncalibrated:
        notes.insert(0, "UNCALIBRATED: metrics " + ", ".join(k for k, v in uncalibrated.items() if v)
                     + " come from random-weight networks; not comparable to any paper.")
    return {
        "schema": RESULTS_SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": {
            "name": protocol.name, "version": protocol.version, "hash": protocol.content_hash,
            "dataset": protocol.dataset, "source": protocol.source, "values": protocol.as_dict(),
        },
        "testset": {"name": testset.name, "manifest": str(testset.path), "items": len(items)},
        "uncalibrated": any_uncalibrated,
        "uncalibrated_metrics": sorted(k for k, v in uncalibrated.items() if v),
        "networks": suite.fingerprint() | {"expected_weights": protocol.weights},
        "csim_landmarks": protocol.csim.landmarks,
        "bootstrap": OmegaConf.to_container(cfg.bootstrap) | {"unit": "test video", "interval": "percentile"},
        "rows": rows,
        "speed": [{"system": name, "path": b["path"], "bench": b["report"]} for name, b in benches.items()],
        "drift": {name: drift_curve(recs, protocol.drift.frames_per_chunk) for name, recs in records.items()},
        "notes": notes,
    }


# --- entry points ----------------------------------------------------------------------------------------


def run_eval(cfg: DictConfig) -> Path | None:
    """``mode=run`` (module doc). Returns ``results.json`` on rank 0 (beside it ``table.md``, ``table.tex``,
    ``drift.csv``: ``eval/report.py``), None on the other ranks. Prints nothing: the CLI reports."""
    out = Path(cfg.out).expanduser()
    protocol = load_protocol(cfg.protocol)
    rank, world = rank_and_world(cfg.rank, cfg.world_size)
    testset = resolve_testset(cfg.testset, cfg.testset_split, out, protocol)
    items = list(testset.items[: cfg.max_items] if cfg.max_items else testset.items)
    systems = systems_of(cfg, out)
    device = pick_device(cfg.eval.device)
    weights = OmegaConf.to_container(cfg.eval.weights)
    suite = build_suite(cfg.eval.networks, weights, cfg.eval.allow_random_weights, protocol).to(device)
    mine = shard(items, rank, world)
    generation = {}
    for system in systems:
        if system.kind == "checkpoint":
            generation[system.name] = generate_videos(generate_config(cfg, system), testset, mine, system.videos)
            log.info("%s: %s", system.name, generation[system.name].as_dict())
    scores = out / "scores"
    score_items(suite, protocol, testset, mine, systems, scores, device)
    if rank != 0:
        log.info("rank %d of %d: generated and scored %d items; rank 0 writes the tables", rank, world, len(mine))
        return None
    records = collect_records(suite, protocol, items, systems, scores, cfg.wait_timeout_s if world > 1 else 0.0)
    results = build_results(cfg, protocol, testset, items, suite, systems, records, generation)
    _atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")
    write_drift(results, out)
    write_tables(cfg, [results], out)
    return out / "results.json"
