"""Loss maths of the VAE stage: the KL term's scale, hinge losses and the adaptive generator weight.

Pure functions of tensors (the stage wires them): taming-transformers' VQGAN recipe, which LTX-Video,
Open-Sora's video DC-AE and VideoVAEPlus also use (reference/anchors.md §C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# taming-transformers `calculate_adaptive_weight`: eps keeps the ratio finite when the GAN gradient
# vanishes; the cap stops one bad step from blowing up the generator's GAN term.
ADAPTIVE_WEIGHT_EPS = 1e-4
ADAPTIVE_WEIGHT_MAX = 1e4


def kl_per_video_value(kl_per_sample: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Scalar KL per video value: ``(B,)`` KL summed over each latent, over ``video`` (B, 3, T, H, W)'s
    values per sample, averaged over the batch.

    Stable Diffusion's / taming's ``LPIPSWithDiscriminator`` sums the pixel loss over each sample's
    values and adds ``kl_weight * KL summed over the latent``; this stage averages the pixel loss over
    the values, so the KL is divided by the same count. Without it the KL weighed ``3*T*H*W`` times more
    than ``kl_weight`` says (52,224 x at 17x32x32): the posterior noise stayed at 0.3-0.5 of the latent's
    spread and drowned every detail smaller than the face, such as the mouth.
    """
    return kl_per_sample.mean() / video[0].numel()


def motion_weights(video: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-pixel L1 weights ``(B, 1, T, H, W)`` for ``video`` (B, 3, T, H, W): ``1 + strength * mean_c |x -
    mean_t x|``, divided by their mean over the batch so the loss keeps its scale.

    Pixels that change within the clip (a talking mouth, blinks) weigh more than the static face and
    background, which dominate an unweighted L1. Measured on the SynthTalk corpus at 32 px (standalone
    trainer, 2500 steps, held-out speakers): strength 20 with tight crops gave mouth lip-sync r 0.56 where
    strength 0 gave 0.18 (and -0.07 with the default crop); docs/synthtalk.md.
    """
    weights = 1.0 + strength * (video - video.mean(dim=2, keepdim=True)).abs().mean(dim=1, keepdim=True)
    return weights / weights.mean()


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Scalar 0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))]); logits of any (equal or not) shapes."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Scalar -E[D(fake)]: the generator (VAE decoder) side of the hinge GAN."""
    return -logits_fake.mean()


def adaptive_generator_weight(
    reconstruction_loss: torch.Tensor,
    generator_loss: torch.Tensor,
    last_layer: torch.Tensor,
    eps: float = ADAPTIVE_WEIGHT_EPS,
    max_weight: float = ADAPTIVE_WEIGHT_MAX,
) -> torch.Tensor:
    """Detached scalar ||d rec / d W|| / (||d gan / d W|| + eps), clamped to [0, max_weight].

    W is `last_layer` (`CausalVideoVAE.last_decoder_layer`): the GAN term is scaled so its gradient
    at the decoder output is as large as the reconstruction loss's (taming-transformers). Both losses
    must still have their graphs (it differentiates with retain_graph=True). Under FSDP the weight
    must be the unsharded parameter (`use_orig_params=True`, or the layer kept out of the shard) and
    then each rank's ratio uses its own batch, as under DDP.
    """
    if not last_layer.requires_grad:
        raise ValueError(
            "adaptive_generator_weight needs last_layer to require grad (is the decoder frozen?)"
        )
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    generator_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    weight = reconstruction_grad.norm() / (generator_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
