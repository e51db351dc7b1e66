"""The shard list of a split, read from a rest-prep ``manifest.json``: where each shard is and how many
samples it holds, so no reader has to open a shard to plan its work (start-up does not grow with the corpus).

``data.cfg.root`` holds ``manifest.json``; it is a local folder or an ``http(s)://`` / ``file://`` URL (read
through webdataset's ``gopen``, i.e. ``curl`` for HTTP). Each shard's URL is ``data.cfg.shard_url`` with
``{root}`` and ``{path}`` (the manifest's relative path, e.g. ``train/shard-000000.tar``) filled in; the
default ``{root}/{path}`` is a local path or an HTTP URL beside the manifest, and a ``pipe:`` template reads
shards from anywhere a command can, e.g. ``pipe:aws s3 cp s3://bucket/corpus/{path} -``.

Several training corpora (``data.cfg.sources``) are each such a root with its own template; they must share
the media a batch stacks (:func:`media_spec`).
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


def _shards(manifest: dict[str, Any], root: str, split: str, shard_url: str) -> list[ShardSource]:
    template = shard_url or DEFAULT_SHARD_URL
    entries = split_entries(manifest, split, f"{root}/{MANIFEST_FILE}")
    return [ShardSource(template.format(root=root, path=e["path"]), int(e["count"])) for e in entries]


def split_shards(root: str | Path, split: str, shard_url: str = "") -> list[ShardSource]:
    """The shards of ``split`` in manifest order, each as a URL (see module docstring) and a count."""
    root = str(root).rstrip("/")
    return _shards(read_manifest(root), root, split, shard_url)


def media_spec(manifest: dict[str, Any], mode: str) -> dict[str, Any]:
    """What every clip of a corpus shares and a batch needs equal across corpora: frame rate, sample rate and
    frame side (``media``); in latent mode also the latent's channels and side ``(C, h, w)`` and the number of
    ODE trajectory states (``None``: no ``ode.npy``), as ``collate_clips`` stacks them. The clip length is not
    compared: every corpus is cut to the same ``data.cfg.latent_frames`` window."""
    media = manifest.get("media", {})
    spec = {"fps": media.get("fps"), "sample_rate": media.get("sample_rate"), "size": media.get("size")}
    if mode == "latent":
        latent = manifest.get("latent", {}).get("shape")  # (C, 1 + k, h, w) of one clip
        ode = manifest.get("ode", {}).get("shape")  # (S + 1, C, 1 + k, h, w)
        spec["latent (C, h, w)"] = [latent[0], *latent[2:]] if latent else None
        spec["ode states"] = ode[0] if ode else None
    return spec


def mixture_shards(corpora: list[tuple[str, str]], split: str, mode: str) -> list[list[ShardSource]]:
    """The shards of ``split`` of each corpus ``(root, shard_url)`` of a mixture (``data.cfg.sources``), in
    order; refuses corpora whose :func:`media_spec` differs from the first one's, naming both values."""
    shards, first = [], None
    for root, shard_url in corpora:
        root = root.rstrip("/")
        manifest = read_manifest(root)
        spec = media_spec(manifest, mode)
        if first is None:
            first = (root, spec)
        for key, value in spec.items():
            if value != first[1][key]:
                raise ConfigError(
                    f"data.cfg.sources mixes corpora of different media: {key} is {first[1][key]} in {first[0]} "
                    f"but {value} in {root}; all corpora must share fps, sample rate, clip size and latent mode"
                )
        shards.append(_shards(manifest, root, split, shard_url))
    return shards
