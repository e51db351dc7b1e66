"""The stream source reads shards over HTTP (a server on 127.0.0.1, no internet) and through ``pipe:``, and
gets past a shard that breaks off: skipped with a warning naming its URL, counted, the run goes on."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from rest_lightning.data.datamodule import DataConfig, VideoDataModule


class _ShardHandler(SimpleHTTPRequestHandler):
    """Serves a folder; for paths in ``drop`` it promises the whole file, sends half and hangs up."""

    drop: frozenset[str] = frozenset()

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        if name not in self.drop:
            return super().do_GET()
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True  # the server drops the connection mid-body

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def serve():
    """``serve(folder, drop=())`` -> ``http://127.0.0.1:PORT`` serving the folder until the test ends."""
    servers = []

    def start(folder: Path, drop: tuple[str, ...] = ()) -> str:
        handler = type("Handler", (_ShardHandler,), {"drop": frozenset(drop)})
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _batches(root: str, **kw) -> list:
    cfg = dict(root=root, latent_frames=1, batch_size=2, num_workers=0, epoch_steps=6, shuffle_buffer=4)
    return list(VideoDataModule(DataConfig(**{**cfg, **kw})).train_dataloader())


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.keys == y.keys and torch.equal(x.video, y.video) and torch.equal(x.audio, y.audio)
        for x, y in zip(a, b, strict=True)
    )


def test_http_and_pipe_urls_give_the_local_stream(prepared, serve):
    cfg, _ = prepared
    local = _batches(cfg.output)
    assert _same(_batches(serve(Path(cfg.output))), local)  # manifest and shards over http://
    assert _same(_batches(cfg.output, shard_url="pipe:cat {root}/{path}"), local)


def test_a_shard_dropped_mid_transfer_is_skipped_named_and_counted(prepared, serve, caplog):
    cfg, _ = prepared
    manifest = json.loads((Path(cfg.output) / "manifest.json").read_text())
    broken = manifest["splits"]["train"]["shards"][0]["path"]
    url = serve(Path(cfg.output), drop=(broken,))
    with caplog.at_level(logging.WARNING, logger="rest_lightning.data.shard_stream"):
        batches = _batches(url, shuffle_buffer=1, epoch_steps=8)
    assert len(batches) == 8 and all(len(b) == 2 for b in batches)  # the run went on, batches full
    failed = sum(b.failed_shards for b in batches)
    assert failed >= 1
    named = [r.getMessage() for r in caplog.records if f"{url}/{broken}" in r.getMessage()]
    assert len(named) == failed, caplog.text


def test_a_truncated_local_shard_is_skipped_and_its_complete_samples_kept(prepared, tmp_path, caplog):
    cfg, _ = prepared
    root = tmp_path / "truncated"
    shutil.copytree(cfg.output, root)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    shard = root / entry["path"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size * 2 // 3])  # cut inside the last sample
    with caplog.at_level(logging.WARNING, logger="rest_lightning.data.shard_stream"):
        # One lane, file order, one sample per batch, as many batches as samples: every shard read once.
        total = sum(e["count"] for e in manifest["splits"]["train"]["shards"])
        batches = _batches(str(root), shuffle_buffer=1, batch_size=1, epoch_steps=total - entry["count"] + 1)
    assert sum(b.failed_shards for b in batches) == 1
    assert any(str(shard) in r.getMessage() for r in caplog.records), caplog.text
    keys = [b.keys[0] for b in batches]
    assert len(keys) == len(set(keys))  # the readable part of the cut shard was used, nothing read twice


def test_unreadable_shards_everywhere_stop_the_run_with_the_url(prepared, tmp_path):
    cfg, _ = prepared
    root = tmp_path / "gone"
    root.mkdir()
    shutil.copy(Path(cfg.output) / "manifest.json", root)  # the manifest, no shards
    with pytest.raises(RuntimeError, match=r"none of the \d+ training shards could be read.*shard-"):
        _batches(str(root))
