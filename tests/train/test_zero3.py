"""DeepSpeed ZeRO-3 with 2 CPU processes (gloo): the sharded training path runs and the saved,
consolidated model loads with every weight present."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TINY_TRAIN, make_recipe

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("deepspeed", reason="deepspeed is installed by `make test` (DS_BUILD_OPS=0)")


def test_zero3_two_cpu_processes(tmp_path, base_run, texts):
    from transformers import AutoModelForCausalLM

    recipe = make_recipe(tmp_path, "cpt", out=str(tmp_path / "z3"), model={"path": str(base_run[0])},
                         data={"train": [str(texts["hk"])], "replay": [str(texts["general"])], "replay_share": 0.25},
                         eval=[{"path": str(texts["hk"]), "split": "all"}], train={**TINY_TRAIN, "max_steps": 4})
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    out = subprocess.run([accelerate, "launch", "--config_file", str(REPO / "recipes/accelerate/zero3_cpu_2proc.yaml"),
                          "-m", "hkllm", "train", "cpt", str(recipe)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "z3" / "metrics.json").read_text())
    assert metrics["distributed"] == {"world_size": 2, "zero_stage": 3, "fsdp": False}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "z3")
    reference = AutoModelForCausalLM.from_pretrained(base_run[0])
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert p.shape == q.shape and p.numel() > 0, name
