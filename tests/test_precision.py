"""Precision chosen by the hardware (hkllm/precision.py) and recorded by training."""

import pytest

from hkllm import precision
from hkllm.errors import UserError
from hkllm.train.recipe import load


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU machine with or without native bf16; no env override."""
    monkeypatch.delenv("HKLLM_PRECISION", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    precision._warned.clear()

    def set_native(native: bool):
        offer = (True, "CPU has native bf16 (avx512_bf16)") if native else (False, "CPU has AVX2 only: bf16 would be emulated")
        monkeypatch.setattr(precision, "cpu_bf16_support", lambda: offer)
    return set_native


def test_auto_is_fp32_without_native_bf16(cpu):
    cpu(False)
    p = precision.choose("auto")
    assert (p.name, p.device) == ("fp32", "cpu") and "emulated" in p.reason


def test_auto_is_bf16_with_native_bf16(cpu):
    cpu(True)
    import torch

    assert precision.choose("auto").torch_dtype is torch.bfloat16


def test_forced_bf16_on_emulating_cpu_warns_once_with_the_measured_slowdown(cpu, capsys, monkeypatch):
    cpu(False)
    monkeypatch.setattr(precision, "measured_bf16_slowdown", lambda: 97.0)
    assert precision.choose("bf16").name == "bf16"
    precision.choose("bf16")
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "97x" in err


def test_fp16_on_cpu_is_a_clear_error(cpu):
    cpu(False)
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        precision.choose("fp16")


def test_environment_overrides_auto(cpu, monkeypatch):
    cpu(True)
    monkeypatch.setenv("HKLLM_PRECISION", "fp32")
    assert precision.choose("auto").name == "fp32"
    assert precision.choose("bf16").name == "bf16"   # an explicit choice wins over the environment


def test_this_machine_reports_what_it_has():
    native, offer = precision.cpu_bf16_support()
    assert isinstance(native, bool) and offer


def test_recipe_field_checked_and_old_flag_explained(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: base\nout: x\ntrain: {precision: fp64}\n")
    with pytest.raises(UserError, match="train.precision' must be one of auto, fp32, bf16, fp16"):
        load(recipe)
    recipe.write_text("stage: base\nout: x\ntrain: {bf16: true}\n")
    with pytest.raises(UserError, match="replaced by 'train.precision'"):
        load(recipe)
