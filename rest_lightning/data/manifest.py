"""The shard list of a split, read from a rest-prep ``manifest.json``: where each shard is and how many
samples it holds, so no reader has to open a shard to plan its work (start-up does not grow with the corpus).

``data.cfg.root`` holds ``manifest.json``; it is a local folder or an ``http(s)://`` / ``file://`` URL (read
through webdataset's ``gopen``, i.e. ``curl`` for HTTP). Each shard's URL is ``data.cfg.shard_url`` with
``{root}`` and ``{path}`` (the manifest's relative path, e.g. ``train/shard-000000.tar``) filled in; the
default ``{root}/{path}`` is a local path or an HTTP URL beside the manifest, and a ``pipe:`` template reads
shards from anywhere a command can, e.g. ``pipe:aws s3 cp s3://bucket/corpus/{path} -``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rest_lightning.config import ConfigError

MANIFEST_FILE = "manifest.json"  # what data_prep.run writes
DEFAULT_SHARD_URL = "{root}/{path}"


@dataclass(frozen=True)
class ShardSource:
    """One shard as the manifest lists it: the URL webdataset opens and its sample count."""

    url: str
    count: int


def is_url(location: str) -> bool:
    """True for anything webdataset opens through a scheme (``http://``, ``pipe:``...), not a local path."""
    return "://" in location or location.startswith("pipe:")


def read_manifest(root: str | Path) -> dict[str, Any]:
    """``<root>/manifest.json`` as a dict; a missing or unreadable manifest is a config error."""
    root = str(root).rstrip("/")
    location = f"{root}/{MANIFEST_FILE}"
    if is_url(root):
        import webdataset as wds  # only remote roots need it; keeps the index reader's import light

        try:
            with wds.gopen(location) as stream:
                text = stream.read()
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"cannot read {location} ({err}): data.cfg.root must hold a rest-prep manifest"
            ) from None
    else:
        if not Path(location).is_file():
            raise ConfigError(f"{location} not found: data.cfg.root must be a rest-prep output folder")
        text = Path(location).read_bytes()
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"{location} is not valid JSON ({err}); rerun rest-prep or fix data.cfg.root") from None
    if not isinstance(manifest, dict) or "splits" not in manifest:
        raise ConfigError(f"{location} has no 'splits': it was not written by rest-prep")
    return manifest


def split_entries(manifest: dict[str, Any], split: str, where: str) -> list[dict[str, Any]]:
    """The manifest's shard records (``path``, ``count``) of ``split``; ``where`` names the manifest."""
    if split not in manifest["splits"]:
        raise ConfigError(f"split {split!r} not in {where} (has {sorted(manifest['splits'])}); "
                          "fix data.cfg.train_split / val_split / test_split")
    return manifest["splits"][split]["shards"]


def split_shards(root: str | Path, split: str, shard_url: str = "") -> list[ShardSource]:
    """The shards of ``split`` in manifest order, each as a URL (see module docstring) and a count."""
    template = shard_url or DEFAULT_SHARD_URL
    root = str(root).rstrip("/")
    entries = split_entries(read_manifest(root), split, f"{root}/{MANIFEST_FILE}")
    return [ShardSource(template.format(root=root, path=e["path"]), int(e["count"])) for e in entries]
