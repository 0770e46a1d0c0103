import subprocess
import sys

import pytest


def hkllm(*args):
    return subprocess.run([sys.executable, "-m", "hkllm", *args], capture_output=True, text=True)


def test_help_lists_the_subcommands():
    out = hkllm("--help")
    assert out.returncode == 0
    for command in ("quickstart", "text", "data", "train", "tokenizer", "plan", "bench"):
        assert command in out.stdout


@pytest.mark.parametrize("args", [["quickstart"], ["text"], ["text", "convert"], ["text", "detect"],
                                  ["text", "redact"], ["data"], ["data", "build"], ["data", "convert-chat"], ["data", "instructions"],
                                  ["train"], ["tokenizer", "extend"], ["plan"], ["bench", "serve"]])
def test_every_command_has_help(args):
    out = hkllm(*args, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: hkllm" in out.stdout


def test_help_does_not_import_heavy_libraries():
    code = "import sys, hkllm.cli; hkllm.cli.build_parser(); print(sorted({'torch', 'datatrove', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_data_instructions_reports_a_missing_recipe_in_one_line(tmp_path):
    out = hkllm("data", "instructions", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert out.returncode != 0 and "instructions recipe not found" in out.stderr and "Traceback" not in out.stderr
