"""ASD student benchmark (not a test): training-step time against the teacher's, its growth with the clip
length C, and the memory plan of ``dit_rest`` ASD computed from meta-device models (docs/student.md).

    PYTHONPATH=. python benchmarks/bench_student.py [--dit dit_tiny] [--chunks 3 4 6 8] [--window 1] [--reps 5]
    PYTHONPATH=. python benchmarks/bench_student.py --memory-plan [--gpus 8 64]

Timing: one optimizer step (forward, backward, AdamW) on synthetic conditions of C chunks, 4x4 latents for
``dit_tiny`` (``--grid`` to change), batch 1, after one warm-up step; median of ``--reps``. The teacher
step is its flow-matching step (one bidirectional forward over the clip); the student step is the ASD
step (rollout of C - 1 chunks, the exit step with gradients, the teacher's trajectory target).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rest_lightning.conditioning import ClipConditions
from rest_lightning.config import compose
from rest_lightning.training import instantiate_node

GIB = 1024**3


def _stage(experiment: str, dit: str, overrides: list[str]):
    torch.manual_seed(0)
    cfg = compose("train", [f"experiment={experiment}", "data.cfg.root=unused", f"model/dit={dit}", *overrides])
    return instantiate_node(cfg.stage, "stage")


def _conditions(stage, chunks: int, grid: int) -> ClipConditions:
    generator = torch.Generator().manual_seed(0)
    channels = stage.dit_config.latent_channels
    spf = stage.audio_config.samples_per_video_frame
    waveform = torch.randn(1, (1 + 8 * (chunks - 1)) * spf, generator=generator) * 0.1
    return ClipConditions(
        torch.randn(1, channels, chunks, grid, grid, generator=generator),
        torch.randn(1, channels, 1, grid, grid, generator=generator),
        stage.model.audio_encoder(waveform, chunks),
        waveform,
    )


def _time_steps(step, reps: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_pair(teacher, student, chunks: int, reps: int, grid: int) -> tuple[float, float]:
    t_opt = torch.optim.AdamW([p for p in teacher.model.parameters() if p.requires_grad])
    s_opt = torch.optim.AdamW([p for p in student.model.parameters() if p.requires_grad])

    def teacher_step():
        loss = teacher.training_loss(_conditions(teacher, chunks, grid), torch.Generator().manual_seed(0)).loss
        t_opt.zero_grad()
        loss.backward()
        t_opt.step()

    def student_step():
        generator = torch.Generator().manual_seed(0)
        cond = _conditions(student, chunks, grid)
        objective = student.objective()
        choices = objective.step_choices(chunks - 1, 0, generator)
        loss = objective.training_loss(student.model, cond, generator, choices).loss
        s_opt.zero_grad()
        loss.backward()
        s_opt.step()

    return _time_steps(teacher_step, reps), _time_steps(student_step, reps)


def bench_steps(dit: str, chunks_list: list[int], window: int, reps: int, grid: int) -> None:
    # dit_tiny pairs with the tiny audio encoder and VAE; larger DiTs with the paper-size ones (128 channels).
    audio = ["model/audio=log_mel_tiny"] if dit == "dit_tiny" else ["model/audio=log_mel", "model/vae=vae_rest"]
    teacher = _stage("tiny_teacher", dit, audio)
    print(f"device cpu, threads {torch.get_num_threads()}, float32, {dit}, latent grid {grid}x{grid}, batch 1, W={window}")
    print("| C chunks | teacher step (s) | student ASD step (s) | ratio | student / C (s) |")
    print("|---|---|---|---|---|")
    for chunks in chunks_list:
        student = _stage(
            "tiny_student", dit, audio + [f"stage.cache.window={window}", "stage.asd.future_chunks=0"]
        )
        t_teacher, t_student = _time_pair(teacher, student, chunks, reps, grid)
        print(f"| {chunks} | {t_teacher:.4f} | {t_student:.4f} | {t_student / t_teacher:.1f} | {t_student / chunks:.4f} |")


def memory_plan(gpus: list[int]) -> None:
    """Bytes of ``dit_rest`` ASD (student + EMA + frozen teacher [+ DMD critic]) from meta-device models."""
    from rest_lightning.streaming.cache import IDContextCache

    with torch.device("meta"):
        stage = _stage("student", "dit_rest", ["stage.vae_checkpoint=null"])
        cache = IDContextCache(stage.cache_config, _cache_shape(stage), torch.float32, "meta")
    trainable = sum(p.numel() for p in stage.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in stage.model.parameters())
    teacher = sum(p.numel() for p in stage.teacher.model.parameters())
    print(f"student parameters {total:,} (trainable {trainable:,}); teacher {teacher:,}")
    print(f"ID-Context Cache of one rollout (fp32, W={stage.cache_config.window}, 16x16 latents): "
          f"{cache.nbytes() / GIB:.2f} GiB")
    rows = {
        "student weights fp32 + grads fp32 + AdamW m, v (16 B/param)": 16 * trainable,
        "student EMA fp32 (4 B/param)": 4 * total,
        "frozen teacher bf16 (2 B/param; 0 on GPU with stage.teacher.offload)": 2 * teacher,
        "DMD critic, if on: as the student (16 B/param)": 16 * trainable,
    }
    print("| item | one GPU (GiB) | " + " | ".join(f"ZeRO-3/FSDP x{n} (GiB/GPU)" for n in gpus) + " |")
    print("|---|---|" + "---|" * len(gpus))
    for name, value in rows.items():
        sharded = [value / n if "teacher" not in name else value for n in gpus]  # the teacher is replicated
        print(f"| {name} | {value / GIB:.1f} | " + " | ".join(f"{v / GIB:.2f}" for v in sharded) + " |")


def _cache_shape(stage):
    from rest_lightning.streaming.rollout import cache_shape

    return cache_shape(stage.dit_config, 1, (16, 16), stage.chunk_frames)  # 512 px / 32: 16x16 tokens (DESIGN §3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dit", default="dit_tiny")
    parser.add_argument("--chunks", type=int, nargs="+", default=[3, 4, 6, 8])
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--grid", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-plan", action="store_true")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_plan:
        memory_plan(args.gpus)
        return
    bench_steps(args.dit, args.chunks, args.window, args.reps, args.grid)


if __name__ == "__main__":
    main()
