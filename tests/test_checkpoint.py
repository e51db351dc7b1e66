"""Checkpoint mechanics: atomic writes, picking the newest checkpoint, key maps, strict loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rest_lightning.checkpoint import (
    AtomicCheckpointIO,
    CheckpointMismatchError,
    find_resume_checkpoint,
    load_user_state,
    load_weights_into,
    remap_keys,
)


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, path)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1, "the previous complete file survives"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temporary file is left behind"


def test_find_resume_checkpoint_takes_the_highest_step(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for name, step in [("step=00000004.ckpt", 4), ("last.ckpt", 6), ("step=00000008.ckpt", 8)]:
        torch.save({"global_step": step}, ckpts / name)
    torch.save({"global_step": 99}, ckpts / ".last.ckpt.tmp-123")  # an interrupted save: ignored
    assert find_resume_checkpoint(tmp_path).name == "step=00000008.ckpt"
    torch.save({"global_step": 8}, tmp_path / "hpc_ckpt_1.ckpt")  # SLURM requeue, same step: wins the tie
    assert find_resume_checkpoint(tmp_path).name == "hpc_ckpt_1.ckpt"
    assert find_resume_checkpoint(tmp_path / "empty") is None


def test_remap_keys_longest_prefix_wins():
    state = {"model.a": torch.zeros(1), "model.head.b": torch.zeros(1), "other": torch.zeros(1)}
    out = remap_keys(state, {"model.": "student.", "model.head.": "student.out."})
    assert set(out) == {"student.a", "student.out.b", "other"}


def test_strict_load_lists_missing_unused_and_mismatched_keys(tmp_path):
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(4), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights_into(net, state, strict=True, source="test")
    message = str(err.value)
    assert "0.bias: file (4,) vs model (3,)" in message
    assert "missing in the file (2): 1.bias, 1.weight" in message
    assert "unused from the file (1): extra" in message
    state["0.bias"] = torch.ones(3)
    missing, unexpected = load_weights_into(net, state, strict=False, source="test")
    assert missing == ["1.bias", "1.weight"] and unexpected == ["extra"]
    assert torch.equal(net[0].bias, torch.ones(3))


def test_load_user_state_reads_safetensors_with_metadata(tmp_path):
    import json

    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"net.0.weight": torch.ones(2)}, str(path), metadata={"rest": json.dumps({"stage": "teacher"})})
    state, meta = load_user_state(path)
    assert meta == {"stage": "teacher"} and torch.equal(state["net.0.weight"], torch.ones(2))
