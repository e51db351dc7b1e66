"""The table ``gpu_check.py`` prints and writes to ``<out>/gpu_check.md``, from its rows' results."""

from __future__ import annotations

TERA = 1e12
MIB = 2**20


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _section(lines: list[str], results: dict, prefix: str, header: str):
    """Start a table (a blank line, ``header`` and its rule) and yield its rows ``(name, row)``: those named
    ``prefix*``; a row that failed gets its line here and is not yielded."""
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    for name, row in results.items():
        if not name.startswith(prefix):
            continue
        if "error" in row:
            lines.append(f"| {name} | FAILED: {row['error']} |")
            continue
        yield name, row


def format_table(results: dict) -> str:
    lines = []
    env = results.get("env", {})
    if "error" not in env and env:
        peak = env.get("datasheet_dense_bf16_flops")
        lines.append(
            f"device {env.get('device_name')} | torch {env.get('torch')} | lightning {env.get('lightning')} | "
            f"dtype {env.get('dtype')} | matmul {env['matmul_flops'] / TERA:.3g} TFLOP/s | "
            f"datasheet dense bf16 {peak / TERA if peak else float('nan'):.0f} TFLOP/s"
        )
    header = ("| stream | dtype | res | first frame | fps | RTF | latency p50 / p95 | chunk time p50 | "
              "DiT share | cache speed-up | peak mem |")
    for name, row in _section(lines, results, "stream:", header):
        lat = row["chunk_latency_s"]
        lines.append(
            f"| {name} ({row['dit']['num_layers']}x{row['dit']['width']}) | {row['dtype']} | "
            f"{row['resolution'][0]} | {_ms(row['first_frame_latency_s'])} | {row['fps']:.1f} | {row['rtf']:.3f} | "
            f"{_ms(lat['p50'])} / {_ms(lat['p95'])} | {_ms(row['chunk_time_s']['p50'])} | "
            f"{row['dit_share_of_latency_p50']:.0%} | {row['cache_speedup']:.2f}x | "
            f"{row['peak_memory_bytes'] / MIB:,.0f} MiB |"
        )
    header = ("| train | params | act. ckpt | batch x tokens | step | tokens/s | model TFLOP/step | TFLOP/s | "
              "MFU (datasheet) | of matmul peak | peak mem |")
    for name, row in _section(lines, results, "train:", header):
        for run in row["runs"]:
            if "error" in run:
                lines.append(
                    f"| {name} | | {run['activation_checkpointing']} | B={run['batch']} | FAILED: "
                    f"{run['error']} |"
                )
                continue
            mfu = f"{run['mfu_datasheet']:.1%}" if run["mfu_datasheet"] else "n/a"
            of_mm = f"{run['mfu_matmul']:.1%}" if run["mfu_matmul"] else "n/a"
            mem = f"{run['peak_memory_bytes'] / MIB:,.0f} MiB" if run["peak_memory_bytes"] else "n/a"
            lines.append(
                f"| {name} | {row['parameters'] / 1e6:,.3g} M | {run['activation_checkpointing']} | "
                f"{run['batch']} x {run['tokens'] // run['batch']} | {_ms(run['step_s'])} | {run['tokens_per_s']:,.0f} | "
                f"{run['model_flops'] / TERA:.3g} | {run['achieved_flops'] / TERA:.3g} | {mfu} | {of_mm} | {mem} |"
            )
    flops_rows = {
        name: row for name, row in results.items() if name.startswith("flops:") and "error" not in row
    }
    if flops_rows:
        peak = env.get("datasheet_dense_bf16_flops") or env.get("matmul_flops")
        lines.append("")
        lines.append(
            "| model FLOPs | teacher step B=1 | DiT per chunk | VAE decode per chunk (first) | frames/chunk | "
            "fps at peak | DiT TFLOP/s in stream |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for name, row in flops_rows.items():
            chunk = row["dit_chunk_flops"] + row["vae_chunk_flops"]
            fps = f"{row['video_frames_per_chunk'] * peak / chunk:,.3g}" if peak else "n/a"
            stream = results.get(name.replace("flops:", "stream:"), {})
            achieved = (
                f"{row['dit_chunk_flops'] / stream['dit_chunk_cached_s'] / TERA:.3g}"
                if "dit_chunk_cached_s" in stream
                else "n/a"
            )
            lines.append(
                f"| {name} | {row['teacher_step_flops_b1'] / TERA:.3g} TFLOP ({row['teacher_tokens_b1']} tokens) | "
                f"{row['dit_chunk_flops'] / TERA:.3g} TFLOP | {row['vae_chunk_flops'] / TERA:.3g} "
                f"({row['vae_first_chunk_flops'] / TERA:.3g}) TFLOP | {row['video_frames_per_chunk']} | {fps} | "
                f"{achieved} |"
            )
    if "pytest" in results:
        row = results["pytest"]
        lines.append("")
        status = row["error"] if "error" in row else f"exit {row['returncode']}: {row['summary']}"
        lines.append(f"pytest -m gpu: {status}")
    return "\n".join(lines)
