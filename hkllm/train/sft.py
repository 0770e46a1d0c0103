"""Recipe for `hkllm train sft`: supervised fine-tuning on chat data (TRL SFTTrainer).

    hkllm train sft recipes/tiny/sft.yaml

setup: the model and tokenizer (any chat template), conversations from `messages` JSONL,
       optionally 1-5% generic text (`data.generic_share`) against forgetting.
train: loss on assistant tokens only (each answer and its end-of-turn token): from the
       template's {% generation %} markers where it has them (hkllm's own), otherwise from
       rendered prefixes (hkllm/train/chat_data.py: SmolLM2, Qwen2.5, Llama 3 templates);
       conversations packed into sequences without attention across them (position ids restart
       per conversation); bits-per-byte before and after.
save:  the model folder (see hkllm/train/run.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from hkllm.data.chat import load_conversations
from hkllm.errors import UserError
from hkllm.files import stable_hash, write_atomic
from hkllm.train import data as D
from hkllm.train.chat_data import assistant_mask, has_generation_markers
from hkllm.train.metrics import bpb_by_variety
from hkllm.train.recipe import Recipe, to_yaml
from hkllm.train.run import MarkCompleteCheckpoints, ProgressAndLog, finish, last_checkpoint, training_arguments


def setup(recipe: Recipe):
    from datasets import Dataset

    from hkllm.train.pretrain import load_model

    if not recipe.model.path:
        raise UserError("sft needs model.path (a base or cpt run folder, or a Hugging Face model)")
    model, tokenizer = load_model(recipe.model.path, recipe)
    if not tokenizer.chat_template:
        raise UserError(f"{recipe.model.path}: the tokenizer has no chat template, which SFT needs to render "
                        "conversations (hkllm-trained tokenizers and released chat models have one)")
    conversations = [c for spec in recipe.data.train for c in load_conversations(spec["path"] if isinstance(spec, dict) else spec)]
    rows = [{"messages": c} for c in conversations]
    if recipe.data.generic_share > 0:
        # Generic text as one-turn "continue this text" conversations keeps the language modelling alive.
        pool = sorted(D.read_sources(recipe.data.replay, "train"), key=lambda r: stable_hash("generic:" + r["text"]))
        if not pool:
            raise UserError("data.generic_share > 0 needs generic text in data.replay")
        need = recipe.data.generic_share / (1 - recipe.data.generic_share) * len(rows)
        for r in pool[: max(1, round(need))]:
            rows.append({"messages": [{"role": "user", "content": "Continue / 續寫："},
                                      {"role": "assistant", "content": r["text"][:600]}]})
    if not has_generation_markers(tokenizer.chat_template):
        # No markers: tokenize here with the assistant mask found from rendered prefixes; the
        # trainer turns `assistant_masks` into labels (-100 outside assistant answers).
        rows = [assistant_mask(tokenizer, r["messages"], f"conversation {i + 1}") for i, r in enumerate(rows)]
    eval_texts = D.by_variety(D.read_sources(recipe.eval, "heldout"), recipe.eval_max_chars)
    return model, tokenizer, Dataset.from_list(rows), eval_texts


def build_trainer(recipe: Recipe, model, tokenizer, dataset, out: Path):
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    t = recipe.train
    # Packed conversations are kept apart by position ids that restart at each conversation;
    # transformers turns those into a block-diagonal mask only when no KV cache is built.
    model.config.use_cache = False
    # Pre-tokenized rows carry their own assistant mask; otherwise TRL computes it from the markers.
    marked = "input_ids" not in dataset.column_names
    config = SFTConfig(**training_arguments(recipe, out), max_length=t.seq_len, assistant_only_loss=marked,
                       packing=t.packing, packing_strategy="bfd", padding_free=t.packing)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[ProgressAndLog(out, t.batch_size * t.grad_accum * t.seq_len, f"sft {out.name}"),
                                    MarkCompleteCheckpoints()])
    trainer.remove_callback(PrinterCallback)
    return trainer


def run(recipe: Recipe, command: str) -> dict:
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "recipe.yaml", to_yaml(recipe, command))
    model, tokenizer, dataset, eval_texts = setup(recipe)
    t = recipe.train
    before = bpb_by_variety(model, tokenizer, eval_texts, t.seq_len)
    trainer = build_trainer(recipe, model, tokenizer, dataset, out)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=last_checkpoint(out))
    model.config.use_cache = True
    metrics = {
        "stage": "sft", "bpb_before": before, "bpb_after": bpb_by_variety(model, tokenizer, eval_texts, t.seq_len),
        "final_loss": round(result.training_loss, 4), "steps": result.global_step, "conversations": len(dataset),
        "seconds": round(time.time() - started, 1),
    }
    return finish(trainer, tokenizer, out, metrics, recipe)
