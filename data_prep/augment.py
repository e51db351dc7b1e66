"""Copy a rest-prep output, adding one ``.npy`` member computed from each sample (``rest-prep mode=encode``
adds VAE latents, ``mode=ode`` teacher trajectories).

Samples are copied as they are plus the new member. Shards are written as ``.partial`` and renamed when
closed, and the manifest (the list readers trust) is written last, so an interrupted run leaves no
output a reader would accept; run it again from scratch.
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

from rest_lightning.data.shard_index import CorpusIndex

# samples (dicts of a shard's members) -> one array per sample, in order
Compute = Callable[[list[dict]], list[np.ndarray]]


def check_roots(input_root: Path, output_root: Path) -> dict[str, Any]:
    """Refuse writing over the input; return the input's manifest."""
    if input_root.resolve() == output_root.resolve():
        raise ValueError("output must differ from input: the input shards are read while the output is written")
    return json.loads((input_root / "manifest.json").read_text())


def augment_shards(
    input_root: Path, output_root: Path, manifest: dict[str, Any], key: str, compute: Compute, batch_size: int,
    progress: bool, desc: str,
) -> tuple[dict[str, int], tuple[int, ...], dict[str, Any]]:
    """Write every split of ``input_root`` to ``output_root`` with ``key`` (e.g. ``latent.npy``) added to
    each sample from ``compute`` over batches of ``batch_size`` samples.

    Returns ``(clips per split, shape of the last array written, the new manifest)``; the caller adds its
    own manifest entry and writes it with :func:`write_manifest`.
    """
    import webdataset as wds

    output_root.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(json.dumps(manifest))  # a copy: the caller's stays the input's
    counts: dict[str, int] = {}
    shape: tuple[int, ...] = ()
    total = sum(split["clips"] for split in manifest["splits"].values())
    bar = tqdm(total=total, unit="clip", desc=desc, disable=not progress, dynamic_ncols=True)
    for split, info in manifest["splits"].items():
        corpus = CorpusIndex.from_manifest(input_root, split)
        new_shards = []
        first = 0  # corpus index of the shard's first sample (manifest order)
        for entry in info["shards"]:
            out_path = output_root / Path(entry["path"])
            out_path.parent.mkdir(parents=True, exist_ok=True)
            partial = out_path.with_name(out_path.name + ".partial")
            samples = [corpus.read(first + i) for i in range(entry["count"])]
            first += entry["count"]
            with wds.TarWriter(str(partial)) as writer:
                for lo in range(0, len(samples), batch_size):
                    batch = samples[lo: lo + batch_size]
                    for sample, array in zip(batch, compute(batch), strict=True):
                        shape = tuple(array.shape)
                        buf = io.BytesIO()
                        np.save(buf, array, allow_pickle=False)
                        writer.write({**sample, key: buf.getvalue()})
                    bar.update(len(batch))
            os.replace(partial, out_path)
            new_shards.append({**entry, "bytes": out_path.stat().st_size})
        counts[split] = sum(e["count"] for e in info["shards"])
        manifest["splits"][split] = {**info, "shards": new_shards}
    bar.close()
    return counts, shape, manifest


def write_manifest(output_root: Path, manifest: dict[str, Any]) -> None:
    """Atomically, last: only now does the output look complete to a reader."""
    tmp = output_root / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, output_root / "manifest.json")
