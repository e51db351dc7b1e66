"""``rest-demo`` end to end at a toy size: every step runs and the outputs it promises exist."""

from __future__ import annotations

import pytest

from rest_lightning.cli.demo import MARKER, main

TOY = [  # seconds of work, not learning: the 10-minute demo's learning is reported by the demo itself
    "synth.n_videos=12", "synth.n_speakers=12", "synth.seconds=2.0", "synth.size=64",
    "prep.val_fraction=0.2", "prep.test_fraction=0.4", "vae_steps=3", "teacher_steps=3", "student_steps=2",
    "stream_seconds=2.0", "eval_teacher_steps=2",
]


def test_demo_runs_every_step_and_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main([f"out_dir={out}", *TOY]) == 0
    printed = capsys.readouterr().out
    evaluation = out / "synthtalk"
    for name in ("table.md", "mouth.png", "side_by_side.mp4", "scores.json"):
        assert (evaluation / name).stat().st_size > 0, name
        assert str(evaluation / name) in printed, f"{name} is not among the printed paths"
    table = (evaluation / "table.md").read_text()
    for row in ("ground truth", "ground truth through the VAE (clips)", "ground truth through the VAE (streamed)",
                "teacher (clips)", "student (streamed)"):
        assert f"| {row} |" in table
    assert table.splitlines()[0] in printed, "the table is printed"
    assert (out / "latents" / "manifest.json").exists(), "stages 2-3 read the VAE's latents"

    frames = _decoded_clips(out / "shards")
    (out / "stale.txt").write_text("from the last run")
    assert main([f"out_dir={out}", *TOY, "vae_steps=1", "teacher_steps=1", "student_steps=1"]) == 0
    assert not (out / "stale.txt").exists(), "a demo folder starts afresh"
    assert _decoded_clips(out / "shards") == frames, "the same corpus and clips, frame for frame (lossless H.264)"


def _decoded_clips(root) -> dict[str, str]:
    """md5 of every shard clip's decoded frames, by member name."""
    import hashlib
    import tarfile

    from rest_lightning.data.codecs import decode_mp4

    clips = {}
    for shard in sorted(root.glob("*/*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".mp4"):
                    clips[member.name] = hashlib.md5(decode_mp4(tar.extractfile(member).read()).tobytes()).hexdigest()
    assert clips, f"no clips under {root}"
    return clips


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    assert main([f"out_dir={tmp_path}", *TOY]) == 2
    assert (tmp_path / "thesis.tex").read_text() == "precious"
    assert not (tmp_path / MARKER).exists()
    assert "not made by rest-demo" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["tiny", "FULL"])
def test_demo_refuses_an_unknown_budget(tmp_path, budget):
    assert main([f"out_dir={tmp_path / 'd'}", f"budget={budget}"]) == 2


def test_demo_over_seeds_with_ablations_pools_a_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main([f"out_dir={out}", *TOY, "seeds=[3,4]", "ablations=true"]) == 0
    table = (out / "synthtalk" / "table.md").read_text()
    assert table.splitlines()[0] in capsys.readouterr().out, "the pooled table is printed"
    rows = ("teacher (clips)", "student (streamed)", "no_asd (streamed)", "no_context (streamed)", "no_sink (streamed)")
    for row in rows:
        assert table.count(f"| {row} |") == 2, f"{row}: one line pooled, one line per seed"
    for seed in (3, 4):
        assert f"seed {seed}" in table
        assert (out / "synthtalk" / f"seed{seed}" / "scores.json").exists()
        assert (out / "runs" / f"seed{seed}" / "no_sink" / "checkpoints" / "last.ckpt").exists()
    assert "6 held-out" not in table and "Pooled over 2 training seeds" in table


def test_demo_refuses_repeated_seeds(tmp_path):
    assert main([f"out_dir={tmp_path / 'd'}", "seeds=[1,1]"]) == 2
