"""Keys a strict ``load_state_dict`` tolerates as missing, computed the way torch decides it.

PyTorch 0.4.1 added the ``num_batches_tracked`` buffer to BatchNorm (state-dict version 2). Older
files lack it, and ``torch.nn.modules.batchnorm._NormBase._load_from_state_dict`` fills it in, so a
strict load accepts them, exactly when the norm layer tracks running stats and the state dict's
``_metadata`` version for that layer is absent or below 2. Our strict loaders list missing keys
themselves before calling torch; they subtract these keys and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

NUM_BATCHES_TRACKED = "num_batches_tracked"
NUM_BATCHES_TRACKED_VERSION = 2  # _NormBase._version when num_batches_tracked was added


def legacy_missing_keys(module: nn.Module, state: Mapping[str, Tensor]) -> set[str]:
    """The ``<prefix>num_batches_tracked`` keys absent from ``state`` that torch's own strict load
    fills in (module doc); ``state`` may carry torch's ``_metadata`` attribute."""
    metadata = getattr(state, "_metadata", None) or {}
    tolerated = set()
    for name, layer in module.named_modules():
        if not isinstance(layer, _NormBase) or not layer.track_running_stats:
            continue
        key = f"{name}.{NUM_BATCHES_TRACKED}" if name else NUM_BATCHES_TRACKED
        version = metadata.get(name, {}).get("version")
        if key not in state and (version is None or version < NUM_BATCHES_TRACKED_VERSION):
            tolerated.add(key)
    return tolerated
