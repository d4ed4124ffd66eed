"""examples/score_demo.py: synthetic videos scored by `vgpa score` rank rigid above wobbly, and
the tiny model trains on the pairs they give."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "score_demo.py"

pytest.importorskip("diffusers", reason="the demo's training step needs the train extras (pip install vgpa[train])")


def test_demo_ranks_rigid_videos_first_and_trains(tmp_path):
    import torch

    seed = int(torch.randint(0, 10_000, ()).item())  # a fresh dataset every run
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--groups", "2", "--frames", "6",
                          "--size", "48", "--steps", "2", "--seed", str(seed)],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                         cwd=REPO)
    assert run.returncode == 0, f"seed {seed}\n" + run.stdout[-3000:] + run.stderr[-3000:]
    assert "rigid videos win every group: yes" in run.stdout

    meta = json.loads((out / "data" / "meta_data.json").read_text())
    assert len(meta["groups"]) == 2
    for group in meta["groups"]:
        rigid = [v for v in group["videos"] if v["kind"] == "rigid"]
        wobbly = [v for v in group["videos"] if v["kind"] == "wobbly"]
        assert len(rigid) == len(wobbly) == 2 and not any("error" in v for v in group["videos"])
        for key in ("consistency_score", "normal_stability", "reprojection_abs_rel"):  # lower is better
            assert max(v[key] for v in rigid) < min(v[key] for v in wobbly), (seed, group["group_id"], key)
        assert min(v["mvcs"] for v in rigid) > max(v["mvcs"] for v in wobbly), (seed, group["group_id"])

    # Training ran its steps on the pairs and wrote LoRA weights that moved.
    assert "2 preference pairs from" in run.stderr and "step 2: loss" in run.stderr
    import safetensors.torch

    weights = safetensors.torch.load_file(str(out / "train" / "pytorch_lora_weights.safetensors"))
    assert any(value.abs().max() > 0 for key, value in weights.items() if "lora_B" in key)
