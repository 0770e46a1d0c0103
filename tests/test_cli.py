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
                                  ["text", "redact"], ["data"], ["data", "build"], ["data", "convert-chat"],
                                  ["train"], ["tokenizer", "extend"], ["plan"], ["bench", "serve"]])
def test_every_command_has_help(args):
    out = hkllm(*args, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: hkllm" in out.stdout


def test_help_does_not_import_heavy_libraries():
    code = "import sys, hkllm.cli; hkllm.cli.build_parser(); print(sorted({'torch', 'datatrove', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
