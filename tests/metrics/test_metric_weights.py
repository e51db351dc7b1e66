"""Weight files load strictly from local paths; a missing file is a clear error; random weights are
seeded, opt-in and labelled uncalibrated."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from rest_lightning.metrics import FID, FVD, LipSync, MissingWeightsError
from rest_lightning.metrics.fvd import load_i3d
from rest_lightning.metrics.nets.i3d import is_torchscript_archive
from rest_lightning.metrics.nets.syncnet import SyncNet
from rest_lightning.metrics.weights import (
    SYNCNET_FILE,
    build_random,
    load_network,
    load_state_dict_strict,
)


@pytest.mark.parametrize(
    ("make_metric", "key", "file_name"),
    [
        (lambda: FID(), "fid_inception", "pt_inception-2015-12-05-6726825d.pth"),
        (lambda: FVD(), "i3d", "i3d_torchscript.pt"),
        (lambda: LipSync(), "syncnet", "syncnet_v2.model"),
    ],
)
def test_missing_weights_error_names_the_file_its_source_and_the_config_keys(
    make_metric, key, file_name
) -> None:
    with pytest.raises(MissingWeightsError) as error:
        make_metric()
    message = str(error.value)
    assert file_name in message
    assert f"eval.weights.{key}=PATH" in message
    assert "eval.allow_random_weights=true" in message
    assert "normally comes from" in message


def test_a_path_that_does_not_exist_is_named(tmp_path) -> None:
    with pytest.raises(MissingWeightsError, match="nowhere.model does not exist"):
        LipSync(weights_path=tmp_path / "nowhere.model")


def test_weight_file_round_trip_is_calibrated_and_bit_identical(tmp_path) -> None:
    source = build_random(SyncNet)
    path = tmp_path / "syncnet_v2.model"
    torch.save(source.state_dict(), path)
    metric = LipSync(weights_path=path)
    assert not metric.uncalibrated
    for name, tensor in source.state_dict().items():
        assert torch.equal(metric.network.state_dict()[name], tensor), name


def test_strict_loading_lists_missing_unexpected_and_mis_shaped_keys(tmp_path) -> None:
    state = build_random(SyncNet).state_dict()
    del state["netfcaud.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["netfclip.3.bias"] = torch.zeros(7)
    path = tmp_path / "bad.model"
    torch.save(state, path)
    with pytest.raises(ValueError) as error:
        load_network(SYNCNET_FILE, SyncNet, path, allow_random_weights=False, metric="Sync-C/D")
    message = str(error.value)  # the project's one loader and error format (checkpoint.load_weights_into)
    assert "missing in the file (1): netfcaud.0.weight" in message
    assert "unused from the file (1): extra.weight" in message
    assert "netfclip.3.bias: file (7,) vs model (1024,)" in message
    assert str(path) in message and "weights key" in message


def test_a_pickled_module_is_refused_by_weights_only_loading(tmp_path) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(nn.Linear(2, 2), path)  # a pickled object, not a state dict
    with pytest.raises(Exception):  # noqa: B017 - torch raises UnpicklingError, a pickle subclass
        load_network(SYNCNET_FILE, SyncNet, path, allow_random_weights=False, metric="Sync-C/D")


def test_random_weights_are_seeded_and_leave_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = load_network(SYNCNET_FILE, SyncNet, None, allow_random_weights=True, metric="Sync-C/D")
    after = torch.rand(3)
    second = load_network(SYNCNET_FILE, SyncNet, None, allow_random_weights=True, metric="Sync-C/D")
    assert torch.equal(after, expected_next)
    assert not first.calibrated
    for (name, a), b in zip(
        first.module.state_dict().items(), second.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name  # every rank builds the same random network
    assert not first.module.training


def test_load_state_dict_strict_accepts_an_exact_match() -> None:
    a, b = build_random(lambda: nn.Linear(3, 2)), nn.Linear(3, 2)
    load_state_dict_strict(b, a.state_dict(), source="test")
    assert torch.equal(a.weight, b.weight)


class _FakeScriptedI3D(nn.Module):
    """Stands in for StyleGAN-V's TorchScript I3D: same call signature, (B, 3, T, H, W) -> (B, 400)."""

    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        assert not rescale and not resize and return_features
        return x.mean(dim=(1, 2, 3, 4))[:, None].expand(-1, 400) * torch.linspace(0.5, 1.5, 400)


def test_torchscript_i3d_file_is_detected_and_wrapped(tmp_path) -> None:
    scripted_path, state_path = tmp_path / "i3d_torchscript.pt", tmp_path / "state.pt"
    torch.jit.save(torch.jit.script(_FakeScriptedI3D()), str(scripted_path))
    torch.save({"w": torch.zeros(1)}, state_path)
    assert is_torchscript_archive(scripted_path)
    assert not is_torchscript_archive(state_path)
    loaded = load_i3d(scripted_path, allow_random_weights=False)
    assert loaded.calibrated
    video = torch.full((2, 3, 16, 224, 224), 0.5)
    assert loaded.module(video).shape == (2, 400)
