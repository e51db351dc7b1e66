"""Units of the eval suite: protocols (strict parsing, content hash), manifests, bootstrap intervals,
template landmarks, rank sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.bootstrap import BootstrapConfig, frechet_estimate, weighted_mean_estimate
from eval.generation import rank_and_world, shard
from eval.manifest import ManifestError, TestItem, load_manifest, write_manifest
from eval.protocol import PROTOCOL_DIR, ProtocolError, available_protocols, load_protocol
from eval.scoring import template_landmarks
from rest_lightning.metrics.face_align import ARCFACE_TEMPLATE_112
from rest_lightning.metrics.frechet import FeatureStats, frechet_distance_from_stats


@pytest.mark.parametrize("name", ["hdtf_v1", "mead_v1", "smoke_v1"])
def test_shipped_protocols_parse_and_name_their_file(name) -> None:
    protocol = load_protocol(name)
    assert protocol.name == name and len(protocol.content_hash) == 16
    assert protocol.min_frames == protocol.fvd.clip_start + protocol.fvd.clip_frames


def test_protocol_hash_ignores_comments_and_changes_with_any_value(tmp_path) -> None:
    text = (PROTOCOL_DIR / "hdtf_v1.yaml").read_text()
    (tmp_path / "commented.yaml").write_text("# another comment\n" + text)
    (tmp_path / "changed.yaml").write_text(text.replace("vshift: 15", "vshift: 10"))
    base = load_protocol("hdtf_v1").content_hash
    assert load_protocol(str(tmp_path / "commented.yaml")).content_hash == base
    assert load_protocol(str(tmp_path / "changed.yaml")).content_hash != base
    assert len({load_protocol(n).content_hash for n in available_protocols()}) == len(available_protocols())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("vshift: 15", "vshfit: 15"), "unknown keys sync"),
        (("mode: as_is", "mode: tight"), "crop.mode"),
        (("ddof: 0", "ddof: 2"), "ddof"),
    ],
)
def test_protocol_refuses_unknown_keys_and_bad_values(tmp_path, edit, message) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text((PROTOCOL_DIR / "hdtf_v1.yaml").read_text().replace(*edit))
    with pytest.raises(ProtocolError, match=message):
        load_protocol(str(path))
    with pytest.raises(ProtocolError, match="neither a shipped protocol"):
        load_protocol("hdtf_v9")


def test_manifest_round_trip_and_refusals(tmp_path) -> None:
    items = [TestItem(id=f"clip{i}", video=f"clips/clip{i}.mp4", speaker="s") for i in range(3)]
    path = write_manifest(tmp_path / "testset.json", "t", 25, 16000, items)
    testset = load_manifest(path)
    assert testset.items == tuple(items) and testset.resolve("clips/clip0.mp4") == tmp_path / "clips/clip0.mp4"
    with pytest.raises(ManifestError, match="unique"):
        write_manifest(tmp_path / "dup.json", "t", 25, 16000, items + items[:1])
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ManifestError, match="build_manifest"):
        load_manifest(tmp_path / "other.json")


def test_mean_interval_contains_the_estimate_and_is_reproducible() -> None:
    rng_values = np.random.default_rng(1)
    values = rng_values.normal(3.0, 1.0, 12)
    config = BootstrapConfig(samples=500, seed=3)
    first = weighted_mean_estimate(values, np.ones(12), config, np.random.default_rng(config.seed))
    again = weighted_mean_estimate(values, np.ones(12), config, np.random.default_rng(config.seed))
    assert first == again
    assert first.value == pytest.approx(values.mean())
    assert first.ci_low < first.value < first.ci_high
    constant = weighted_mean_estimate(np.full(5, 0.3), np.ones(5), config, np.random.default_rng(0))
    assert constant.ci_low <= constant.value <= constant.ci_high  # degenerate: rounding must not exclude it


def test_frame_weighted_mean_equals_the_pooled_frame_mean() -> None:
    per_video = [np.array([1.0, 2.0, 3.0]), np.array([10.0])]
    sums = np.array([v.sum() for v in per_video])
    counts = np.array([len(v) for v in per_video], dtype=float)
    estimate = weighted_mean_estimate(sums, counts, BootstrapConfig(samples=50), np.random.default_rng(0))
    assert estimate.value == pytest.approx(np.concatenate(per_video).mean())


def test_frechet_point_estimate_is_the_pooled_distance_and_inside_its_interval() -> None:
    gen = torch.Generator().manual_seed(0)
    real = [torch.randn(5, 4, generator=gen) for _ in range(8)]
    fake = [torch.randn(5, 4, generator=gen) * 1.5 + 0.5 for _ in range(8)]
    config = BootstrapConfig(frechet_samples=100)
    estimate = frechet_estimate(fake, real, 1, True, config, np.random.default_rng(0))
    pooled = frechet_distance_from_stats(FeatureStats.from_features(torch.cat(fake)), FeatureStats.from_features(torch.cat(real)), 1)
    assert estimate.value == pytest.approx(pooled, rel=1e-12)
    assert estimate.ci_low <= estimate.value <= estimate.ci_high and estimate.ci_low < estimate.ci_high


def test_template_landmarks_are_the_arcface_template_for_a_tight_112_crop() -> None:
    torch.testing.assert_close(template_landmarks(112, 1.0), torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64))
    scaled = template_landmarks(224, 0.5)  # the template shrunk into the central half of a 224 crop
    torch.testing.assert_close(scaled, torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64) + 56)


def test_rank_shards_are_disjoint_and_complete(monkeypatch) -> None:
    items = [TestItem(id=str(i), video="v.mp4") for i in range(7)]
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(i.id for p in parts for i in p) == sorted(i.id for i in items)
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world(None, None) == (2, 4)
    assert rank_and_world(1, 2) == (1, 2)
    with pytest.raises(ValueError, match="rank"):
        rank_and_world(3, 2)
