"""What ``rest-eval`` writes from its results: ``table.md`` / ``table.tex`` (``eval/tables.py`` renders them),
``drift.csv`` (+ ``drift.png``), the W&B tables; and ``mode=table``, which merges results files into tables.
Writing only: running and scoring are ``eval/runner.py``; printing is the CLI's (``cli/eval.py``)."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from eval.manifest import ManifestError
from eval.tables import load_spec, render_latex, render_markdown, table_rows

log = logging.getLogger(__name__)

RESULTS_SCHEMA = "rest-eval-results/1"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_drift(results: dict[str, Any], out: Path) -> Path | None:
    """``drift.csv`` (system, chunk, csim, psnr, lpips) and, if matplotlib is installed, ``drift.png``."""
    rows = [{"system": name, **point} for name, curve in results["drift"].items() for point in curve]
    columns = ["system", "chunk", "csim", "psnr", "lpips"]
    tmp = out / f".drift.csv.partial-{os.getpid()}"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "drift.csv")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: drift.csv written, no drift.png")
        return None
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name, curve in results["drift"].items():
        axis.plot([p["chunk"] for p in curve], [p["csim"] for p in curve], label=name)
    axis.set_xlabel("chunk")
    axis.set_ylabel("CSIM to reference" + (" (uncalibrated)" if results["uncalibrated"] else ""))
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "drift.png", dpi=120)
    plt.close(figure)
    return out / "drift.png"


def log_wandb(cfg: DictConfig, results: list[dict[str, Any]], specs, out: Path) -> None:
    import wandb

    name = cfg.wandb.name or f"eval-{results[0]['protocol']['name']}"
    run = wandb.init(
        project=cfg.wandb.project, entity=cfg.wandb.entity, mode=cfg.wandb.mode, dir=str(out), name=name,
        job_type="eval", config={"protocols": [r["protocol"] for r in results]},
    )
    for spec in specs:
        headers, rows = table_rows(results, spec)
        if rows:
            run.log({f"test/{spec.name}": wandb.Table(columns=headers, data=rows)})
    for result in results:
        for row in result["rows"]:
            for metric in row["metrics"].values():
                if metric.get("value") is not None and not metric.get("reported"):
                    run.summary[f"test/{row['dataset']}/{row['system']}/{metric['key']}"] = metric["value"]
    run.finish()


def write_tables(cfg: DictConfig, results: list[dict[str, Any]], out: Path) -> str:
    specs = [load_spec(name) for name in cfg.tables]
    markdown = render_markdown(results, specs)
    atomic_write(out / "table.md", markdown)
    atomic_write(out / "table.tex", render_latex(results, specs))
    if cfg.wandb.enabled:
        log_wandb(cfg, results, specs, out)
    return markdown


def render_tables(cfg: DictConfig) -> Path:
    """``mode=table``: merge ``results=[a.json, b.json]`` into ``<out>/table.md`` and ``table.tex``."""
    if not cfg.results:
        raise ValueError("mode=table needs results=[path/to/results.json,...]")
    results = []
    for path in cfg.results:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ManifestError(f"results file {file} does not exist")
        payload = json.loads(file.read_text())
        if payload.get("schema") != RESULTS_SCHEMA:
            raise ValueError(f"{file} is not a rest-eval results file (schema {RESULTS_SCHEMA})")
        results.append(payload)
    out = Path(cfg.out).expanduser()
    write_tables(cfg, results, out)
    return out / "table.md"
