"""Generating a system's test videos through the streaming engine, sharded across ranks and resumable.

For each test item: reference = the item's reference image (center square, resized to the model's
resolution), audio = the item's audio, streamed through ``StreamingGenerator`` exactly as
``rest-generate`` does (``rest_lightning.generation.build_models`` / ``build_generator``). The video
goes to ``<videos>/<item id>.mp4`` through a temporary file renamed when complete, so a finished
video is never half written; on a rerun it is kept and skipped. Rank r of W generates items
r, r + W, r + 2W, ... (rank and world from the config, else ``RANK``/``WORLD_SIZE``, else
``SLURM_PROCID``/``SLURM_NTASKS``): ``srun rest-eval ...`` spreads a table over a cluster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from eval.manifest import TestItem, TestSet, load_clip
from eval.scoring import center_square, resize_square

log = logging.getLogger(__name__)

MS_PER_S = 1000
RANK_ENV = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))


@dataclass
class GenerationReport:
    generated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"generated": len(self.generated), "skipped": len(self.skipped)}


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's share of the work: explicit config values, else the launcher's environment."""
    if rank is None or world_size is None:
        for rank_key, world_key in RANK_ENV:
            if rank_key in os.environ and world_key in os.environ:
                rank = int(os.environ[rank_key]) if rank is None else rank
                world_size = int(os.environ[world_key]) if world_size is None else world_size
                break
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} world_size={world_size}: need 0 <= rank < world_size")
    return rank, world_size


def shard(items: Sequence[TestItem], rank: int, world_size: int) -> list[TestItem]:
    """Items ``rank, rank + world_size, ...``: disjoint across ranks, together all of them."""
    return list(items[rank::world_size])


def video_path(videos: Path, item: TestItem) -> Path:
    return videos / f"{item.id}.mp4"


def generate_videos(gen_cfg: DictConfig, testset: TestSet, items: Sequence[TestItem], videos: Path) -> GenerationReport:
    """Generate the videos of ``items`` that ``videos`` lacks with the checkpoint in ``gen_cfg`` (a
    composed ``conf/generate.yaml``); models are built only if something is left to generate."""
    report = GenerationReport()
    todo = []
    for item in items:
        (report.skipped if video_path(videos, item).is_file() else todo).append(item)
    report.skipped = [item.id for item in report.skipped]
    if not todo:
        return report
    from rest_lightning.data.codecs import H264Config
    from rest_lightning.generation import build_generator, build_models, resolution_of
    from rest_lightning.streaming.media import Mp4StreamWriter, frames_to_uint8, image_to_tensor

    models = build_models(gen_cfg)
    generator = build_generator(gen_cfg, models)
    side = resolution_of(gen_cfg, generator, models)
    audio_config = generator.audio_encoder.config
    chunk = max(1, int(round(gen_cfg.audio_chunk_ms * audio_config.sample_rate / MS_PER_S)))
    for item in todo:
        clip = load_clip(testset, item, audio_config.fps, audio_config.sample_rate)
        ref = image_to_tensor(resize_square(center_square(clip.ref), side))
        pieces = [clip.audio[start : start + chunk] for start in range(0, len(clip.audio), chunk)]
        target = video_path(videos, item)
        with Mp4StreamWriter(target, audio_config.fps, side, side, audio_config.sample_rate, H264Config(crf=gen_cfg.crf)) as writer:
            writer.write_audio(np.asarray(clip.audio, np.float32))
            for out in generator.generate(ref, pieces):
                writer.write_frames(frames_to_uint8(out.frames)[0])
        log.info("generated %s (%d frames)", target, writer.frames_written)
        report.generated.append(item.id)
    return report
