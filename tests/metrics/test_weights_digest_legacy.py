"""Weight files are identified by SHA-256 per protocol, and legacy BatchNorm state dicts load strictly
exactly where torch's own strict load accepts them (issue 17 item 5)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import pytest
import torch
from torch import Tensor, nn

from eval.protocol import ProtocolError, load_protocol
from rest_lightning.checkpoint import CheckpointMismatchError, load_weights_into
from rest_lightning.metrics.fvd import load_i3d
from rest_lightning.metrics.weights import (
    I3D_FILE,
    WeightsDigestError,
    build_random,
    file_sha256,
    load_network,
    load_state_dict_strict,
)
from rest_lightning.state_dict_compat import legacy_missing_keys


class _ScriptedI3D(nn.Module):
    """Stands in for StyleGAN-V's TorchScript I3D: (B, 3, T, H, W) -> (B, 400)."""

    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> Tensor:
        return x.mean(dim=(1, 2, 3, 4))[:, None].expand(-1, 400)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False)))


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"rest" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"rest" * 1000).hexdigest()


def test_a_file_with_another_digest_is_refused_in_one_line_naming_both(tmp_path) -> None:
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(_ScriptedI3D()), str(path))
    actual, expected = file_sha256(path), "ab" * 32
    with pytest.raises(WeightsDigestError) as error:
        load_i3d(path, allow_random_weights=False, expected_sha256=(expected,))
    message = str(error.value)
    assert "\n" not in message and actual in message and expected in message and "weight_sha256.i3d" in message
    assert load_i3d(path, allow_random_weights=False, expected_sha256=(expected, actual)).calibrated
    assert not load_i3d(path, allow_random_weights=True, expected_sha256=(expected,)).calibrated  # explicit opt-in
    assert load_i3d(path, allow_random_weights=False).calibrated  # a protocol that pins nothing checks nothing


def test_the_state_dict_path_checks_the_digest_too(tmp_path) -> None:
    path = tmp_path / "net.pt"
    torch.save(build_random(_net).state_dict(), path)
    with pytest.raises(WeightsDigestError, match=file_sha256(path)):
        load_network(I3D_FILE, _net, path, False, "FVD", expected_sha256=("00" * 32,))
    assert load_network(I3D_FILE, _net, path, False, "FVD", expected_sha256=(file_sha256(path).upper(),)).calibrated


def test_protocols_parse_digests_and_refuse_malformed_ones(tmp_path) -> None:
    assert load_protocol("hdtf_v2").weight_sha256 == {}  # nothing pinned yet (docs/eval.md)
    base = (tmp_path / "base.yaml")
    text = load_protocol("hdtf_v2").source
    source = open(text).read().replace("name: hdtf_v2", "name: pinned").replace("weight_sha256: {}", "")
    base.write_text(source + f"weight_sha256:\n  i3d: [{'AB' * 32}]\n")
    assert load_protocol(str(base)).weight_sha256 == {"i3d": ("ab" * 32,)}
    base.write_text(source + "weight_sha256:\n  i3d: [not-a-digest]\n")
    with pytest.raises(ProtocolError, match="weight_sha256.i3d"):
        load_protocol(str(base))


# --- legacy num_batches_tracked ------------------------------------------------------------------------


def _state_without_num_batches_tracked(metadata_version: int | None) -> OrderedDict:
    state = build_random(_net).state_dict()
    del state["1.num_batches_tracked"]
    if metadata_version is None:
        return OrderedDict(state)  # a plain dict: torch treats it as a pre-versioning file
    state._metadata["1"]["version"] = metadata_version  # type: ignore[attr-defined]
    return state


def _torch_accepts(state) -> bool:
    try:
        _net().load_state_dict(state, strict=True)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("version", [None, 1, 2])
def test_metric_loader_accepts_exactly_what_torch_strict_load_accepts(tmp_path, version) -> None:
    state = _state_without_num_batches_tracked(version)
    torch.save(state, tmp_path / "legacy.pt")
    accepted = True
    try:
        load_network(I3D_FILE, _net, tmp_path / "legacy.pt", False, "FVD")
    except ValueError as error:
        assert "1.num_batches_tracked" in str(error)
        accepted = False
    assert accepted == _torch_accepts(state) == (version != 2)


@pytest.mark.parametrize("version", [None, 1, 2])
def test_checkpoint_loader_accepts_exactly_what_torch_strict_load_accepts(version) -> None:
    state = _state_without_num_batches_tracked(version)
    module = _net()
    accepted = True
    try:
        missing, _ = load_weights_into(module, state, strict=True, source="legacy")
        assert missing == []
    except CheckpointMismatchError as error:
        assert "1.num_batches_tracked" in str(error)
        accepted = False
    assert accepted == _torch_accepts(state) == (version != 2)
    if accepted:
        torch.testing.assert_close(module[1].running_mean, state["1.running_mean"])


def test_only_num_batches_tracked_of_tracking_norms_is_tolerated() -> None:
    module = _net()
    state = OrderedDict((k, v) for k, v in module.state_dict().items() if not k.endswith(("num_batches_tracked", "running_var")))
    assert legacy_missing_keys(module, state) == {"1.num_batches_tracked"}
    with pytest.raises(ValueError, match="1.running_var"):
        load_state_dict_strict(_net(), state, source="legacy")
    with pytest.raises(CheckpointMismatchError, match="1.running_var"):
        load_weights_into(_net(), state, strict=True, source="legacy")
