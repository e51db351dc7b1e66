"""Table specs (``eval/tables/*.yaml``) rendered from one or more ``results.json`` to Markdown and LaTeX.

A spec names its metric columns, the datasets always shown (the main table shows HDTF and MEAD even
when only one was evaluated, so the paper's reported numbers always stand there) and the row kinds:
``generated`` (our systems), ``real`` (the real-video row), ``reported`` (the paper's numbers,
``eval/reported.yaml``), ``bench`` (rest-bench JSONs, the speed table). Results of several runs (say,
hdtf_v1 and mead_v1) merge into one table: a system's row collects its cells from every run.

Every number from a random-weight network carries a dagger and its column says "uncalibrated"; a
reported number says "(reported)"; each cell shows the value and its 95 % bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eval.aggregate import METRIC_BY_NAME

TABLE_DIR = Path(__file__).resolve().parent / "tables"
REPORTED_FILE = Path(__file__).resolve().parent / "reported.yaml"
ROW_KINDS = ("generated", "real", "reported", "bench")
MISSING = "–"
UNCALIBRATED_MARK = "†"
SIGNIFICANT = 4  # significant digits printed for our numbers
BYTES_PER_GIB = 2**30

SPEED_COLUMNS = {
    "fps": ("FPS ↑", lambda b: b.get("fps")),
    "first_frame_latency_s": ("first frame (s) ↓", lambda b: b.get("first_frame_latency_s")),
    "rtf": ("RTF ↓", lambda b: b.get("rtf")),
    "chunk_latency_p50_s": ("chunk p50 (s) ↓", lambda b: (b.get("chunk_latency_s") or {}).get("p50")),
    "chunk_latency_p95_s": ("chunk p95 (s) ↓", lambda b: (b.get("chunk_latency_s") or {}).get("p95")),
    "peak_memory_gib": (
        "peak memory (GiB) ↓",
        lambda b: None if b.get("peak_memory_bytes") is None else b["peak_memory_bytes"] / BYTES_PER_GIB,
    ),
    "cache_speedup": ("cache speed-up ↑", lambda b: b.get("cache_speedup")),
    "device": ("device", lambda b: b.get("device")),
    "dtype": ("dtype", lambda b: b.get("dtype")),
    "resolution": ("resolution", lambda b: "x".join(str(v) for v in b["resolution"]) if b.get("resolution") else None),
}


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    columns: tuple[str, ...]
    datasets: tuple[str, ...]
    rows: tuple[str, ...]


def available_tables() -> list[str]:
    return sorted(p.stem for p in TABLE_DIR.glob("*.yaml"))


def load_spec(name: str) -> TableSpec:
    path = TABLE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"table {name!r} is not one of {', '.join(available_tables())}")
    raw = yaml.safe_load(path.read_text())
    spec = TableSpec(raw["name"], raw["title"], tuple(raw["columns"]), tuple(raw.get("datasets") or ()), tuple(raw["rows"]))
    bad_rows = [r for r in spec.rows if r not in ROW_KINDS]
    known = set(SPEED_COLUMNS) if "bench" in spec.rows else set(METRIC_BY_NAME)
    bad_columns = [c for c in spec.columns if c not in known]
    if bad_rows or bad_columns:
        raise ValueError(f"{path}: unknown rows {bad_rows} / columns {bad_columns}")
    return spec


def load_reported() -> list[dict[str, Any]]:
    return list(yaml.safe_load(REPORTED_FILE.read_text()) or [])


def fmt(value: float | None) -> str:
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    return f"{value:.{SIGNIFICANT}g}"


# --- collecting cells ------------------------------------------------------------------------------


@dataclass
class Cell:
    value: float | str | None
    ci_low: float | None = None
    ci_high: float | None = None
    uncalibrated: bool = False
    reported: bool = False


def _metric_cells(results: list[dict], spec: TableSpec) -> tuple[list[str], list[tuple[str, str]], dict]:
    """Datasets shown, ordered (system, kind) rows, and cells[(system, dataset, metric)]."""
    datasets = list(spec.datasets)
    for result in results:
        dataset = result["protocol"]["dataset"]
        if dataset not in datasets:
            datasets.append(dataset)
    rows: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, str], Cell] = {}
    for result in results:
        for row in result["rows"]:
            if row["kind"] not in spec.rows or row["kind"] == "reported":
                continue
            key = (row["system"], row["kind"])
            if key not in rows:
                rows.append(key)
            for name in spec.columns:
                metric = row["metrics"].get(name) or {}
                cells[(row["system"], row["dataset"], name)] = Cell(
                    metric.get("value"), metric.get("ci_low"), metric.get("ci_high"), bool(metric.get("uncalibrated"))
                )
    if "reported" in spec.rows:
        for entry in load_reported():
            if entry["dataset"] in datasets and entry["metric"] in spec.columns:
                key = (entry["system"], "reported")
                if key not in rows:
                    rows.append(key)
                cells[(entry["system"], entry["dataset"], entry["metric"])] = Cell(entry["value"], reported=True)
    order = {kind: i for i, kind in enumerate(spec.rows)}
    rows.sort(key=lambda r: order[r[1]])
    return datasets, rows, cells


def _uncalibrated_columns(results: list[dict], spec: TableSpec) -> set[tuple[str, str]]:
    out = set()
    for result in results:
        for row in result["rows"]:
            for name in spec.columns:
                if (row["metrics"].get(name) or {}).get("uncalibrated"):
                    out.add((row["dataset"], name))
    return out


def _row_label(system: str, kind: str) -> str:
    return {"real": "Real video", "reported": f"{system} (reported)"}.get(kind, system)


# --- rendering -------------------------------------------------------------------------------------


def _md_cell(cell: Cell | None) -> str:
    if cell is None or cell.value is None:
        return MISSING
    if cell.reported:
        return f"{cell.value} (reported)"
    text = fmt(cell.value)
    if cell.ci_low is not None and cell.ci_high is not None:
        text += f" [{fmt(cell.ci_low)}, {fmt(cell.ci_high)}]"
    return text + (f" {UNCALIBRATED_MARK}" if cell.uncalibrated else "")


def _tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text.replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$").replace("–", "--")


def _tex_cell(cell: Cell | None) -> str:
    if cell is None or cell.value is None:
        return "--"
    if cell.reported:
        return rf"\textit{{{cell.value}}}\textsuperscript{{r}}"
    text = fmt(cell.value)
    if cell.ci_low is not None and cell.ci_high is not None:
        text += rf" {{\scriptsize[{fmt(cell.ci_low)}, {fmt(cell.ci_high)}]}}"
    return text + (r"\textsuperscript{\dag}" if cell.uncalibrated else "")


def _header(name: str, uncalibrated: bool) -> str:
    metric = METRIC_BY_NAME[name]
    arrow = "↑" if metric.higher_is_better else "↓"
    return f"{metric.label} {arrow}" + (" (uncalibrated)" if uncalibrated else "")


def _metric_grid(results: list[dict], spec: TableSpec) -> tuple[list[str], list[list[Cell | None | str]]]:
    datasets, rows, cells = _metric_cells(results, spec)
    uncalibrated = _uncalibrated_columns(results, spec)
    headers = ["System"] + [f"{d} {_header(m, (d, m) in uncalibrated)}" for d in datasets for m in spec.columns]
    grid = [[_row_label(s, k)] + [cells.get((s, d, m)) for d in datasets for m in spec.columns] for s, k in rows]
    return headers, grid


def _speed_grid(results: list[dict], spec: TableSpec) -> tuple[list[str], list[list[Cell | None | str]]]:
    headers = ["System"] + [SPEED_COLUMNS[c][0] for c in spec.columns]
    grid, seen = [], set()
    for result in results:
        for entry in result.get("speed", []):
            if entry["system"] in seen:
                continue
            seen.add(entry["system"])
            grid.append([entry["system"]] + [Cell(SPEED_COLUMNS[c][1](entry["bench"])) for c in spec.columns])
    return headers, grid


def grid_for(results: list[dict], spec: TableSpec) -> tuple[list[str], list[list[Cell | None | str]]]:
    return _speed_grid(results, spec) if "bench" in spec.rows else _metric_grid(results, spec)


def _notes(results: list[dict]) -> list[str]:
    notes = []
    protocols = sorted({f"{r['protocol']['name']} (hash {r['protocol']['hash']})" for r in results})
    notes.append("Protocol: " + ", ".join(protocols) + ". Cells: value [95% bootstrap interval over test videos].")
    if any(r["uncalibrated"] for r in results):
        notes.append(
            f"{UNCALIBRATED_MARK} UNCALIBRATED: computed with random-weight metric networks "
            "(eval.allow_random_weights=true); these numbers are not comparable to any paper."
        )
    notes.append("(reported): the paper's own number (eval/reported.yaml), not recomputed here.")
    for result in results:
        notes.extend(result.get("notes", []))
    return list(dict.fromkeys(notes))


def render_markdown(results: list[dict], specs: list[TableSpec]) -> str:
    parts = []
    for spec in specs:
        headers, grid = grid_for(results, spec)
        parts.append(f"## {spec.title}\n")
        if not grid:
            parts.append("_No rows: " + ("give rest-bench JSONs as bench={name:PATH}._\n" if "bench" in spec.rows else "nothing evaluated._\n"))
            continue
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for row in grid:
            lines.append("| " + " | ".join(c if isinstance(c, str) else _md_cell(c) for c in row) + " |")
        parts.append("\n".join(lines) + "\n")
    parts.append("\n".join(f"- {note}" for note in _notes(results)) + "\n")
    return "\n".join(parts)


def render_latex(results: list[dict], specs: list[TableSpec]) -> str:
    parts = ["% Generated by rest-eval. Needs \\usepackage{booktabs}."]
    for spec in specs:
        headers, grid = grid_for(results, spec)
        if not grid:
            continue
        parts += [
            r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex_escape(spec.title)}}}",
            rf"\label{{tab:{spec.name}}}", r"\resizebox{\linewidth}{!}{%",
            r"\begin{tabular}{l" + "c" * (len(headers) - 1) + "}", r"\toprule",
            " & ".join(_tex_escape(h) for h in headers) + r" \\", r"\midrule",
        ]
        for row in grid:
            cells = [_tex_escape(c) if isinstance(c, str) else _tex_cell(c) for c in row]
            parts.append(" & ".join(cells) + r" \\")
        parts += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    parts += ["% " + _tex_escape(note).replace("\n", " ") for note in _notes(results)]
    return "\n".join(parts) + "\n"


def table_rows(results: list[dict], spec: TableSpec) -> tuple[list[str], list[list[Any]]]:
    """Flat rows for a W&B table: every value, its interval and the uncalibrated key as the column."""
    headers, grid = grid_for(results, spec)
    flat_headers = [headers[0]]
    for header in headers[1:]:
        flat_headers += [header, f"{header} ci_low", f"{header} ci_high"]
    flat = []
    for row in grid:
        out: list[Any] = [row[0]]
        for cell in row[1:]:
            cell = cell if isinstance(cell, Cell) else Cell(None)
            value = cell.value if cell.value is None or isinstance(cell.value, (int, float)) else str(cell.value)
            out += [value, cell.ci_low, cell.ci_high]
        flat.append(out)
    return flat_headers, flat
