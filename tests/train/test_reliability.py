"""Reliability: resume after a crash gives the same weights; gradient accumulation does not
change the loss; checkpoints are whole."""

import pytest
import torch
from safetensors.torch import load_file

from hkllm.train.pretrain import run
from hkllm.train.recipe import load

from .conftest import TINY_TRAIN, make_recipe


def cpt_recipe(tmp_path, base, texts, out, **train):
    return load(make_recipe(tmp_path, "cpt", out=str(tmp_path / out), model={"path": str(base)},
                            data={"train": [str(texts["hk"])], "replay": [str(texts["general"])], "replay_share": 0.25},
                            train={**TINY_TRAIN, **train}))


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path, base_run, texts, monkeypatch):
    from transformers import Trainer

    base = base_run[0]
    run(cpt_recipe(tmp_path, base, texts, "straight", max_steps=8, save_steps=4), "test")

    original = Trainer.training_step
    calls = {"n": 0}

    def crashing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # after the step-4 checkpoint, before the end
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        run(cpt_recipe(tmp_path, base, texts, "resumed", max_steps=8, save_steps=4), "test")
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-4").exists()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    # a save that was cut short leaves a half-written checkpoint: it must be ignored
    partial = tmp_path / "resumed" / "checkpoints" / "checkpoint-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half-writ")
    monkeypatch.setattr(Trainer, "training_step", original)
    metrics = run(cpt_recipe(tmp_path, base, texts, "resumed", max_steps=8, save_steps=4), "test")
    assert metrics["steps"] == 8
    assert not partial.exists()
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_loss_does_not_depend_on_gradient_accumulation(tmp_path, base_run, texts):
    base = base_run[0]
    one = run(cpt_recipe(tmp_path, base, texts, "accum1", max_steps=1, batch_size=4, grad_accum=1, log_steps=1), "test")
    two = run(cpt_recipe(tmp_path, base, texts, "accum2", max_steps=1, batch_size=2, grad_accum=2, log_steps=1), "test")
    assert one["final_loss"] == pytest.approx(two["final_loss"], rel=1e-4)
    a, b = weights(tmp_path / "accum1"), weights(tmp_path / "accum2")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_a_model_that_cannot_fit_is_refused_before_allocation(tmp_path, texts):
    from hkllm.errors import UserError

    recipe = load(make_recipe(tmp_path, "base", out=str(tmp_path / "huge"),
                              model={"hidden_size": 8192, "num_layers": 80, "num_heads": 64, "intermediate_size": 28672,
                                     "vocab_size": 600},
                              data={"train": [str(texts["general"])]}, train=TINY_TRAIN))
    with pytest.raises(UserError, match="will not fit"):
        run(recipe, "test")
