"""The ASD student stage (issue 7, DESIGN §4.3) on the tiny config: init from a teacher checkpoint, the
teacher's window (levels, past = the student's own outputs), no gradient into the teacher, the one-chunk
identity, optimisation on one clip, rank-0 exit steps, end-to-end training + streaming validation and the
three ablation configs."""

from __future__ import annotations

import json

import av
import pytest
import torch
from omegaconf import OmegaConf

from rest_lightning import __version__
from rest_lightning.checkpoint import META_KEY, load_user_state
from rest_lightning.conditioning import ClipConditions
from rest_lightning.config import compose, conf_dir
from rest_lightning.diffusion.asd import ode_regression_inputs, ode_trajectory
from rest_lightning.diffusion.flow import x0_from_velocity
from rest_lightning.diffusion.guidance import GuidanceScales
from rest_lightning.distillation import StepChoices, rollout_seed
from rest_lightning.export import export_checkpoint
from rest_lightning.models.dit import DiT
from rest_lightning.stages.student import StudentStage, student_from_teacher_state
from rest_lightning.stored_models import StoredModelError, denoiser_from_state, stream_config
from rest_lightning.training import instantiate_node, train

TINY = ["experiment=tiny_student", "data.cfg.root=unused"]
CHANNELS, GRID = 8, (4, 4)  # vae_tiny latents on 32x32 clips
LEVELS = (1.0, 0.75, 0.5, 0.25)  # conf/stage/student.yaml sampler
ABLATIONS = ("student_no_sink", "student_no_context", "student_no_asd")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_stage(*overrides: str) -> StudentStage:
    torch.manual_seed(0)
    return instantiate_node(compose("train", [*TINY, *overrides]).stage, "stage")


def conditions(stage: StudentStage, batch: int, chunks: int, seed: int = 0) -> ClipConditions:
    generator = torch.Generator().manual_seed(seed)
    waveform = torch.randn(batch, (1 + 8 * (chunks - 1)) * 640, generator=generator) * 0.1
    return ClipConditions(
        latents=torch.randn(batch, CHANNELS, chunks, *GRID, generator=generator),
        ref=torch.randn(batch, CHANNELS, 1, *GRID, generator=generator),
        audio=stage.model.audio_encoder(waveform, chunks),
        waveform=waveform,
    )


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """A teacher-stage checkpoint in the real format (Lightning ``state_dict`` + ``rest`` metadata), its
    EMA deliberately different from its raw weights so the key map is visible."""
    torch.manual_seed(1)
    teacher = instantiate_node(compose("train", ["experiment=tiny_teacher", "data.cfg.root=unused"]).stage, "stage")
    with torch.no_grad():
        for p in teacher.ema.module.parameters():
            p.add_(0.01)
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    meta = {"stage": "teacher", "config": teacher.identity_config(), "version": __version__}
    torch.save({"state_dict": teacher.state_dict(), META_KEY: meta}, path)
    return path, teacher


# --- initialisation from the teacher -------------------------------------------------------------


def test_init_from_teacher_takes_its_ema_weights_into_model_and_ema(teacher_checkpoint):
    path, teacher = teacher_checkpoint
    stage = tiny_stage(f"stage.teacher_checkpoint={path}")
    stage.load_init_from(path)
    expected = teacher.ema.module.state_dict()
    for module in (stage.model, stage.ema.module, stage.teacher.model):
        state = module.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected), "teacher ema.module.* everywhere"


def test_the_teacher_is_frozen_outside_the_module_tree_and_gets_no_gradient(teacher_checkpoint):
    path, _ = teacher_checkpoint
    stage = tiny_stage(f"stage.teacher_checkpoint={path}")
    stage.load_init_from(path)
    teacher_params = set(map(id, stage.teacher.model.parameters()))
    assert not teacher_params & set(map(id, stage.parameters())), "the teacher is not a submodule"
    assert all(k.startswith(("model.", "ema.module.")) for k in stage.state_dict()), "not saved with the student"
    cond = conditions(stage, 2, 3)
    out = stage.objective().asd_loss(stage.model, cond, torch.Generator().manual_seed(0), StepChoices(2, (False, False)))
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in stage.teacher.model.parameters())
    assert not stage.teacher.model.training
    grads = [p.grad for p in stage.model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every trainable student parameter gets a gradient (DDP)"
    assert any(g.abs().sum() > 0 for g in grads)


# --- the ASD step -------------------------------------------------------------------------------------


def _spy(monkeypatch, module, name: str) -> list[tuple]:
    calls: list[tuple] = []
    original = getattr(module, name)

    def spy(latents, timesteps, *args, **kwargs):
        out = original(latents, timesteps, *args, **kwargs)
        velocity = out.velocity if hasattr(out, "velocity") else out
        calls.append((latents.detach().clone(), timesteps.detach().clone(), velocity.detach().clone()))
        return out

    monkeypatch.setattr(module, name, spy)
    return calls



@pytest.mark.parametrize(("exit_step", "use_context_cache", "dtype"),
                         [(3, True, torch.float32), (1, True, torch.float32), (2, False, torch.float32),
                          (3, True, torch.float64)])
def test_the_training_rollout_is_the_stream(exit_step, use_context_cache, dtype):
    """The student trains as it streams (DESIGN §4.3; issue 13): with the rollout's seed as the stream's seed,
    ASD's context chunks are the ``StreamingGenerator``'s latents, and the current chunk's input at the exit
    step is the stream's input at that sampler step. The two paths batch their attention differently, so fp32
    agrees to rounding (1e-6); fp64 shows that the gap is rounding, not a difference in the maths (1e-12)."""
    from rest_lightning.streaming import DenoiseStep, StreamConfig, StreamingGenerator

    stage = tiny_stage(f"stage.cache.use_context_cache={use_context_cache}").to(dtype)
    atol = 1e-6 if dtype == torch.float32 else 1e-12
    seed = rollout_seed(torch.Generator().manual_seed(7))
    config = StreamConfig(window=stage.cache_config.window, chunk_frames=stage.chunk_frames, timesteps=LEVELS,
                          use_context_cache=use_context_cache, audio_guidance=1.0, seed=seed)
    stream = StreamingGenerator(stage.model.dit, stage.frozen_vae.vae, stage.model.audio_encoder, config)
    ref = (torch.rand(1, 3, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(dtype)
    waveform = (torch.randn(1, 17 * 640, generator=torch.Generator().manual_seed(2)) * 0.1).to(dtype)  # 3 chunks
    steps: list[DenoiseStep] = []
    chunks = list(stream.generate(ref, [waveform], trace=steps.append))
    assert len(chunks) == 3
    with torch.no_grad():
        ref_latent = stage.frozen_vae.vae.encode(ref)
    cond = ClipConditions(latents=torch.zeros(1, CHANNELS, 3, *GRID, dtype=dtype), ref=ref_latent,
                          audio=torch.cat([c.audio_tokens for c in chunks], dim=1), waveform=waveform)
    out = stage.objective().asd_loss(stage.model, cond, torch.Generator().manual_seed(7), StepChoices(exit_step, (False, False)))
    assert out.x_t.dtype == chunks[0].latent.dtype == dtype
    for c in range(2):
        torch.testing.assert_close(out.outputs[:, :, c : c + 1], chunks[c].latent, rtol=0, atol=atol)
    [at_exit] = [s for s in steps if s.chunk == 2 and s.step == exit_step]
    torch.testing.assert_close(out.x_t, at_exit.latents, rtol=0, atol=atol)
    assert at_exit.num_context_chunks == (1 if use_context_cache else 0)


@pytest.mark.parametrize("context_time", [0.0, 0.1])
def test_teacher_sees_the_schedule_levels_and_exactly_the_students_own_outputs(monkeypatch, context_time):
    # W = 1, four chunks: chunks 0, 1 rolled out, chunk 2 current (exit step 2, t = 0.5), chunk 3 future.
    stage = tiny_stage(
        "stage.asd.future_chunks=1", f"stage.asd.teacher_context_time={context_time}", "stage.asd.trajectory_steps=3"
    )
    student_calls = _spy(monkeypatch, stage.model.dit, "forward_chunk")
    teacher_calls = _spy(monkeypatch, stage.teacher.model.dit, "forward")
    cond = conditions(stage, 2, 4)
    exit_step, steps, t = 2, 3, LEVELS[2]
    out = stage.objective().asd_loss(stage.model, cond, torch.Generator().manual_seed(0), StepChoices(exit_step, (False, False)))

    # The student's calls: per context chunk 4 sampler steps then the clean pass at t = 0; then the
    # current chunk's steps up to and including the exit step.
    assert [round(c[1][0, 0].item(), 4) for c in student_calls] == [*LEVELS, 0.0] * 2 + list(LEVELS[: exit_step + 1])
    outputs = []
    for c in range(2):
        last = student_calls[5 * c + 3]  # the t = 0.25 step: its x0 estimate is the chunk's output
        produced = x0_from_velocity(last[0], last[2], last[1])
        torch.testing.assert_close(student_calls[5 * c + 4][0], produced, rtol=0, atol=0)  # cache written from it
        outputs.append(produced)
    x_t = student_calls[-1][0]

    guided_calls = 2  # audio guidance 3.5: conditional + audio-dropped per evaluation
    assert len(teacher_calls) == steps * guided_calls
    for i, (latents, times, _) in enumerate(teacher_calls):
        level = t * (1 - (i // guided_calls) / steps)  # trajectory: the current chunk from t towards 0
        torch.testing.assert_close(times, torch.tensor([[context_time] * 2 + [level] + [min(1.0, t + 0.25)]] * 2))
        if context_time == 0.0:
            torch.testing.assert_close(latents[:, :, :2], torch.cat(outputs, dim=2), rtol=0, atol=0)
        if i < guided_calls:
            torch.testing.assert_close(latents[:, :, 2:3], x_t, rtol=0, atol=0)
    if context_time > 0:
        expected = out.window.latents[:, :, :2]
        noise = (expected - (1 - context_time) * torch.cat(outputs, dim=2)) / context_time
        assert noise.std().item() == pytest.approx(1.0, abs=0.2), "the past is the outputs + context noise"
    torch.testing.assert_close(out.outputs, torch.cat(outputs, dim=2), rtol=0, atol=0)


def test_one_chunk_student_equal_to_teacher_without_guidance_has_zero_velocity_loss():
    stage = tiny_stage("stage.asd.target=velocity", "stage.asd.future_chunks=0")
    student_from_teacher_state(stage, stage.teacher.model)
    stage.teacher.config.guidance = GuidanceScales(audio=1.0, ref=1.0)
    cond = conditions(stage, 2, 1)
    for exit_step in range(len(LEVELS)):
        out = stage.objective().asd_loss(stage.model, cond, torch.Generator().manual_seed(exit_step), StepChoices(exit_step, ()))
        assert out.loss.item() < 1e-10, (exit_step, out.loss.item())  # measured ~1e-14 (float32)


def test_asd_loss_on_one_clip_falls_below_every_untrained_noise_draw():
    """A fixed objective (the same clip, noise and exit step every step): Adam must reduce it. The yardstick is
    measured here: what the untrained student scores on this clip over 6 noise draws, which varies widely
    (0.05-0.8: the exit level and the noise decide how hard a draw is). 30 steps must bring the trained draw
    below the easiest untrained draw, and by an order of magnitude below its own start."""
    stage = tiny_stage()

    def loss_on(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return stage.objective().asd_loss(stage.model, conditions(stage, 1, 3), generator, stage.objective().step_choices(2, 0, generator)).loss

    with torch.no_grad():
        draws = torch.tensor([loss_on(seed).item() for seed in range(1, 7)])
    params = [p for p in stage.model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(30):
        loss = loss_on(1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < draws.min().item(), (losses[-1], draws.tolist())
    assert losses[-1] < losses[0] / 10, losses


def test_clips_shorter_than_the_window_plus_two_are_refused():
    stage = tiny_stage("stage.cache.window=2")
    with pytest.raises(ValueError, match=r"C >= W \+ 2 \+ future_chunks = 4 \(W=2\).*data.cfg.latent_frames"):
        stage.objective().check_clip_length(3)
    assert tiny_stage().objective().check_clip_length(3) == 3


# --- end to end through train() ------------------------------------------------------------------------


def _train(tmp_path, tiny_shards, teacher_path, *overrides: str, experiment: str = "tiny_student"):
    cfg = compose(
        "train",
        [
            f"experiment={experiment}",
            f"data.cfg.root={tiny_shards}",
            f"run_dir={tmp_path}",
            f"init_from={teacher_path}",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "checkpoint.every_n_steps=2",
            "trainer.log_every_n_steps=1",
            "stage.optim.warmup_steps=1",
            "stage.validation.stream_chunks=4",
            *overrides,
        ],
    )
    return cfg, train(cfg)


def _check_stream_outputs(run_dir, chunks: int) -> dict:
    videos = sorted((run_dir / "media").glob("stream_step*.mp4"))
    assert videos, "validation streams a clip into <run_dir>/media"
    with av.open(str(videos[0])) as container:
        assert container.streams.audio, "the streamed video carries its audio"
        frames = sum(1 for _ in container.decode(container.streams.video[0]))
    assert frames == 1 + 8 * (chunks - 1), "chunk 0 gives one frame, every later chunk 8 (causal VAE)"
    (drift,) = sorted((run_dir / "media").glob("drift_step*.json"))
    curves = json.loads(drift.read_text())["curves"]
    assert set(curves) == {"latent_mean", "latent_std", "lpips_ref", "id_cos"}
    assert all(len(per_clip[0]) == chunks for per_clip in curves.values()), "one point per streamed chunk"
    return curves


def test_tiny_student_distils_from_a_teacher_checkpoint_and_streams(tmp_path, tiny_shards, teacher_checkpoint):
    path, _ = teacher_checkpoint
    _, result = _train(tmp_path, tiny_shards, path)
    last = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and last[META_KEY]["stage"] == "student"
    assert {k.split(".")[0] for k in last["state_dict"]} == {"model", "ema"}, "no teacher, no VAE"
    assert len(last["optimizer_states"]) == 1, "one optimizer: every strategy (DeepSpeed too) accepts it"
    header = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "train/asd_loss", "val/asd_loss", "val/stream_lpips_ref_last", "val/stream_id_cos_last"):
        assert key in header, key
    _check_stream_outputs(result.run_dir, chunks=4)
    # The checkpoint decides the sampler: its levels are stored, streamed with, and a contradiction is refused.
    assert last[META_KEY]["sampler_timesteps"] == list(LEVELS)
    state, meta = last["state_dict"], last[META_KEY]
    stored = denoiser_from_state(state, meta, "last.ckpt")
    assert stored.timesteps == LEVELS and stream_config(stored).timesteps == LEVELS
    with pytest.raises(StoredModelError, match=r"stream.timesteps=\[1.0, 0.5\] contradicts the levels"):
        stream_config(stored, timesteps=[1.0, 0.5])
    two_levels = denoiser_from_state(state, {**meta, "sampler_timesteps": [1.0, 0.5]}, "edited")
    assert stream_config(two_levels).timesteps == (1.0, 0.5)
    exported = export_checkpoint(result.run_dir / "checkpoints" / "last.ckpt", tmp_path / "student.safetensors")
    assert exported.sampler_timesteps == list(LEVELS)  # rest-ckpt export keeps them
    assert denoiser_from_state(*load_user_state(tmp_path / "student.safetensors"), "export").timesteps == LEVELS


def _ablation_overrides(experiment: str) -> list[str]:
    """The ablation file's own ``stage`` deltas, applied to the tiny student: one truth for the ablation."""
    node = OmegaConf.load(conf_dir() / "experiment" / f"{experiment}.yaml")
    flat = {}

    def walk(prefix: str, value) -> None:
        if OmegaConf.is_dict(value):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)
        else:
            flat[prefix] = value

    walk("stage", node.stage)
    flat.pop("stage.optim.lr", None)  # the tiny run keeps its toy learning rate
    return [f"{k}={v}" for k, v in flat.items()]


@pytest.mark.parametrize("experiment", ABLATIONS)
def test_each_ablation_config_trains_and_streams(experiment, tmp_path, tiny_shards, teacher_checkpoint, monkeypatch):
    path, _ = teacher_checkpoint
    overrides = _ablation_overrides(experiment)
    assert overrides, f"{experiment} changes the stage"
    patterns, sink_encodes = [], []
    original_forward, original_sink = DiT.forward, DiT.encode_id_sink

    def forward(self, latents, timesteps, audio, ref, pattern, *args):
        patterns.append((pattern, ref is not None))
        return original_forward(self, latents, timesteps, audio, ref, pattern, *args)

    def encode_id_sink(self, *args):
        sink_encodes.append(1)
        return original_sink(self, *args)

    monkeypatch.setattr(DiT, "forward", forward)
    monkeypatch.setattr(DiT, "encode_id_sink", encode_id_sink)
    cfg, result = _train(tmp_path, tiny_shards, path, *overrides)
    assert (result.run_dir / "checkpoints" / "last.ckpt").exists()
    _check_stream_outputs(result.run_dir, chunks=4)
    stage = instantiate_node(cfg.stage, "stage")
    student_forwards = [(p, has_ref) for p, has_ref in patterns if p.kind == "block_causal"]
    if experiment == "student_no_asd":
        assert stage.teacher is None, "teacher-forced: no teacher loaded"
        assert student_forwards and all(p.window == 1 and has_ref for p, has_ref in student_forwards)
        assert all(p.kind == "block_causal" for p, _ in patterns), "no bidirectional (teacher) forward at all"
    if experiment == "student_no_context":
        assert stage.pattern.window == 0 and not stage.stream_config().use_context_cache
        assert sink_encodes, "the ID-Sink is kept"
    if experiment == "student_no_sink":
        assert not stage.stream_config().use_id_sink
        assert not sink_encodes, "neither training nor streaming computes an ID-Sink"


def test_student_experiments_compose_with_the_validator_and_name_their_teacher():
    cfg = compose("train", ["experiment=student", "data.cfg.root=x", "init_from=/t.ckpt"])
    assert cfg.stage.teacher_checkpoint == "/t.ckpt", "the teacher defaults to init_from"
    assert cfg.data.cfg.latent_frames + 1 >= cfg.stage.cache.window + 2 + cfg.stage.asd.future_chunks


# --- ODE-init --------------------------------------------------------------------------------------------


def test_ode_trajectory_is_exact_on_a_straight_flow_and_chunks_pick_their_level():
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, CHANNELS, 3, *GRID, generator=generator), torch.randn(2, CHANNELS, 3, *GRID, generator=generator)
    trajectory = ode_trajectory(lambda x, t: noise - x0, noise, LEVELS, steps_per_level=3)  # a perfect teacher
    assert trajectory.shape == (len(LEVELS) + 1, *x0.shape)
    for state, level in zip(trajectory, [*LEVELS, 0.0], strict=True):
        torch.testing.assert_close(state, (1 - level) * x0 + level * noise)
    index = torch.tensor([[0, 3, 1], [2, 2, 0]])
    picked = ode_regression_inputs(trajectory, index, chunk_frames=1)
    for b in range(2):
        for c in range(3):
            torch.testing.assert_close(picked[b, :, c], trajectory[index[b, c], b, :, c], rtol=0, atol=0)


def test_tiny_student_ode_init_trains_and_streams(tmp_path, tiny_shards, teacher_checkpoint):
    path, _ = teacher_checkpoint
    _, result = _train(tmp_path, tiny_shards, path, experiment="tiny_student_ode_init")
    header = (result.run_dir / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/ode_loss" in header and "train/asd_loss" not in header
    _check_stream_outputs(result.run_dir, chunks=4)
