"""Copy a rest-prep output, adding one ``.npy`` member computed from each sample (``rest-prep mode=encode``
adds VAE latents, ``mode=ode`` teacher trajectories).

Samples are copied as they are plus the new member. Shards are written as ``.partial`` and renamed when
closed, and the manifest (the list readers trust) is written last, so an interrupted run leaves no
output a reader would accept. One process writes every shard; ``cluster.array=N`` spreads them over N
array tasks (contiguous slices of the shard list, :func:`augment_shards` ``task=``) that keep the shards
they find finished, and a merge step (:func:`finish_manifest`) writes the manifest once all exist.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rest_lightning.data.shard_index import CorpusIndex, ShardEntry

# samples (dicts of a shard's members) -> one array per sample, in order
Compute = Callable[[list[dict]], list[np.ndarray]]
CLAIM_FILE = "augment.json"


def check_roots(input_root: Path, output_root: Path) -> dict[str, Any]:
    """Refuse writing over the input; return the input's manifest."""
    if input_root.resolve() == output_root.resolve():
        raise ValueError("output must differ from input: the input shards are read while the output is written")
    return json.loads((input_root / "manifest.json").read_text())


def shard_entries(manifest: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """``(split, index of the shard's first sample in its split, manifest entry)`` of every shard, in
    manifest order: the list array tasks slice (``data_prep.array.slice_bounds``)."""
    entries = []
    for split, info in manifest["splits"].items():
        first = 0
        for entry in info["shards"]:
            entries.append((split, first, entry))
            first += entry["count"]
    return entries


def claim_output(output_root: Path, input_root: Path, key: str, settings: dict[str, Any], fresh: bool) -> None:
    """Record what ``output_root`` is written from (``augment.json``). ``fresh`` (one process rewrites every
    shard): replace the record. Else (array tasks keep the shards they find finished, the merge describes
    them) refuse an output recorded with another input or other settings."""
    output_root.mkdir(parents=True, exist_ok=True)
    claim = {"input": str(input_root.resolve()), "key": key, "settings": settings}
    path = output_root / CLAIM_FILE
    if path.exists() and not fresh:
        earlier = json.loads(path.read_text())
        if earlier != claim:
            changed = sorted(k for k in {**earlier["settings"], **settings}
                             if earlier["settings"].get(k) != settings.get(k))
            raise ValueError(
                f"{output_root} holds shards written from {earlier['input']} with other settings "
                f"({', '.join(changed) or 'input'} differ): use an empty output"
            )
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(claim, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def augment_shards(
    input_root: Path, output_root: Path, manifest: dict[str, Any], key: str, compute: Compute, batch_size: int,
    progress: bool, desc: str, task: tuple[int, int] | None = None,
) -> int:
    """Write the shards of ``input_root`` to ``output_root`` with ``key`` (e.g. ``latent.npy``) added to
    each sample from ``compute`` over batches of ``batch_size`` samples of one shard.

    ``task=(i, n)``: only array task ``i`` of ``n``'s contiguous slice of :func:`shard_entries`, keeping
    the output shards that exist already (each is renamed into place only when complete), so a killed
    task started again redoes only what it had not finished. Returns the samples written; the manifest is
    :func:`finish_manifest`'s job, once every shard exists.
    """
    import webdataset as wds

    from data_prep.array import slice_bounds

    output_root.mkdir(parents=True, exist_ok=True)
    entries = shard_entries(manifest)
    lo, hi = slice_bounds(len(entries), *task) if task else (0, len(entries))
    todo = entries[lo:hi]
    bar = tqdm(total=sum(e["count"] for _, _, e in todo), unit="clip", desc=desc, disable=not progress,
               dynamic_ncols=True)
    corpora: dict[str, CorpusIndex] = {}
    written = 0
    for split, first, entry in todo:
        out_path = output_root / Path(entry["path"])
        if task is not None and out_path.exists():
            bar.update(entry["count"])
            continue
        if split not in corpora:
            corpora[split] = CorpusIndex.from_manifest(input_root, split)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        partial = out_path.with_name(out_path.name + ".partial")
        samples = [corpora[split].read(first + i) for i in range(entry["count"])]
        with wds.TarWriter(str(partial)) as writer:
            for b in range(0, len(samples), batch_size):
                batch = samples[b: b + batch_size]
                for sample, array in zip(batch, compute(batch), strict=True):
                    buf = io.BytesIO()
                    np.save(buf, array, allow_pickle=False)
                    writer.write({**sample, key: buf.getvalue()})
                bar.update(len(batch))
        os.replace(partial, out_path)
        written += len(samples)
    bar.close()
    return written


def finish_manifest(
    output_root: Path, manifest: dict[str, Any], key: str
) -> tuple[dict[str, int], tuple[int, ...], dict[str, Any]]:
    """The output's manifest once every shard of ``manifest`` exists in ``output_root``: ``(clips per
    split, the shape of ``key``'s arrays, the new manifest)``; the caller adds its own entry and writes it
    with :func:`write_manifest`.

    Raises:
        ValueError: shards missing (array tasks not finished; the message counts them).
    """
    manifest = json.loads(json.dumps(manifest))  # a copy: the caller's stays the input's
    entries = shard_entries(manifest)
    missing = [e["path"] for _, _, e in entries if not (output_root / e["path"]).exists()]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(entries)} output shards are missing (first: {missing[0]}): array tasks have "
            "not finished; rerun the same command (finished shards are kept)"
        )
    for info in manifest["splits"].values():
        info["shards"] = [{**e, "bytes": (output_root / e["path"]).stat().st_size} for e in info["shards"]]
    counts = {split: sum(e["count"] for e in info["shards"]) for split, info in manifest["splits"].items()}
    shape: tuple[int, ...] = ()
    if entries:
        entry = entries[0][2]
        first = CorpusIndex([ShardEntry(output_root / entry["path"], int(entry["count"]))]).read(0)
        shape = tuple(np.load(io.BytesIO(first[key]), allow_pickle=False).shape)
    return counts, shape, manifest


def write_manifest(output_root: Path, manifest: dict[str, Any]) -> None:
    """Atomically, last: only now does the output look complete to a reader."""
    tmp = output_root / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, output_root / "manifest.json")
