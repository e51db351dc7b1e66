"""``rest-prep``: raw talking videos -> WebDataset shards (``mode=prep``), a synthetic corpus
(``mode=synth``), shards with VAE latents added (``mode=encode``, for stages 2-3), or latent shards with the
frozen teacher's ODE trajectories added (``mode=ode``, for ``student_ode_init``). Exits non-zero if nothing was written or the config is wrong; rejected inputs are
listed in ``<output>/rejected.jsonl`` and the run goes on."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rest_lightning.cli.common import run_cli
from rest_lightning.config import ConfigError, fields_schema

log = logging.getLogger(__name__)

SUMMARY = ("Prepare talking-head videos into sharded WebDataset tar streams (mode=prep), write the "
           "synthetic talking-head corpus (mode=synth), or copy shards adding each clip's VAE latent "
           "(mode=encode input=SHARDS output=DIR encode.vae=VAE_CKPT), or copy latent shards adding the frozen "
           "teacher's ODE trajectory of each clip (mode=ode input=LATENT_SHARDS output=DIR ode.teacher=TEACHER_CKPT "
           "ode.vae=VAE_CKPT). Outputs: "
           "<output>/{train,val,test}/shard-*.tar, manifest.json, rejected.jsonl.")
MODES = ("prep", "synth", "encode", "ode")
STEPS = ("all", "task", "merge")


def prep_schema() -> type:
    """Root schema of conf/prep.yaml: the prep.* and synth.* keys are PrepConfig's and SynthConfig's fields."""
    from data_prep.config import PrepConfig
    from data_prep.encode_latents import EncodeConfig
    from data_prep.ode_trajectories import OdeConfig
    from rest_lightning.config import ClusterConfig
    from rest_lightning.data.synthetic import SynthConfig

    prep_fields = fields_schema("PrepFields", PrepConfig, exclude=("input", "output"))
    synth_fields = fields_schema("SynthFields", SynthConfig, exclude=("output",))
    encode_fields = fields_schema("EncodeFields", EncodeConfig)
    ode_fields = fields_schema("OdeFields", OdeConfig)

    @dataclass
    class PrepRoot:
        mode: str = "prep"
        input: str = ""
        output: str = ""
        step: str = "all"  # all | task | merge (cluster.array > 1; the SLURM jobs pass task and merge)
        task: Any = None  # step=task: which array task; default $SLURM_ARRAY_TASK_ID
        cluster: ClusterConfig = field(default_factory=ClusterConfig)
        overrides: list[str] = field(default_factory=list)  # recorded by compose(): what the SLURM jobs rerun
        prep: Any = field(default_factory=prep_fields)
        synth: Any = field(default_factory=synth_fields)
        encode: Any = field(default_factory=encode_fields)
        ode: Any = field(default_factory=ode_fields)

    PrepRoot.__annotations__.update(prep=prep_fields, synth=synth_fields, encode=encode_fields, ode=ode_fields,
                                    cluster=ClusterConfig)
    return PrepRoot


def run(cfg: DictConfig) -> Any:
    """Run what ``cfg`` (conf/prep.yaml) asks for; returns the PrepSummary or the list of written files."""
    from data_prep.config import PrepConfig
    from data_prep.encode_latents import EncodeConfig, encode_shards
    from data_prep.ode_trajectories import OdeConfig, write_ode_shards
    from rest_lightning.checkpoint import CheckpointMismatchError
    from rest_lightning.data.synthetic import SynthConfig, write_synthetic_corpus

    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is not one of {', '.join(MODES)}")
    if cfg.step not in STEPS:
        raise ConfigError(f"step={cfg.step!r} is not one of {', '.join(STEPS)}")
    if cfg.mode == "synth" and (cfg.cluster.kind != "local" or cfg.cluster.array != 1 or cfg.step != "all"):
        raise ConfigError("mode=synth runs in this process: cluster=slurm, cluster.array and step are for "
                          "mode=prep, encode and ode")
    if cfg.cluster.array < 1:
        raise ConfigError(f"cluster.array={cfg.cluster.array} must be >= 1")
    try:
        if cfg.mode != "synth" and cfg.cluster.kind == "slurm" and cfg.step == "all":
            from rest_lightning.launch.slurm import submit_prep_array

            if not cfg.input or not cfg.output:
                raise ConfigError("cluster=slurm needs input=DIR and output=DIR")
            return submit_prep_array(cfg)
        if cfg.mode == "synth":
            synth = SynthConfig(output=cfg.output, **OmegaConf.to_container(cfg.synth))
            paths = write_synthetic_corpus(synth)
            print(f"rest-prep: wrote {len(paths)} synthetic videos to {cfg.output}")
            return paths
        if cfg.mode == "encode":
            if not cfg.input or not cfg.output:
                raise ConfigError("mode=encode needs input=SHARDS (a rest-prep output) and output=DIR")
            summary = _augment_steps(cfg, encode_shards, EncodeConfig(**OmegaConf.to_container(cfg.encode)))
            if cfg.step == "task":
                return summary
            print(f"rest-prep: encoded {summary.clips} clips ({', '.join(f'{k} {v}' for k, v in summary.splits.items())}) "
                  f"to latents {summary.latent_shape} in {summary.elapsed_s:.1f} s -> {cfg.output} "
                  "(train on them with data.cfg.mode=latent)")
            return summary
        if cfg.mode == "ode":
            if not cfg.input or not cfg.output:
                raise ConfigError("mode=ode needs input=LATENT_SHARDS (a rest-prep mode=encode output) and output=DIR")
            summary = _augment_steps(cfg, write_ode_shards, OdeConfig(**OmegaConf.to_container(cfg.ode)))
            if cfg.step == "task":
                return summary
            print(f"rest-prep: wrote the teacher's ODE trajectories {summary.ode_shape} of {summary.clips} clips "
                  f"({', '.join(f'{k} {v}' for k, v in summary.splits.items())}) in {summary.elapsed_s:.1f} s -> "
                  f"{cfg.output} (train on them with experiment=student_ode_init data.cfg.mode=latent "
                  "stage.ode_init.from_shards=true)")
            return summary
        prep = PrepConfig(input=cfg.input, output=cfg.output, **OmegaConf.to_container(cfg.prep))
        summary = _run_steps(cfg, prep)  # raises ValueError for an input that is neither a folder nor a manifest
    except (ValueError, CheckpointMismatchError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    if cfg.step == "task":  # printed; a slice whose every input was rejected is not an error
        return summary
    merged = cfg.cluster.array > 1
    print(format_summary(summary, cfg.output).replace(
        f"({summary.videos_resumed} done earlier, 0 now)", f"merged from {cfg.cluster.array} array tasks"
    ) if merged else format_summary(summary, cfg.output))
    if not summary.ok:
        raise ConfigError(f"nothing was written to {cfg.output}; see {cfg.output}/rejected.jsonl for why")
    return summary


def _run_steps(cfg: DictConfig, prep: Any) -> Any:
    """One run (cluster.array=1), or array tasks and their merge: all of them here (step=all), one task
    (step=task, as each SLURM array task runs), or the merge (step=merge)."""
    from data_prep.array import merge_parts, run_task
    from data_prep.run import run_prep

    count = cfg.cluster.array
    if count == 1 and cfg.step == "all":
        return run_prep(prep)
    if cfg.step == "task":
        index = _task_index(cfg)
        summary = run_task(prep, index, count)
        print(format_summary(summary, f"{cfg.output} (task {index} of {count})"))
        return summary
    if cfg.step == "all":
        for index in range(count):
            print(format_summary(run_task(prep, index, count), f"{cfg.output} (task {index} of {count})"))
    return merge_parts(prep, count)


def _task_index(cfg: DictConfig) -> int:
    index = cfg.task if cfg.task is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if index is None:
        raise ConfigError("step=task needs task=I (or $SLURM_ARRAY_TASK_ID, as inside a SLURM array job)")
    return int(index)


def _augment_steps(cfg: DictConfig, write: Any, settings: Any) -> Any:
    """mode=encode / mode=ode: one process, or array tasks over the shards and then the manifest."""
    from data_prep.array import slice_bounds

    count = cfg.cluster.array
    if count == 1 and cfg.step == "all":
        return write(cfg.input, cfg.output, settings)
    if cfg.step == "task":
        index = _task_index(cfg)
        slice_bounds(0, index, count)  # an index outside the array: one line, before any model loads
        summary = write(cfg.input, cfg.output, settings, step="task", task=(index, count))
        print(f"rest-prep: {cfg.mode} task {index} of {count} wrote {summary.clips} clips in "
              f"{summary.elapsed_s:.1f} s -> {cfg.output}")
        return summary
    if cfg.step == "all":
        for index in range(count):
            write(cfg.input, cfg.output, settings, step="task", task=(index, count))
    return write(cfg.input, cfg.output, settings, step="merge")


def format_summary(summary: Any, output: str) -> str:
    splits = ", ".join(f"{k} {v}" for k, v in sorted(summary.clips_per_split.items()))
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(summary.rejected_by_stage.items())) or "none"
    return (
        f"rest-prep: {summary.videos_total} videos ({summary.videos_resumed} done earlier, "
        f"{summary.videos_processed} now), {summary.clips_total} clips in {summary.shards_total} shards "
        f"({splits}); rejected {summary.rejected} ({rejected}); {summary.source_seconds:.1f} s of video in "
        f"{summary.elapsed_s:.1f} s -> {output}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("rest-prep", "prep", SUMMARY, run, argv)


if __name__ == "__main__":
    sys.exit(main())
