"""Models that may start from pretrained LTX-Video weights. Keymaps import the models they map onto, never
the reverse; this module sits above both."""

from __future__ import annotations

import logging

from rest_lightning.models.dit import DiT, DiTConfig
from rest_lightning.models.ltx_dit_keymap import load_ltx_transformer_weights

logger = logging.getLogger(__name__)


def build_dit(config: DiTConfig) -> DiT:
    """A ``DiT`` from its config, initialised from ``config.pretrained`` (LTX-Video) when set."""
    model = DiT(config)
    if config.pretrained is not None:
        report = load_ltx_transformer_weights(model, config.pretrained)
        logger.info("DiT initialised from LTX-Video at %s: %s", config.pretrained, report.summary())
    return model
