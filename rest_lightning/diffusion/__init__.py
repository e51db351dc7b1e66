"""Flow matching, samplers, classifier-free guidance and asynchronous noise schedules (pure torch)."""

from rest_lightning.diffusion.flow import (
    add_noise,
    flow_matching_loss,
    noise_from_velocity,
    per_frame_mse,
    velocity_target,
    x0_from_velocity,
)
from rest_lightning.diffusion.guidance import ConditionDropout, GuidanceScales, guided_velocity
from rest_lightning.diffusion.samplers import EulerSampler, FewStepSampler, timestep_grid
from rest_lightning.diffusion.schedules import (
    AsyncNoiseSchedule,
    IndependentSchedule,
    MixtureSchedule,
    StaggeredSchedule,
    SynchronousSchedule,
    asd_teacher_times,
)
from rest_lightning.diffusion.timesteps import TimestepSampler, shift_timesteps

__all__ = [
    "AsyncNoiseSchedule",
    "ConditionDropout",
    "EulerSampler",
    "FewStepSampler",
    "GuidanceScales",
    "IndependentSchedule",
    "MixtureSchedule",
    "StaggeredSchedule",
    "SynchronousSchedule",
    "TimestepSampler",
    "add_noise",
    "asd_teacher_times",
    "flow_matching_loss",
    "guided_velocity",
    "noise_from_velocity",
    "per_frame_mse",
    "shift_timesteps",
    "timestep_grid",
    "velocity_target",
    "x0_from_velocity",
]
