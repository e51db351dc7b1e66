"""VideoDataModule: rank-exact evaluation, the step-seeded ``index`` training reader, alignment, latent mode
(the ``stream`` source has its own tests in test_stream*.py)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from rest_lightning.data.codecs import decode_mp4, decode_wav
from rest_lightning.data.datamodule import DataConfig, VideoDataModule
from rest_lightning.data.shard_index import CorpusIndex, ShardEntry


def _dm(root, rank=0, world=1, **kw) -> VideoDataModule:
    cfg = dict(root=str(root), latent_frames=1, batch_size=2, num_workers=0, epoch_steps=3)
    return VideoDataModule(DataConfig(**{**cfg, **kw}), rank=rank, world_size=world)


@pytest.fixture(scope="module")
def damaged(prepared, tmp_path_factory) -> Path:
    """A copy of the prepared shards whose first val shard holds one corrupt video sample."""
    cfg, _ = prepared
    root = tmp_path_factory.mktemp("damaged")
    shutil.copytree(cfg.output, root, dirs_exist_ok=True)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["splits"]["val"]["shards"][0]
    shard = root / entry["path"]
    samples = [CorpusIndex([ShardEntry(shard, entry["count"])]).read(i) for i in range(entry["count"])]
    samples[1]["video.mp4"] = b"\x00" * 100  # a corrupt video member
    shard.unlink()
    with wds.TarWriter(str(shard), encoder=False) as w:
        for sample in samples:
            w.write(sample)
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_read_disjoint_val_samples_and_the_same_number_of_batches(damaged, workers):
    total = CorpusIndex.from_manifest(damaged, "val").total
    batches = {r: list(_dm(damaged, r, 2, num_workers=workers).val_dataloader()) for r in (0, 1)}
    assert len(batches[0]) == len(batches[1]) > 0
    keys = {r: [k for b in batches[r] for k, m in zip(b.keys, b.mask, strict=True) if m] for r in (0, 1)}
    assert not set(keys[0]) & set(keys[1])
    invalid = sum(int((~b.mask).sum()) for r in (0, 1) for b in batches[r])
    # Every sample read once, except the corrupt one, which became a masked padding item; an odd
    # count adds one padding item so both ranks hold ceil(N / 2).
    assert len(keys[0]) + len(keys[1]) == total - 1
    assert invalid == 1 + (2 * ((total + 1) // 2) - total)
    for b in batches[0] + batches[1]:
        assert torch.all(b.video[~b.mask] == 0) and b.video.shape[1:] == (3, 9, 64, 64)


def test_index_training_stream_after_step_s_is_the_same_with_or_without_restart(prepared):
    cfg, _ = prepared
    # The index reader is a pure function of (seed, rank, step): exact even with another worker count.
    uninterrupted = _dm(cfg.output, rank=1, world=2, num_workers=2, source="index")
    loader = uninterrupted.train_dataloader()
    full = [b for _ in range(2) for b in loader]  # two epochs of 3 steps: steps 0..5
    resumed = _dm(cfg.output, rank=1, world=2, num_workers=0, source="index")
    resumed.start_step = 4
    loader = resumed.train_dataloader()
    tail = [b for _ in range(2) for b in loader]  # finishes epoch 1 (steps 4, 5) then epoch 2
    assert len(full) == 6 and len(tail) == 2 + 3
    for a, b in zip(full[4:], tail[:2], strict=True):
        assert a.keys == b.keys and torch.equal(a.start_frame, b.start_frame)
        assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    other_rank = list(_dm(cfg.output, rank=0, world=2, source="index").train_dataloader())
    assert [b.keys for b in other_rank] != [b.keys for b in full[:3]]


def test_training_window_audio_is_sample_aligned_with_its_frames(prepared):
    cfg, _ = prepared
    dm = _dm(cfg.output, latent_frames=1, batch_size=4, epoch_steps=2)
    index = CorpusIndex.from_manifest(cfg.output, "train")
    by_key = {index.read(i)["__key__"]: index.read(i) for i in range(index.total)}
    for batch in dm.train_dataloader():
        assert batch.video.shape == (4, 3, 9, 64, 64) and batch.audio.shape == (4, 9 * 640)
        assert batch.video.min() >= -1 and batch.video.max() <= 1
        for k, key in enumerate(batch.keys):
            sample = by_key[key]
            record = json.loads(sample["json"])
            offset = int(batch.start_frame[k]) - record["start_frame"]
            assert 0 <= offset <= 17 - 9
            wav, _ = decode_wav(sample["audio.wav"])
            np.testing.assert_array_equal(batch.audio[k].numpy(), wav[offset * 640 : (offset + 9) * 640])
            frames = decode_mp4(sample["video.mp4"])[offset : offset + 9]
            expected = torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)
            torch.testing.assert_close(batch.video[k], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("source", ["stream", "index"])
def test_training_skips_corrupt_samples_and_counts_them(damaged, source):
    # Use the damaged val split as a training split: a corrupt sample is skipped, never returned.
    dm = _dm(damaged, batch_size=4, epoch_steps=8, train_split="val", source=source)
    batches = list(dm.train_dataloader())
    assert sum(b.skipped for b in batches) > 0
    assert all(len(b) == 4 and bool(b.mask.all()) for b in batches)


def test_latent_mode_reads_latent_npy_without_decoding_video(prepared, tmp_path):
    cfg, _ = prepared
    root = tmp_path / "latent"
    (root / "train").mkdir(parents=True)
    index = CorpusIndex.from_manifest(cfg.output, "train")
    latents = {}
    with wds.ShardWriter(str(root / "train" / "shard-%06d.tar"), maxcount=100, verbose=0, encoder=False) as w:
        for i in range(index.total):
            s = index.read(i)
            latent = (
                np.random.default_rng(i).standard_normal((4, 3, 2, 2)).astype(np.float32)
            )  # (C, 1+K, h, w)
            buf = io.BytesIO()
            np.save(buf, latent)
            latents[s["__key__"]] = latent
            w.write(
                {
                    "__key__": s["__key__"],
                    "audio.wav": s["audio.wav"],
                    "ref.png": s["ref.png"],
                    "json": s["json"],
                    "latent.npy": buf.getvalue(),
                }
            )  # no video.mp4 at all
    manifest = {"splits": {"train": {"shards": [{"path": "train/shard-000000.tar", "count": index.total}]}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    batch = next(iter(_dm(root, mode="latent", latent_frames=1, batch_size=2).train_dataloader()))
    assert batch.video is None and batch.latent.shape == (2, 4, 2, 2, 2)
    assert batch.audio.shape == (2, 9 * 640)
    for k, key in enumerate(batch.keys):
        torch.testing.assert_close(batch.latent[k], torch.from_numpy(latents[key][:, :2]))


def test_decoded_video_cache_gives_the_same_batches_and_decodes_each_clip_once(prepared, monkeypatch):
    import rest_lightning.data.datasets as datasets

    cfg, _ = prepared
    loader = _dm(cfg.output, epoch_steps=4).train_dataloader()
    plain = [b for _ in range(3) for b in loader]
    decoded: list[int] = []
    real = datasets.decode_mp4
    monkeypatch.setattr(datasets, "decode_mp4", lambda data: decoded.append(len(data)) or real(data))
    loader = _dm(cfg.output, epoch_steps=4, cache_mb=64).train_dataloader()
    cached = [b for _ in range(3) for b in loader]
    assert len(plain) == len(cached) == 12
    for a, b in zip(plain, cached, strict=True):
        assert a.keys == b.keys and torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    distinct = len({k for b in cached for k in b.keys})
    assert len(decoded) == distinct < sum(len(b.keys) for b in cached)  # each clip decoded once
    with pytest.raises(ValueError, match="cache_mb"):
        DataConfig(root="x", cache_mb=-1)
