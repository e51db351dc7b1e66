"""Write the frozen teacher's ODE trajectories into latent shards: the ODE-init warm start's data
(``student_ode_init``, as CausVid / Self-Forcing precompute ``ode_pairs``).

Input: a latent-mode shard set (every sample holds ``latent.npy``: run ``rest-prep mode=encode`` first).
Output: new shards, every sample copied unchanged plus ``ode.npy``:

    ode.npy  float32, shape (S + 1, C, F, h, w), S = len(ode.timesteps) (the student's sampler levels)
             ode[i]  = the teacher's ODE state at flow time timesteps[i], i < S (ode[0] = the noise, t = 1)
             ode[S]  = the ODE's end point at t = 0 (the teacher's sample)
             C, F, h, w = the sample's latent.npy shape (the whole clip: F = 1 + k latent frames)

It is exactly ``rest_lightning.diffusion.asd.ode_trajectory`` (what ``StudentStage.ode_loss`` computes online)
for one sample, moved to the sample's first axis: the frozen guided teacher (``frozen_teacher.py``, its
EMA weights, ``ode.guidance``) with the clip's conditions as the student sees them (``clip_conditions``: the
shard's latent, the reference through the frozen VAE ``ode.vae``, audio tokens of the teacher's own audio
encoder), ``ode.steps_per_level`` Euler steps between two recorded levels, from the noise
``ode_noise(ode.seed, key, shape)``: a float32 CPU draw seeded by (seed, the sample's ``__key__``), so a
sample's trajectory depends neither on the batch it was computed in nor on the device.

The trajectory covers the whole clip under the bidirectional teacher; a reader cutting a shorter latent
window (``data.cfg.latent_frames`` below the shards' k) takes the same frames of every state (windows start
at frame 0 in latent mode), i.e. a prefix of the full clip's trajectory.

Shards are written as ``.partial`` and renamed when closed, and the manifest (the list readers trust, with an
``ode`` entry: timesteps, steps per level, teacher, VAE, guidance, seed, layout) is written last, so an
interrupted run leaves no output a reader would accept; run it again from scratch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from data_prep.augment import augment_shards, check_roots, claim_output, finish_manifest, write_manifest
from rest_lightning.data.schema import LATENT_KEY, ODE_KEY

log = logging.getLogger(__name__)

ODE_LAYOUT = "(S+1, C, F, h, w): states at timesteps[0..S-1] (ode[0] = noise at t=1), then the sample at t=0"


@dataclass
class OdeConfig:
    """``rest-prep mode=ode input=LATENT_SHARDS output=DIR ode.teacher=TEACHER_CKPT ode.vae=VAE_CKPT``."""

    teacher: str = ""  # a teacher-stage checkpoint (or `rest-ckpt export` file with metadata); EMA weights preferred
    vae: str = ""  # the VAE-stage checkpoint that encoded the shards (the reference is encoded with it)
    timesteps: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])  # = stage.sampler.timesteps
    steps_per_level: int = 4  # = stage.ode_init.steps_per_level: teacher Euler steps between two levels
    guidance_audio: float = 3.5  # = stage.teacher.guidance.audio
    guidance_ref: float = 1.0  # = stage.teacher.guidance.ref
    dtype: str = "float32"  # teacher dtype on CUDA (float32 | bfloat16); CPU runs float32
    batch_size: int = 4  # clips run through the teacher together
    device: str = "cpu"  # cpu | cuda | cuda:N
    seed: int = 0  # noise of sample KEY: ode_noise(seed, KEY, shape)
    progress: bool = True  # tqdm progress bar on stderr

    def __post_init__(self) -> None:
        if not self.teacher:
            raise ValueError("ode.teacher is empty: set ode.teacher=PATH (a teacher-stage checkpoint)")
        if not self.vae:
            raise ValueError("ode.vae is empty: set ode.vae=PATH (the VAE-stage checkpoint that encoded the shards)")
        if self.batch_size < 1 or self.steps_per_level < 1:
            raise ValueError(f"ode.batch_size and ode.steps_per_level must be >= 1, got "
                             f"{self.batch_size}, {self.steps_per_level}")
        levels = [float(t) for t in self.timesteps]
        if not levels or levels[0] != 1.0 or any(a <= b for a, b in zip(levels[:-1], levels[1:], strict=True)) or levels[-1] <= 0:
            raise ValueError(f"ode.timesteps={levels} must start at 1 and decrease strictly in (0, 1] "
                             "(the student's stage.sampler.timesteps)")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"ode.dtype={self.dtype!r} is not one of float32, bfloat16")


@dataclass
class OdeSummary:
    clips: int
    splits: dict[str, int]
    ode_shape: tuple[int, ...]
    elapsed_s: float


def ode_noise(seed: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The starting noise of sample ``key``: float32 on the CPU from a generator seeded by (seed, key)."""
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    state = np.random.SeedSequence([seed, digest]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def load_frozen_teacher(path: str | Path, cfg: OdeConfig):
    """The frozen guided teacher of a teacher-stage checkpoint, its architecture read from the checkpoint's
    own metadata (``identity_config``)."""
    from rest_lightning.checkpoint import CheckpointMismatchError, load_user_state
    from rest_lightning.diffusion.guidance import GuidanceScales
    from rest_lightning.frozen_teacher import FrozenTeacher, FrozenTeacherConfig
    from rest_lightning.models.audio import AudioConfig
    from rest_lightning.models.dit import DiTConfig

    _, meta = load_user_state(path)
    config = meta.get("config", {})
    if meta.get("stage") != "teacher" or "dit" not in config or "audio" not in config:
        raise CheckpointMismatchError(
            f"ode.teacher={str(path)!r} is not a teacher-stage checkpoint (stage {meta.get('stage')!r}); train one "
            "with `rest-train experiment=teacher` (or tiny_teacher) and pass its last.ckpt"
        )
    frozen = FrozenTeacherConfig(dtype=cfg.dtype, guidance=GuidanceScales(cfg.guidance_audio, cfg.guidance_ref))
    return FrozenTeacher.load(DiTConfig(**config["dit"]), AudioConfig(**config["audio"]), path, frozen)


def write_ode_shards(
    input_root: str | Path, output_root: str | Path, cfg: OdeConfig, step: str = "all",
    task: tuple[int, int] | None = None,
) -> OdeSummary:
    """Copy every split of ``input_root`` (a ``rest-prep mode=encode`` output) to ``output_root`` with each
    sample's teacher trajectory added as ``ode.npy`` (module doc). ``step``/``task``: as
    :func:`data_prep.encode_latents.encode_shards` (array tasks, then the merge)."""
    from data_prep.encode_latents import load_frozen_vae

    start = time.perf_counter()
    input_root, output_root = Path(input_root), Path(output_root)
    manifest = check_roots(input_root, output_root)
    if "latent" not in manifest:
        raise ValueError(f"{input_root} holds no latents (no 'latent' entry in its manifest): encode it first with "
                         "`rest-prep mode=encode input=SHARDS output=DIR encode.vae=VAE_CKPT`")
    settings = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    claim_output(output_root, input_root, ODE_KEY, settings, fresh=step == "all")
    if step != "merge":
        device = torch.device(cfg.device)
        vae = load_frozen_vae(cfg.vae, device)
        teacher = load_frozen_teacher(cfg.teacher, cfg)
        if teacher.model.dit.config.latent_channels != vae.latent_channels:
            raise ValueError(f"ode.teacher has {teacher.model.dit.config.latent_channels} latent channels, ode.vae "
                             f"{vae.latent_channels}: they belong to different models")
        with teacher.on_device(device):
            written = augment_shards(
                input_root, output_root, manifest, ODE_KEY,
                lambda batch: _trajectories(teacher, vae, batch, cfg, device), cfg.batch_size, cfg.progress,
                "rest-prep ode", task=task if step == "task" else None,
            )
        if step == "task":
            return OdeSummary(written, {}, (), time.perf_counter() - start)
    counts, ode_shape, manifest = finish_manifest(output_root, manifest, ODE_KEY)

    manifest["ode"] = {
        "timesteps": [float(t) for t in cfg.timesteps],
        "steps_per_level": cfg.steps_per_level,
        "teacher": str(cfg.teacher),
        "vae": str(cfg.vae),
        "guidance": {"audio": cfg.guidance_audio, "ref": cfg.guidance_ref},
        "seed": cfg.seed,
        "shape": list(ode_shape),
        "dtype": "float32",
        "layout": ODE_LAYOUT,
    }
    write_manifest(output_root, manifest)
    return OdeSummary(sum(counts.values()), counts, ode_shape, time.perf_counter() - start)


def sample_conditions(teacher, vae, samples: list[dict], device: torch.device):
    """The teacher's ``ClipConditions`` of whole latent-mode samples (all of one latent shape), read by the
    training reader itself (``decode_item``, window = the whole latent) and encoded by ``clip_conditions``."""
    from rest_lightning.conditioning import clip_conditions
    from rest_lightning.data.batch import collate_clips
    from rest_lightning.data.datasets import WindowSpec, decode_item

    items = []
    for sample in samples:
        if LATENT_KEY not in sample:
            raise ValueError(f"sample {sample.get('__key__', '?')} has no {LATENT_KEY}: encode the shards first")
        frames = np.load(io.BytesIO(sample[LATENT_KEY]), allow_pickle=False).shape[1]
        items.append(decode_item(sample, WindowSpec(frames - 1, "latent"), None))
    batch = collate_clips(items)
    batch.latent, batch.ref, batch.audio = batch.latent.to(device), batch.ref.to(device), batch.audio.to(device)
    return clip_conditions(batch, vae, teacher.model.audio_encoder, torch.float32), batch.keys


@torch.no_grad()
def _trajectories(teacher, vae, samples: list[dict], cfg: OdeConfig, device: torch.device) -> list[np.ndarray]:
    """Samples -> their trajectories ``(S + 1, C, F, h, w)`` float32, one per sample (module doc)."""
    from rest_lightning.diffusion.asd import ode_trajectory

    cond, keys = sample_conditions(teacher, vae, samples, device)
    shape = tuple(cond.latents.shape[1:])
    noise = torch.stack([ode_noise(cfg.seed, key, shape) for key in keys]).to(device)
    denoise = teacher.denoiser(cond.audio, cond.ref)
    trajectory = ode_trajectory(denoise, noise, cfg.timesteps, cfg.steps_per_level)  # (S + 1, B, C, F, h, w)
    return [trajectory[:, b].float().cpu().numpy() for b in range(len(samples))]
