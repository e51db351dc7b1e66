"""The stream source: shard order a pure function of (seed, rank, lane, epoch), shards read front to back,
start-up that opens no shard, config checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import rest_lightning.data.shard_stream as shard_stream
from rest_lightning.config import ConfigError
from rest_lightning.data.datamodule import DataConfig, VideoDataModule
from rest_lightning.data.shard_index import CorpusIndex
from rest_lightning.data.shard_stream import ShardOrder


def _dm(root, rank=0, world=1, **kw) -> VideoDataModule:
    cfg = dict(root=str(root), latent_frames=1, batch_size=2, num_workers=0, epoch_steps=4, shuffle_buffer=4)
    return VideoDataModule(DataConfig(**{**cfg, **kw}), rank=rank, world_size=world)


def _epochs(dm: VideoDataModule, n: int) -> list:
    loader = dm.train_dataloader()
    return [b for _ in range(n) for b in loader]


def test_shard_order_is_a_pure_function_and_each_pass_a_permutation():
    order = ShardOrder(5, seed=3, rank=1, lane=0, epoch=2)
    first = [order[j] for j in range(15)]
    assert [ShardOrder(5, 3, 1, 0, 2)[j] for j in reversed(range(15))] == first[::-1]  # any access order
    assert all(sorted(first[c * 5 : c * 5 + 5]) == list(range(5)) for c in range(3))
    others = {tuple(ShardOrder(5, *key)[j] for j in range(15)) for key in [(4, 1, 0, 2), (3, 0, 0, 2),
                                                                          (3, 1, 1, 2), (3, 1, 0, 3)]}
    assert tuple(first) not in others and len(others) == 4


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_is_reproducible_and_yields_steps_in_order(prepared, workers):
    cfg, _ = prepared
    a = _epochs(_dm(cfg.output, rank=1, world=2, num_workers=workers), 2)
    b = _epochs(_dm(cfg.output, rank=1, world=2, num_workers=workers), 2)
    assert [x.position.step for x in a] == list(range(8))
    assert [x.position.lane for x in a] == [t % max(1, workers) for t in range(4)] * 2
    for x, y in zip(a, b, strict=True):
        assert x.keys == y.keys and torch.equal(x.video, y.video) and torch.equal(x.start_frame, y.start_frame)
    other_rank = _epochs(_dm(cfg.output, rank=0, world=2, num_workers=workers), 1)
    assert [x.keys for x in other_rank] != [x.keys for x in a[:4]]
    assert [x.keys for x in a[:4]] != [x.keys for x in a[4:]]  # a new epoch, a new shard order


def test_a_lane_reads_its_shards_front_to_back_in_shard_order(prepared):
    cfg, _ = prepared
    manifest = json.loads((Path(cfg.output) / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    total = sum(s["count"] for s in shards)
    batches = _epochs(_dm(cfg.output, batch_size=1, shuffle_buffer=1, epoch_steps=total, seed=7), 1)
    order = ShardOrder(len(shards), 7, 0, 0, 0)
    expected = []
    for j in range(len(shards)):
        index = CorpusIndex.from_manifest(cfg.output, "train")
        first = sum(s["count"] for s in shards[: order[j]])
        expected += [index.read(first + i)["__key__"] for i in range(shards[order[j]]["count"])]
    assert [b.keys[0] for b in batches] == expected


def test_the_shuffle_buffer_permutes_within_a_shard_only(prepared):
    cfg, _ = prepared
    manifest = json.loads((Path(cfg.output) / "manifest.json").read_text())
    total = sum(s["count"] for s in manifest["splits"]["train"]["shards"])
    plain = _epochs(_dm(cfg.output, batch_size=1, shuffle_buffer=1, epoch_steps=total), 1)
    mixed = _epochs(_dm(cfg.output, batch_size=1, shuffle_buffer=3, epoch_steps=total), 1)
    plain_keys, mixed_keys = [b.keys[0] for b in plain], [b.keys[0] for b in mixed]
    assert plain_keys != mixed_keys
    # Same shards in the same order, each shard's samples permuted among themselves.
    def by_shard(batches: list) -> list[list[str]]:
        return [sorted(b.keys[0] for b in batches if b.position.shard == j) for j in range(len(batches))]

    assert by_shard(plain) == by_shard(mixed)


def test_start_up_reads_the_manifest_only_and_the_first_batch_opens_one_shard(prepared, tmp_path, monkeypatch):
    cfg, _ = prepared
    root = tmp_path / "manifest_only"
    root.mkdir()
    shutil.copy(Path(cfg.output) / "manifest.json", root)
    loader = _dm(root).train_dataloader()  # no shard exists: nothing is opened before the first batch
    assert len(loader) == 4
    opened: list[str] = []
    real = shard_stream.read_shard
    monkeypatch.setattr(shard_stream, "read_shard", lambda url: opened.append(url) or real(url))
    batch = next(iter(_dm(cfg.output, batch_size=2, shuffle_buffer=1).train_dataloader()))
    assert len(batch) == 2 and len(opened) == 1  # shards hold 3 clips: one shard gives the first batch


def test_positions_after_n_batches_restart_the_stream_where_it_stood(prepared):
    cfg, _ = prepared
    full = _epochs(_dm(cfg.output, epoch_steps=6), 1)
    first = _dm(cfg.output, epoch_steps=6)
    loader = first.train_dataloader()
    seen = [b for _, b in zip(range(4), loader, strict=False)]  # and the loader ran ahead of "done"
    first.start_step = 3
    state = loader.state_dict()
    assert [x.keys for x in seen] == [x.keys for x in full[:4]]
    resumed = _dm(cfg.output, epoch_steps=6)
    resumed.start_step = 3
    again = resumed.train_dataloader()
    again.load_state_dict(state)
    tail = list(again)
    assert [x.keys for x in tail] == [x.keys for x in full[3:]]
    assert all(torch.equal(x.video, y.video) for x, y in zip(tail, full[3:], strict=True))


def test_config_refuses_a_bad_source_template_or_url_index():
    with pytest.raises(ValueError, match="data.source"):
        DataConfig(root="x", source="random")
    with pytest.raises(ValueError, match=r"\{path\}"):
        DataConfig(root="x", shard_url="pipe:cat /data/shard.tar")
    with pytest.raises(ValueError, match=r"only use \{root\} and \{path\}"):
        DataConfig(root="x", shard_url="pipe:cat {bucket}/{path}")
    with pytest.raises(ValueError, match="shuffle_buffer"):
        DataConfig(root="x", shuffle_buffer=0)
    with pytest.raises(ConfigError, match="reads local shards"):
        _dm("http://127.0.0.1:9/corpus", source="index").train_dataloader()
    with pytest.raises(ConfigError, match="manifest"):
        _dm("/nonexistent/corpus").train_dataloader()


def test_a_checkpoint_of_either_source_loads_into_the_other(prepared):
    cfg, _ = prepared
    keys = lambda loader: [b.keys for b in loader]  # noqa: E731
    stream_loader = _dm(cfg.output).train_dataloader()
    next(iter(stream_loader))
    index_loader = _dm(cfg.output, source="index").train_dataloader()
    index_loader.load_state_dict(stream_loader.state_dict())  # ignored: the index reader needs none
    assert keys(index_loader) == keys(_dm(cfg.output, source="index").train_dataloader())
    fresh = _dm(cfg.output).train_dataloader()
    fresh.load_state_dict(index_loader.state_dict())  # no positions: the epoch's shard order from its start
    assert keys(fresh) == keys(_dm(cfg.output).train_dataloader())
