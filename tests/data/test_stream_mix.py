"""Several training corpora (``data.cfg.sources``): the stream mixes them per sample by weight, the choice a pure
function of (seed, rank, lane, epoch, draw), each corpus' position saved and restored (exact resume), corpora of
different media refused, validation on ``data.cfg.root`` (else the first source)."""

from __future__ import annotations

import io
import json
import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rest_lightning.cli import train as train_cli
from rest_lightning.config import ConfigError
from rest_lightning.data.datamodule import DataConfig, VideoDataModule
from rest_lightning.data.shard_stream import CorpusMix
from tests.data.test_stream_resume import kill9_and_resume

B_PREFIX = "b-"  # every key of the second corpus starts with it, so a clip's corpus shows in its key
SIGMAS = 4  # tolerance of a realised mixture: 4 binomial standard deviations of the fraction


@pytest.fixture(scope="session")
def two_corpora(prepared, tmp_path_factory) -> tuple[str, str]:
    """(root A, root B): the prepared corpus, and a second corpus made of A's first two training shards with every
    member renamed ``b-<name>`` (2 shards of 3 clips where A has 3 shards of 3, 3 and 2)."""
    cfg, _ = prepared
    a, b = Path(cfg.output), tmp_path_factory.mktemp("corpus_b")
    manifest = json.loads((a / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"][:2]
    for entry in shards:
        (b / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(a / entry["path"]) as src, tarfile.open(b / entry["path"], "w") as dst:
            for member in src.getmembers():
                data = src.extractfile(member).read()
                info = tarfile.TarInfo(B_PREFIX + member.name)
                info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
    manifest["splits"] = {"train": {**manifest["splits"]["train"], "shards": shards}}
    (b / "manifest.json").write_text(json.dumps(manifest))
    return str(a), str(b)


def _dm(sources, root="", rank=0, world=1, **kw) -> VideoDataModule:
    cfg = dict(root=root, sources=sources, latent_frames=1, batch_size=2, num_workers=0, epoch_steps=4,
               shuffle_buffer=4)
    return VideoDataModule(DataConfig(**{**cfg, **kw}), rank=rank, world_size=world)


def _check_corpus_tags(batches: list) -> list[int]:
    """Each clip's ``corpus`` tag, after checking that it names the corpus the clip's key comes from."""
    tags = [int(c) for b in batches for c in b.corpus]
    keys = [k for b in batches for k in b.keys]
    assert [k.startswith(B_PREFIX) for k in keys] == [t == 1 for t in tags]
    return tags


def test_corpus_mix_is_a_pure_function_with_the_weights_frequencies():
    weights, n = [5.0, 3.0, 2.0], 20_000
    mix = CorpusMix(weights, seed=3, rank=1, lane=0, epoch=2)
    draws = [mix[k] for k in range(n)]
    again = CorpusMix(weights, 3, 1, 0, 2)
    assert [again[k] for k in reversed(range(n))] == draws[::-1]  # any access order: a pure function of k
    for c, w in enumerate(weights):
        p = w / sum(weights)
        assert abs(draws.count(c) / n - p) <= SIGMAS * math.sqrt(p * (1 - p) / n), (c, draws.count(c) / n, p)
    for key in [(4, 1, 0, 2), (3, 0, 0, 2), (3, 1, 1, 2), (3, 1, 0, 3)]:  # seed, rank, lane, epoch
        other = CorpusMix(weights, *key)
        assert [other[k] for k in range(100)] != draws[:100]
    assert {CorpusMix([2.0], 3, 1, 0, 2)[k] for k in range(100)} == {0}


def test_realised_mixture_matches_the_weights_over_n_batches(two_corpora):
    """N batches of B clips, weights 3:1: the fraction of corpus-B clips is within 4 binomial sigmas of 1/4."""
    a, b = two_corpora
    n_batches, batch = 100, 4
    weights = [3.0, 1.0]
    dm = _dm([{"root": a, "weight": weights[0]}, {"root": b, "weight": weights[1]}], batch_size=batch,
             epoch_steps=n_batches, cache_mb=8)  # 14 clips in all: each decoded once, the rest from the cache
    tags = _check_corpus_tags(list(dm.train_dataloader()))
    n = n_batches * batch
    p = weights[1] / sum(weights)
    realised = tags.count(1) / n
    tolerance = SIGMAS * math.sqrt(p * (1 - p) / n)  # 4 x 0.0217 = 0.087 for n = 400
    assert len(tags) == n and abs(realised - p) <= tolerance, (realised, p, tolerance)


def test_one_source_streams_exactly_as_the_single_root(two_corpora):
    a, _ = two_corpora
    single = list(_dm([], root=a).train_dataloader())
    mixed = list(_dm([{"root": a, "weight": 2.0}]).train_dataloader())
    assert [x.keys for x in mixed] == [x.keys for x in single]
    assert all(torch.equal(x.video, y.video) for x, y in zip(mixed, single, strict=True))
    assert all(x.corpus.tolist() == [0, 0] for x in mixed)


@pytest.mark.parametrize("workers", [0, 2])
def test_mixture_positions_after_n_batches_restart_the_stream_where_it_stood(two_corpora, workers):
    a, b = two_corpora
    sources = [{"root": a, "weight": 1.0}, {"root": b, "weight": 1.0}]
    full = list(_dm(sources, epoch_steps=8, num_workers=workers).train_dataloader())
    assert 0 < sum(_check_corpus_tags(full)) < 2 * len(full)  # both corpora in the run
    first = _dm(sources, epoch_steps=8, num_workers=workers)
    loader = first.train_dataloader()
    seen = [x for _, x in zip(range(6), loader, strict=False)]  # and the loader ran ahead of "done"
    first.start_step = 5
    state = loader.state_dict()
    assert [x.keys for x in seen] == [x.keys for x in full[:6]]
    rows = state["ranks"][0]
    assert len(rows) == max(1, workers) and all(len(row) == 6 for row in rows)  # epoch, 2 x (shard, offset), draws
    assert all(row[-1] > 0 for row in rows)  # every lane has drawn
    resumed = _dm(sources, epoch_steps=8, num_workers=workers)
    resumed.start_step = 5
    again = resumed.train_dataloader()
    again.load_state_dict(state)
    tail = list(again)
    assert [x.keys for x in tail] == [x.keys for x in full[5:]]
    assert all(torch.equal(x.video, y.video) and torch.equal(x.corpus, y.corpus)
               for x, y in zip(tail, full[5:], strict=True))


def test_mixture_differs_by_rank_and_a_single_corpus_checkpoint_restarts_it(two_corpora, caplog):
    a, b = two_corpora
    sources = [{"root": a, "weight": 1.0}, {"root": b, "weight": 1.0}]
    rank0 = [x.keys for x in _dm(sources, rank=0, world=2).train_dataloader()]
    rank1 = [x.keys for x in _dm(sources, rank=1, world=2).train_dataloader()]
    assert rank0 != rank1
    single = _dm([], root=a).train_dataloader()
    next(iter(single))
    mixed = _dm(sources).train_dataloader()
    mixed.load_state_dict(single.state_dict())  # 1 corpus saved, 2 configured: not this run's positions
    assert "training corpora, epoch_steps) = (1, 1, 1, 4), this run has (1, 1, 2, 4)" in caplog.text
    assert [x.keys for x in mixed] == [x.keys for x in _dm(sources).train_dataloader()]


def _copy_manifest(root: str, folder: Path, edit) -> str:
    folder.mkdir()
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)


def test_corpora_of_different_media_are_refused_naming_both_values(two_corpora, tmp_path):
    a, b = two_corpora
    fps30 = _copy_manifest(b, tmp_path / "fps30", lambda m: m["media"].update(fps=30))
    with pytest.raises(ConfigError, match=rf"fps is 25 in {a} but 30 in {fps30}") as err:
        _dm([{"root": a}, {"root": fps30}]).train_dataloader()
    assert "\n" not in str(err.value)
    size = _copy_manifest(b, tmp_path / "size", lambda m: m["media"].update(size=128))
    with pytest.raises(ConfigError, match=r"size is 64 .* but 128"):
        _dm([{"root": a}, {"root": size}]).train_dataloader()

    def latent(shape):
        return lambda m: m.update(latent={"shape": shape})

    wide = _copy_manifest(a, tmp_path / "latent8", latent([8, 3, 8, 8]))
    narrow = _copy_manifest(a, tmp_path / "latent4", latent([4, 3, 8, 8]))
    none = _copy_manifest(a, tmp_path / "none", lambda m: None)
    with pytest.raises(ConfigError, match=r"latent \(C, h, w\) is \[8, 8, 8\] .* but \[4, 8, 8\]"):
        _dm([{"root": wide}, {"root": narrow}], mode="latent").train_dataloader()
    with pytest.raises(ConfigError, match=r"latent \(C, h, w\) is \[8, 8, 8\] .* but None"):
        _dm([{"root": wide}, {"root": none}], mode="latent").train_dataloader()
    _dm([{"root": wide}, {"root": none}], mode="video").stream_dataset()  # video mode reads no latent


def test_sources_config_is_checked():
    with pytest.raises(ValueError, match=r"data.sources\[1\].weight must be a positive number, got 0.0"):
        DataConfig(sources=[{"root": "a"}, {"root": "b", "weight": 0}])
    with pytest.raises(ValueError, match=r"data.sources\[0\].weight must be a number, got 'heavy'"):
        DataConfig(sources=[{"root": "a", "weight": "heavy"}])
    with pytest.raises(ValueError, match=r"data.sources\[0\] has unknown keys \['wieght'\]"):
        DataConfig(sources=[{"root": "a", "wieght": 2}])
    with pytest.raises(ValueError, match=r"data.sources\[0\] has no root"):
        DataConfig(sources=[{"weight": 2}])
    with pytest.raises(ValueError, match=r"data.sources\[0\].shard_url='pipe:cat x' must contain \{path\}"):
        DataConfig(sources=[{"root": "a", "shard_url": "pipe:cat x"}])
    with pytest.raises(ValueError, match="data.sources mixes corpora in the stream source only"):
        DataConfig(sources=[{"root": "a"}], source="index")


def test_a_bad_source_is_one_line_exit_2_from_rest_train(tmp_path, capsys):
    code = train_cli.main(["experiment=tiny_vae", "logger=none", "data.cfg.root=x", f"run_dir={tmp_path / 'run'}",
                           "data.cfg.sources=[{root: x, weight: -1}]"])
    err = capsys.readouterr().err.rstrip("\n").splitlines()[-1]
    assert code == 2 and err.startswith("rest-train: error: ") and "data.sources[0].weight" in err, err
    assert not (tmp_path / "run").exists()


def test_validation_reads_the_root_else_the_first_source(two_corpora, tmp_path):
    a, b = two_corpora
    keys = lambda dm: [k for x in dm.val_dataloader() for k in x.keys]  # noqa: E731
    expected = keys(_dm([], root=a))
    assert keys(_dm([{"root": a}, {"root": b}])) == expected  # no root: the first source's val split
    assert keys(_dm([{"root": b}, {"root": a}], root=a)) == expected  # a chosen root
    with pytest.raises(ConfigError, match="split 'val' not in"):
        keys(_dm([{"root": b}, {"root": a}]))  # corpus B has no val split: validation does not fall back


def test_each_corpus_keeps_its_own_decoded_cache(two_corpora, tmp_path):
    """Keys are unique within a corpus only: a clip of corpus B under the same key as one of corpus A (here the
    same key, other pixels) must not be served A's cached frames."""
    a, _ = two_corpora
    dark = tmp_path / "dark"
    shutil.copytree(a, dark, ignore=shutil.ignore_patterns("val", "test"))
    manifest = json.loads((dark / "manifest.json").read_text())
    for entry in manifest["splits"]["train"]["shards"]:
        _darken(Path(a) / entry["path"], dark / entry["path"])
    sources = [{"root": a}, {"root": str(dark)}]
    batches = list(_dm(sources, batch_size=1, epoch_steps=24, shuffle_buffer=1, cache_mb=8).train_dataloader())
    seen: dict[tuple[int, str], torch.Tensor] = {}
    for x in batches:
        seen.setdefault((int(x.corpus[0]), x.keys[0]), x.video[0, :, 0])
    both = {key for corpus, key in seen if corpus == 0} & {key for corpus, key in seen if corpus == 1}
    assert both, "the run drew no clip from both corpora"
    for key in both:
        assert not torch.equal(seen[0, key], seen[1, key])


def _darken(src: Path, dst: Path) -> None:
    """A copy of shard ``src`` with every video replaced by the same clip at half brightness (re-encoded)."""
    from rest_lightning.data.codecs import decode_mp4, encode_mp4

    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            if member.name.endswith(".video.mp4"):
                frames = decode_mp4(data)
                data = encode_mp4((frames // 2).astype(np.uint8), fps=25)
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_kill9_and_resume_reproduces_a_mixtures_batches_and_weights(two_corpora, tmp_path):
    a, b = two_corpora
    lanes = kill9_and_resume(a, tmp_path, workers=2, sources=[{"root": a, "weight": 1.0}, {"root": b, "weight": 1.0}])
    assert len(lanes) == 2 and all(len(row) == 6 and row[-1] > 0 for row in lanes)  # both lanes drew
    assert any(row[2] > 0 for row in lanes) and any(row[4] > 0 for row in lanes)  # mid-shard in both corpora
