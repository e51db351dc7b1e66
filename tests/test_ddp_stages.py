"""Every stage trains under DDP with 2 CPU processes (gloo), as `rest-train ... strategy=ddp` runs it.

Both ranks must end with identical weights (gradients are all-reduced): each rank hashes its weights at the
end of training (``RankAgreement``) and rank 0 writes the digests to ``logs/rank_digests.json``; the final
checkpoint's weights must hash to the same value.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_strategies import rest_train

from rest_lightning.callbacks import weights_digest

STAGES = {
    "tiny_vae": [],
    "tiny_teacher": [],
    "tiny_student": [],  # random teacher (random_teacher_ok in the tiny config): DDP mechanics only
    "tiny_student_dmd": [],  # two optimizers, manual optimization, a trainable critic
}


@pytest.mark.parametrize("experiment", sorted(STAGES))
def test_stage_trains_under_ddp_on_two_processes(experiment, tiny_shards, tmp_path):
    run = tmp_path / "run"
    proc = rest_train(
        f"experiment={experiment}", f"data.cfg.root={tiny_shards}", f"run_dir={run}", "strategy=ddp",
        "trainer.devices=2", "trainer.max_steps=3", "trainer.limit_val_batches=0", "checkpoint.every_n_steps=3",
        *STAGES[experiment],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["rest_run"]["world_size"] == 2, "both processes joined the run"
    digests = json.loads((run / "logs" / "rank_digests.json").read_text())
    assert digests["step"] == 3 and len(digests["sha256_by_rank"]) == 2
    assert digests["sha256_by_rank"][0] == digests["sha256_by_rank"][1], "the replicas diverged"
    assert weights_digest(ckpt["state_dict"]) == digests["sha256_by_rank"][0], "the checkpoint holds the ranks' weights"
