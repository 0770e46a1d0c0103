"""hkllm installed from its built wheel, away from the checkout (marked `wheel`; ~1-2 minutes on 2 cores).

The wheel is built offline from a copy of the sources (pip, no build isolation: setup.py copies the
top-level recipes/ and data/ in as hkllm/_assets/), installed without dependencies into a fresh
virtualenv that sees .venv's packages through a .pth file (a path line only: .venv's own .pth
files, the editable hkllm among them, are not run), and run from an empty folder:
`hkllm quickstart --smoke` builds the demo corpus and the chat set from the wheel's files, and
every path the quickstart's recipes, suite and gate policy name resolves to a file in the wheel.
The training and evaluation stages themselves are tests/test_quickstart.py's (from the checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "hkllm", "recipes", "data")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, python of a virtualenv with only that wheel installed, an empty working folder)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__", "*.pyc", "_assets")} if (REPO / name).is_dir() else {}
        copy(REPO / name, src / name, **kwargs)
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=300)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                "-w", str(root / "dist"), str(src))
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("hkllm-*.whl")
    made = run(sys.executable, "-m", "venv", "--without-pip", str(root / "venv"))
    assert made.returncode == 0, made.stderr
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "hkllm-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel))
    assert done.returncode == 0, done.stderr[-3000:]
    empty = root / "empty"
    empty.mkdir()
    return wheel, python, empty


def test_the_wheel_carries_recipes_data_and_the_lm_eval_task(installed):
    names = set(zipfile.ZipFile(installed[0]).namelist())
    for name in ("hkllm/_assets/recipes/tiny/base.yaml", "hkllm/_assets/recipes/scale/qwen2.5-7b-cpt.yaml",
                 "hkllm/_assets/data/demo/tables/districts.csv", "hkllm/_assets/data/eval/hk_knowledge.jsonl",
                 "hkllm/_assets/data/chat/seeds/facts.yaml", "hkllm/eval/lm_eval_tasks/hk_knowledge_mc.yaml"):
        assert name in names, name
    assert not any("__pycache__" in n for n in names)


CHECK = """
import json, sys
from pathlib import Path
import hkllm, hkllm.assets as assets, hkllm.quickstart as q
from hkllm.eval import gate
from hkllm.eval.lm_eval_tasks import FOLDER, hk_knowledge
from hkllm.train.data import BUILTIN
from hkllm.train.recipe import load
out = Path("qs").resolve()
paths = []
for name in ("base", "cpt", "sft", "dpo"):
    r = load(q.REPO / "recipes" / "tiny" / f"{name}.yaml")
    paths += [q._local(s["path"] if isinstance(s, dict) else s, out) for s in r.data.train + r.data.replay + r.eval]
paths += [str(q.REPO / q.SHIPPED_BASE / f) for f in q._BASE_FILES]      # the base the quickstart copies
suite = q._suite(out, smoke=True)
import yaml
for cfg in yaml.safe_load(suite.read_text(encoding="utf-8"))["tasks"].values():
    paths += [cfg[k] for k in ("path", "policy") if k in cfg] + [s["path"] for s in cfg.get("sources", [])]
missing = [p for p in paths if p not in BUILTIN and not p.startswith(str(out)) and not Path(p).exists()]
gate.load_policy(q.REPO / "recipes" / "eval" / "gate.yaml")
print(json.dumps({"hkllm": hkllm.__file__, "root": str(assets.ROOT), "missing": missing, "n": len(paths),
                  "task": (FOLDER / "hk_knowledge_mc.yaml").is_file(), "items": len(hk_knowledge()["test"])}))
"""


def test_installed_hkllm_finds_every_file_the_quickstart_names(installed):
    _, python, empty = installed
    out = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, cwd=empty, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    site = str(python.parent.parent)
    assert found["hkllm"].startswith(site) and found["root"].startswith(site)   # the wheel's, not the checkout's
    assert found["missing"] == [] and found["n"] > 20
    assert found["task"] and found["items"] >= 90


def test_quickstart_smoke_from_an_empty_folder(installed):
    _, python, empty = installed
    hkllm = python.parent / "hkllm"                                # the wheel's console script
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HKLLM_PRECISION": "fp32"}
    out = subprocess.run([str(hkllm), "quickstart", "--out", "qs", "--smoke", "--stop-after", "instructions"],
                         capture_output=True, text=True, cwd=empty, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "# Data card: demo" in out.stdout and "stopped after instructions" in out.stdout
    card = json.loads((empty / "qs" / "data" / "datacard.json").read_text(encoding="utf-8"))
    assert {"yue", "zh-hant", "en"} <= set(card["train"]["by_variety"])
    assert (empty / "qs" / "instructions" / "chat.jsonl").stat().st_size > 0
    assert sorted(p.name for p in empty.iterdir()) == ["qs"]       # nothing written outside --out
