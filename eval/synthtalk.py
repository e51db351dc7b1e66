"""SynthTalk evaluation (issue 12): what each stage produces on held-out synthetic speakers, scored
against ground truth with the calibrated analytic metrics of ``rest_lightning.metrics.synthtalk``.

For every test speaker (from the test split of a synthetic corpus prepared by ``rest-prep``): the
reference image of one of its clips and ``stream_seconds`` of new speech in its voice. Every row turns
those into a video of the same length:

- ``ground truth``: the face rendered for that audio (``ClipTruth.frames_for_audio``), the ceiling;
- ``ground truth through the VAE (clips)``: that video encoded and decoded in independent clips of the
  training length (the VAE's ceiling on the teacher's clips), and ``(streamed)``: in one causal pass, as a
  stream decodes (the ceiling on the streamed rows);
- ``teacher (clips)``: the bidirectional teacher sampled non-streaming on independent clips of the
  training length (Euler, audio guidance), concatenated;
- any number of streamed rows: a teacher or student checkpoint streamed through the ID-Context Cache
  with the cache it was trained with (``rest_lightning.stored_models``).

Scores per speaker, then the mean over speakers with a bootstrap 95% interval: lip-sync r between the
mouth measured from pixels and the opening the audio implies (with the best offset in +-5 frames),
mouth-opening std and mean frame-to-frame change (a frozen video scores 0 on both), identity distance
to the reference (calibrated by same/different-speaker distances of the test clips), the drift rule over
10 s windows, and PSNR/SSIM against the ground truth where that is defined (the VAE and teacher rows).
Identity and drift alone reward a frozen copy of the reference; the table always shows them beside
lip-sync and motion.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rest_lightning.data.codecs import decode_mp4, decode_png, decode_wav
from rest_lightning.data.schema import AUDIO_KEY, META_KEY, REF_KEY, VIDEO_KEY, ClipRecord, MediaSpec
from rest_lightning.data.synthetic import synthesize_speech
from rest_lightning.data.synthtalk import ClipTruth
from rest_lightning.diffusion.guidance import GuidanceScales, guided_velocity
from rest_lightning.diffusion.samplers import EulerSampler
from rest_lightning.metrics.image_quality import PSNR, SSIM
from rest_lightning.metrics.synthtalk import (
    IdentityCalibration,
    clip_identity,
    drift,
    expected_mouth,
    frames_to_unit,
    identity_calibration,
    identity_distance,
    lip_sync,
    measure_mouth,
)
from rest_lightning.models.attention import AttentionPattern
from rest_lightning.models.vae import CausalVideoVAE
from rest_lightning.stored_models import StoredDenoiser, stream_config
from rest_lightning.streaming.generator import StreamingGenerator

log = logging.getLogger(__name__)

BOOTSTRAP_SAMPLES = 2000  # design choice: percentile interval resolution
CONFIDENCE = 0.95


@dataclass(frozen=True)
class SplitClip:
    """One test-split shard clip: uint8 ``video (T, H, W, 3)``, ``ref (H, W, 3)``, float ``audio (S,)``."""

    record: ClipRecord
    video: np.ndarray
    audio: np.ndarray
    ref: np.ndarray


def read_split(root: str | Path, split: str = "test") -> list[SplitClip]:
    """Every clip of ``{root}/{split}/*.tar`` in shard order."""
    paths = sorted(Path(root, split).glob("*.tar"))
    if not paths:
        raise FileNotFoundError(f"no shards in {Path(root, split)}: give the rest-prep output folder of a synthetic corpus")
    clips = []
    for path in paths:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for info in tar.getmembers():
                if info.isfile():
                    key, ext = info.name.split(".", 1)
                    members.setdefault(key, {})[ext] = tar.extractfile(info).read()  # type: ignore[union-attr]
        for sample in members.values():
            audio, _ = decode_wav(sample[AUDIO_KEY])
            clips.append(SplitClip(ClipRecord.from_json(sample[META_KEY]), decode_mp4(sample[VIDEO_KEY]),
                                  audio.astype(np.float32), decode_png(sample[REF_KEY])))
    return clips


@dataclass(frozen=True)
class Speaker:
    """A test speaker's inputs: its reference, ``seconds`` of new speech in its voice, and the ground truth
    video for that speech ``(T, H, W, 3)`` uint8."""

    name: str
    ref: np.ndarray
    audio: np.ndarray
    truth: np.ndarray


def held_out_speakers(clips: Sequence[SplitClip], seconds: float, seed: int, limit: int = 0) -> list[Speaker]:
    """One ``Speaker`` per speaker of ``clips`` (its first clip gives the reference and ground truth)."""
    first: dict[str, SplitClip] = {}
    for clip in clips:
        first.setdefault(clip.record.speaker, clip)
    speakers = []
    for index, (name, clip) in enumerate(sorted(first.items())):
        if limit and index >= limit:
            break
        truth = ClipTruth.from_record(clip.record)
        media = MediaSpec(fps=clip.record.fps, sample_rate=clip.record.sample_rate)
        rng = np.random.default_rng([seed, index])
        audio = synthesize_speech(seconds, media.sample_rate, truth.identity.base_f0, rng).astype(np.float32)
        speakers.append(Speaker(name, clip.ref, audio, truth.frames_for_audio(audio, clip.ref.shape[0])))
    return speakers


# --- rows: (speaker) -> video (T, 3, H, W) in [-1, 1] ----------------------------------------------------

Row = Callable[[Speaker], Tensor]


def _to_unit(frames: np.ndarray) -> Tensor:
    return frames_to_unit(frames)


def _ref_tensor(speaker: Speaker) -> Tensor:
    """``(1, 3, 1, H, W)`` in [-1, 1]."""
    return _to_unit(speaker.ref[None]).permute(1, 0, 2, 3)[None]


def truth_row(speaker: Speaker) -> Tensor:
    return _to_unit(speaker.truth)


def vae_row(vae: CausalVideoVAE, clip_latents: int | None = None) -> Row:
    """The ground truth encoded and decoded: in one causal pass over the whole video (``clip_latents=None``:
    what a stream's chunk-by-chunk decode gives, ``CausalVideoVAE.decode_step`` being that pass cut in
    pieces), or in independent clips of ``1 + 8 clip_latents`` frames, the training length, as the teacher's
    clips are decoded. The two differ: a VAE trained on short clips leans on each clip's first frame, and
    frames far from any clip start come out blurred (docs/synthtalk.md)."""
    step = vae.config.temporal_compression

    @torch.no_grad()
    def codec(video: Tensor) -> Tensor:
        return vae.decode(vae.encode(video.permute(1, 0, 2, 3)[None])).clamp(-1, 1)[0].permute(1, 0, 2, 3)

    @torch.no_grad()
    def row(speaker: Speaker) -> Tensor:
        frames = _to_unit(speaker.truth)
        if clip_latents is None:
            return codec(frames[: 1 + (frames.shape[0] - 1) // step * step])
        clip_frames = 1 + clip_latents * step
        count = frames.shape[0] // clip_frames
        return torch.cat([codec(frames[i * clip_frames : (i + 1) * clip_frames]) for i in range(count)])

    return row


def teacher_clips_row(teacher: StoredDenoiser, vae: CausalVideoVAE, clip_latents: int, steps: int,
                      audio_guidance: float, seed: int, seconds: float = 0.0) -> Row:
    """The teacher sampled on independent clips of ``1 + 8 clip_latents`` frames (``data.cfg.latent_frames``'s
    convention: the training clip length), concatenated, over the first ``seconds`` of the speech (0: all of
    it). Independent clips cannot drift, so a shorter span costs nothing in what the row measures."""
    scales = GuidanceScales(audio=audio_guidance, ref=1.0)
    pattern = AttentionPattern.bidirectional()

    @torch.no_grad()
    def row(speaker: Speaker) -> Tensor:
        spf = teacher.audio.config.samples_per_video_frame
        latent_frames = 1 + clip_latents
        clip_frames = 1 + clip_latents * vae.config.temporal_compression
        frames = len(speaker.audio) // spf
        if seconds:
            frames = min(frames, round(seconds * teacher.audio.config.fps))
        count = frames // clip_frames
        audio = torch.from_numpy(speaker.audio[: count * clip_frames * spf]).view(count, clip_frames * spf)
        tokens = teacher.audio(audio, latent_frames)
        ref = vae.encode(_ref_tensor(speaker)).expand(count, -1, -1, -1, -1)
        grid = ref.shape[3:]
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((count, teacher.dit.config.latent_channels, latent_frames, *grid), generator=generator)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            def conditional(drop_audio: bool, drop_ref: bool) -> Tensor:
                flags = [torch.full((count,), f, dtype=torch.bool) for f in (drop_audio, drop_ref)]
                return teacher.dit(x, t, tokens, ref, pattern, *flags)

            return guided_velocity(conditional, scales)

        latents = EulerSampler(steps).sample(denoise, noise)
        video = vae.decode(latents).clamp(-1, 1)  # (count, 3, clip_frames, H, W)
        return video.permute(0, 2, 1, 3, 4).flatten(0, 1)

    return row


def stream_row(model: StoredDenoiser, vae: CausalVideoVAE, seed: int, **overrides) -> Row:
    """``model`` streamed chunk by chunk through the ID-Context Cache it was trained with."""
    config = stream_config(model, seed=seed, **overrides)

    def row(speaker: Speaker) -> Tensor:
        generator = StreamingGenerator(model.dit, vae, model.audio, config, device="cpu", dtype=torch.float32)
        chunks = generator.generate(_ref_tensor(speaker), [torch.from_numpy(speaker.audio)])
        return torch.cat([c.frames for c in chunks], dim=2)[0].permute(1, 0, 2, 3)

    return row


# --- scores ------------------------------------------------------------------------------------------------


@dataclass
class SpeakerScores:
    """One row's scores for one speaker (NaN where a score is not defined)."""

    sync_r: float
    sync_offset: int
    mouth_std: float
    motion: float
    identity: float
    drift_first: float
    drift_last: float
    drift_holds: bool
    psnr: float = float("nan")
    ssim: float = float("nan")
    mouth: np.ndarray = field(default_factory=lambda: np.zeros(0))


def score(video: Tensor, speaker: Speaker, calibration: IdentityCalibration, with_truth: bool) -> SpeakerScores:
    """Scores of one generated ``video (T, 3, H, W)`` in [-1, 1] for ``speaker``."""
    measured = measure_mouth(video)
    expected = expected_mouth([speaker.audio])[0]
    sync = lip_sync([measured], [expected])
    ref = _to_unit(speaker.ref[None])[0]
    result = drift(video, ref, calibration.percentile("different", 50))
    scores = SpeakerScores(
        sync_r=sync.r,
        sync_offset=sync.offset,
        mouth_std=float(measured.std()),
        motion=float((video[1:] - video[:-1]).abs().mean() * 127.5),  # grey levels per frame
        identity=identity_distance(clip_identity(video), clip_identity(ref[None])),
        drift_first=float(result.distances[0]),
        drift_last=float(result.distances[-1]),
        drift_holds=result.holds,
        mouth=measured.numpy(),
    )
    if with_truth:
        truth = truth_row(speaker)[: video.shape[0]]
        video = video[: truth.shape[0]]
        psnr, ssim = PSNR(), SSIM(variant="torchmetrics_padded")  # synthtalk_v1's SSIM (padded borders)
        psnr.update(video, truth)
        ssim.update(video, truth)
        scores.psnr, scores.ssim = float(psnr.compute()), float(ssim.compute())
    return scores


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float

    def text(self, digits: int = 2) -> str:
        if np.isnan(self.mean):
            return "-"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap(values: Sequence[float], seed: int = 0) -> Estimate:
    """Mean of ``values`` (one per speaker) with a percentile bootstrap interval over speakers."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0 or np.isnan(data).all():
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, (BOOTSTRAP_SAMPLES, data.size))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    return Estimate(float(data.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)))


COLUMNS = (  # (key, header, digits)
    ("sync_r", "lip-sync r", 2),
    ("sync_offset", "offset", 1),
    ("mouth_std", "mouth std", 3),
    ("motion", "motion", 2),
    ("identity", "identity dist", 3),
    ("drift_last", "identity, last 10 s", 3),
    ("drift_holds", "drift rule holds", 2),
    ("psnr", "PSNR dB", 1),
    ("ssim", "SSIM", 3),
)


def score_table(scores: dict[str, list[SpeakerScores]]) -> dict[str, list[dict[str, float]]]:
    """Per row, one ``{column: value}`` per speaker (what ``scores.json`` holds)."""
    return {row: [{k: float(getattr(s, k)) for k, _, _ in COLUMNS} for s in values] for row, values in scores.items()}


def summarise(scores: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Estimate]]:
    """Per row and column: mean over speakers (over seeds too, when lists are pooled) with its interval."""
    return {
        row: {key: bootstrap([float(s[key]) for s in per_speaker]) for key, _, _ in COLUMNS}
        for row, per_speaker in scores.items()
    }


def pool_seeds(per_seed: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, list[dict[str, float]]]:
    """Every seed's per-speaker scores of a row in one list (rows missing from a seed are refused)."""
    rows = list(next(iter(per_seed.values())))
    for seed, table in per_seed.items():
        if list(table) != rows:
            raise ValueError(f"seed {seed} has rows {list(table)}, expected {rows}")
    return {row: [s for table in per_seed.values() for s in table[row]] for row in rows}


def seed_table_markdown(per_seed: dict[str, dict[str, list[dict[str, float]]]], key: str = "sync_r") -> str:
    """One column per seed (the mean over its speakers), then the mean and standard deviation over seeds."""
    header = dict((k, h) for k, h, _ in COLUMNS)[key]
    seeds = list(per_seed)
    lines = [f"| row | {' | '.join(seeds)} | mean over seeds | std over seeds |",
             "|" + "---|" * (len(seeds) + 3)]
    for row in next(iter(per_seed.values())):
        means = np.array([np.mean([s[key] for s in per_seed[seed][row]]) for seed in seeds])
        cells = " | ".join(f"{m:.2f}" for m in means)
        lines.append(f"| {row} | {cells} | {means.mean():.2f} | {means.std(ddof=1) if len(seeds) > 1 else 0:.2f} |")
    return f"{header} per seed (mean over test speakers):\n\n" + "\n".join(lines) + "\n"


def pool_runs(runs: dict[str, Path], out: Path) -> Path:
    """``out/table.md`` pooled over training seeds: ``runs`` maps a label (``seed 0``) to the folder one
    ``rest-eval protocol=synthtalk_v1`` wrote for that seed's models (its ``scores.json`` and ``results.json``);
    every run must score the same rows on the same test speakers. Then lip-sync r seed by seed."""
    per_seed, speakers, calibration = {}, None, None
    for label, folder in runs.items():
        scores = json.loads((Path(folder) / "scores.json").read_text())
        if speakers is not None and scores["speakers"] != speakers:
            raise ValueError(f"{folder}: its test speakers differ from {next(iter(runs.values()))}'s")
        speakers, per_seed[label] = scores["speakers"], scores["rows"]
        calibration = calibration or json.loads((Path(folder) / "results.json").read_text())["identity_calibration"]
    note = (f"Pooled over {len(runs)} training seeds ({', '.join(runs)}; all stages retrained per seed) and "
            f"{len(speakers)} held-out test speakers; intervals resample (seed, speaker) pairs.")
    out.mkdir(parents=True, exist_ok=True)
    table = table_markdown(summarise(pool_seeds(per_seed)), calibration, note)
    (out / "table.md").write_text(table + "\n" + seed_table_markdown(per_seed))
    return out / "table.md"


def table_markdown(summary: dict[str, dict[str, Estimate]], calibration: dict[str, float], note: str) -> str:
    header = "| row | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for row, estimates in summary.items():
        lines.append(f"| {row} | " + " | ".join(estimates[k].text(d) for k, _, d in COLUMNS) + " |")
    calib = ", ".join(f"{k} {v:.3f}" for k, v in calibration.items())
    return (
        "\n".join(lines)
        + f"\n\nMeans over test speakers with bootstrap {CONFIDENCE:.0%} intervals. {note}\n"
        + f"Identity distance calibration (test clips vs references): {calib}. "
        + "motion = mean |frame(t+1) - frame(t)| in grey levels (0 = frozen).\n"
    )


def calibrate(clips: Sequence[SplitClip]) -> IdentityCalibration:
    return identity_calibration(
        [_to_unit(c.video) for c in clips], [c.record.speaker for c in clips], [_to_unit(c.ref[None])[0] for c in clips]
    )


def evaluate(rows: dict[str, Row], speakers: Sequence[Speaker], calibration: IdentityCalibration,
             truth_rows: Sequence[str] = ()) -> tuple[dict[str, list[SpeakerScores]], dict[str, list[Tensor]]]:
    """Run every row on every speaker; returns the scores and the videos (for media)."""
    scores: dict[str, list[SpeakerScores]] = {name: [] for name in rows}
    videos: dict[str, list[Tensor]] = {name: [] for name in rows}
    for name, row in rows.items():
        for speaker in speakers:
            video = row(speaker)
            scores[name].append(score(video, speaker, calibration, name in truth_rows))
            videos[name].append(video)
        log.info("synthtalk: %s: lip-sync r %.2f over %d speakers", name,
                 np.mean([s.sync_r for s in scores[name]]), len(speakers))
    return scores, videos


def write_results(out: Path, summary: dict[str, dict[str, Estimate]], calibration: dict[str, float],
                  meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "rows": {row: {k: vars(e) for k, e in est.items()} for row, est in summary.items()},
        "identity_calibration": calibration,
        **meta,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")


def write_mouth_plot(path: Path, speaker: Speaker, scores: dict[str, SpeakerScores], seconds: float, fps: int) -> None:
    """Mouth opening over the first ``seconds``: the opening the audio implies and each row's measured one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(seconds * fps)
    expected = expected_mouth([speaker.audio])[0].numpy()[:n]
    fig, axis = plt.subplots(figsize=(11, 3.6), dpi=110)
    time = np.arange(len(expected)) / fps
    axis.plot(time, expected, color="black", linewidth=2.2, label="opening the audio implies")
    for name, s in scores.items():
        m = s.mouth[:n]
        axis.plot(np.arange(len(m)) / fps, m, linewidth=1.2, label=f"{name} (r={s.sync_r:.2f})")
    axis.set_xlabel("seconds")
    axis.set_ylabel("mouth opening")
    axis.set_title(f"speaker {speaker.name}: mouth opening measured from pixels vs audio")
    axis.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_side_by_side(path: Path, videos: Sequence[Tensor], audio: np.ndarray, fps: int, sample_rate: int,
                       scale: int = 4) -> None:
    """Videos ``(T, 3, H, W)`` side by side, upscaled ``scale``x, with the audio; as long as the longest, a
    shorter one (the teacher's clips cover ``teacher_seconds``) grey after its end."""
    from rest_lightning.data.codecs import encode_mp4

    n = max(v.shape[0] for v in videos)
    frames = torch.cat([torch.nn.functional.pad(v, (0, 0, 0, 0, 0, 0, 0, n - v.shape[0])) for v in videos], dim=-1)
    # to uint8 first, then the nearest-neighbour upscale as a repeat: 16x fewer float pixels to convert
    uint8 = ((frames.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)  # (T, H, W', 3)
    uint8 = uint8.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2).numpy()
    spf = sample_rate // fps
    path.write_bytes(encode_mp4(uint8, fps, audio=audio[: n * spf], sample_rate=sample_rate))


# --- rest-eval protocol=synthtalk_v1 ------------------------------------------------------------------------

PROTOCOL = "synthtalk_v1"


@dataclass(frozen=True)
class SynthTalkSettings:
    """``synthtalk.*`` of ``conf/eval.yaml`` (the protocol's fixed choices are module constants)."""

    stream_seconds: float = 60.0  # issue 12: drift over a 60 s stream, per 10 s window
    seed: int = 0  # the test speech and every sampler's noise
    teacher_steps: int = 20  # Euler steps of the non-streaming teacher rows
    audio_guidance: float = 3.5  # the teacher stage's validation guidance
    latent_frames: int = 2  # teacher clips of 1 + 8 x latent_frames frames (data.cfg.latent_frames: training length)
    teacher_seconds: float = 20.0  # the teacher's clips cover this much of the speech (0: all); independent clips
                                   # cannot drift, and at 48 px the whole 60 s took 8 of the evaluation's 14 min
    plot_seconds: float = 10.0  # the mouth plot's span
    side_by_side: bool = True  # side_by_side.mp4 of the first test speaker: every row, with the audio


def run(cfg: Any) -> dict[str, dict[str, Estimate]]:
    """``rest-eval testset=SHARDS protocol=synthtalk_v1 vae_ckpt=VAE.ckpt ckpts={teacher:T.ckpt,student:S.ckpt}``:
    every row on every test speaker; writes ``results.json``, ``table.md``, ``scores.json``, ``mouth.png``
    and ``side_by_side.mp4`` into ``out`` and returns the summary."""
    from rest_lightning.stored_models import load_denoiser, load_vae

    settings = SynthTalkSettings(**dict(cfg.synthtalk or {}))
    if not cfg.testset:
        raise ValueError("protocol=synthtalk_v1 needs testset=FOLDER (the rest-prep output of a synthetic corpus)")
    if not cfg.vae_ckpt:
        raise ValueError("protocol=synthtalk_v1 needs vae_ckpt=VAE.ckpt (every row decodes through it)")
    clips = read_split(cfg.testset, cfg.testset_split)
    if not all(c.record.gt for c in clips):
        raise ValueError(f"{cfg.testset}/{cfg.testset_split} holds clips without ground truth: SynthTalk needs a "
                         "synthetic corpus (rest-prep mode=synth, then rest-prep)")
    calibration = calibrate(clips)
    speakers = held_out_speakers(clips, settings.stream_seconds, settings.seed, limit=cfg.max_items or 0)
    vae = load_vae(cfg.vae_ckpt)
    rows: dict[str, Row] = {
        "ground truth": truth_row,
        "ground truth through the VAE (clips)": vae_row(vae, settings.latent_frames),
        "ground truth through the VAE (streamed)": vae_row(vae),
    }
    truth_rows = list(rows)
    for name, path in (cfg.ckpts or {}).items():
        model = load_denoiser(path, key=f"ckpts.{name}")
        if model.stage == "teacher":
            rows[f"{name} (clips)"] = teacher_clips_row(model, vae, settings.latent_frames, settings.teacher_steps,
                                                         settings.audio_guidance, settings.seed,
                                                         settings.teacher_seconds)
            truth_rows.append(f"{name} (clips)")
        else:
            rows[f"{name} (streamed)"] = stream_row(model, vae, settings.seed)
    scores, videos = evaluate(rows, speakers, calibration, truth_rows)
    per_speaker = score_table(scores)
    summary = summarise(per_speaker)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    note = (f"{len(speakers)} held-out test speakers, {settings.stream_seconds:.0f} s of new speech each; "
            f"PSNR/SSIM only where the ground truth is defined; protocol {PROTOCOL}.")
    (out / "table.md").write_text(table_markdown(summary, calibration.summary(), note))
    write_results(out, summary, calibration.summary(), {
        "protocol": PROTOCOL, "settings": vars(settings), "speakers": [s.name for s in speakers],
        "ckpts": dict(cfg.ckpts or {}), "vae_ckpt": str(cfg.vae_ckpt), "testset": str(cfg.testset),
    })
    (out / "scores.json").write_text(json.dumps({"speakers": [s.name for s in speakers], "rows": per_speaker},
                                                indent=1, default=float) + "\n")
    first = speakers[0]
    write_mouth_plot(out / "mouth.png", first, {row: values[0] for row, values in scores.items()},
                     settings.plot_seconds, clips[0].record.fps)
    if settings.side_by_side:
        write_side_by_side(out / "side_by_side.mp4", [v[0] for v in videos.values()], first.audio,
                           clips[0].record.fps, clips[0].record.sample_rate)
    log.info("synthtalk: wrote %s", out)
    return summary
