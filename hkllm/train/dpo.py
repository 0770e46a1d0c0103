"""Recipe for `hkllm train dpo`: preference optimisation on chosen/rejected pairs (TRL DPOTrainer).

    hkllm train dpo recipes/tiny/dpo.yaml

setup: the SFT model; preference pairs (conversational prompt/chosen/rejected JSONL); the
       reference model is a frozen copy that TRL makes itself.
train: DPO loss with `train.beta`; reward accuracy and margins logged; bits-per-byte before/after.
save:  the model folder (see hkllm/train/run.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from hkllm.data.chat import load_preferences
from hkllm.errors import UserError
from hkllm.files import read_jsonl, write_atomic
from hkllm.train import data as D
from hkllm.train.metrics import bpb_by_variety
from hkllm.train.recipe import Recipe, to_yaml
from hkllm.train.run import MarkCompleteCheckpoints, ProgressAndLog, finish, last_checkpoint, training_arguments


def run(recipe: Recipe, command: str) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from hkllm.train.pretrain import load_model

    if not recipe.model.path:
        raise UserError("dpo needs model.path (an sft run folder, or a Hugging Face chat model)")
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "recipe.yaml", to_yaml(recipe, command))
    model, tokenizer = load_model(recipe.model.path, recipe)
    pairs = [p for spec in recipe.data.train for p in load_preferences(spec["path"] if isinstance(spec, dict) else spec)]
    eval_texts = D.by_variety(D.read_sources(recipe.eval, "heldout"), recipe.eval_max_chars)
    t = recipe.train
    before = bpb_by_variety(model, tokenizer, eval_texts, t.seq_len)
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, t.sft_weight]} if t.sft_weight else {}
    config = DPOConfig(**training_arguments(recipe, out), beta=t.beta, max_length=t.seq_len, **losses)
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=Dataset.from_list(pairs),
                         processing_class=tokenizer,
                         callbacks=[ProgressAndLog(out, t.batch_size * t.grad_accum * t.seq_len, f"dpo {out.name}"),
                                    MarkCompleteCheckpoints()])
    trainer.remove_callback(PrinterCallback)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=last_checkpoint(out))
    logs = [row for _, row in read_jsonl(out / "train_log.jsonl")]
    last = next((r for r in reversed(logs) if "rewards/accuracies" in r), {})
    metrics = {
        "stage": "dpo", "bpb_before": before, "bpb_after": bpb_by_variety(model, tokenizer, eval_texts, t.seq_len),
        "final_loss": round(result.training_loss, 4), "steps": result.global_step, "pairs": len(pairs),
        "reward_accuracy": last.get("rewards/accuracies"), "reward_margin": last.get("rewards/margins"),
        "seconds": round(time.time() - started, 1),
    }
    return finish(trainer, tokenizer, out, metrics, recipe)
