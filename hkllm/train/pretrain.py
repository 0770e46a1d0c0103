"""Recipe for `hkllm train base` and `hkllm train cpt`: causal-LM training on plain text.

    hkllm train base recipes/tiny/base.yaml     # a tiny general model from scratch
    hkllm train cpt  recipes/tiny/cpt.yaml      # continued pre-training on Hong Kong text, with replay

setup: tokenizer and model (new, or any Hugging Face causal LM folder/id), training text
       (local text plus replay of the original domain at `data.replay_share`), packed blocks (documents
       that fit kept whole, each attending within itself: hkllm.train.data.pack),
       held-out text per variety.
train: transformers Trainer; bits-per-byte per variety before and after.
save:  the model folder (see hkllm/train/run.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hkllm.errors import UserError
from hkllm.files import write_atomic
from hkllm.train import data as D
from hkllm.train.metrics import bpb_by_variety
from hkllm.train.recipe import Recipe, to_yaml
from hkllm.train.run import (
    MarkCompleteCheckpoints,
    ProgressAndLog,
    check_fits,
    distributed_info,
    finish,
    last_checkpoint,
    training_arguments,
)


class Blocks:
    """Packed token blocks as a torch-style dataset for the Trainer; with `sep`, each document in a
    block attends within itself only (D.document_positions)."""

    def __init__(self, blocks, sep: int | None = None):
        self.blocks, self.sep = blocks, sep

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        item = {"input_ids": self.blocks[i], "labels": self.blocks[i]}
        if self.sep is not None:
            item["position_ids"] = D.document_positions(self.blocks[i], self.sep)
        return item


def new_config(spec, tokenizer):
    from transformers import LlamaConfig

    if spec.arch != "llama":
        raise UserError(f"model.arch {spec.arch!r}: only 'llama' models are built from scratch; "
                        "set model.path to train any other Hugging Face causal LM")
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def new_model(spec, tokenizer):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(new_config(spec, tokenizer))


def load_model(path: str, recipe: Recipe | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if recipe is not None:
            check_fits(AutoConfig.from_pretrained(path), recipe)
        model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    except (OSError, ValueError) as e:
        raise UserError(f"model.path {path!r} is not a loadable Hugging Face causal LM: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@dataclass
class Setup:
    model: object
    tokenizer: object
    train_blocks: object
    eval_texts: dict
    train_chars: dict
    parameters: int


def setup(recipe: Recipe) -> Setup:
    import torch

    torch.manual_seed(recipe.train.seed)
    model = tokenizer = None
    if recipe.model.path:
        model, tokenizer = load_model(recipe.model.path, recipe)
    local = D.read_sources(recipe.data.train, "train")
    if any(r["text"] is None for r in local):
        if tokenizer is None:
            raise UserError("chat records (messages) in data.train need model.path: a new model has no chat "
                            "template until its tokenizer is trained")
        D.render_chats(local, tokenizer)
    replay = D.read_sources(recipe.data.replay, "train") + [r for r in local if r.get("replay")]
    docs = D.with_replay(local, replay, recipe.data.replay_share, seed=recipe.train.seed)
    if not docs:
        raise UserError("data.train has no documents")
    if model is None:
        from transformers import AutoModelForCausalLM

        from hkllm.train.tokenizer import train_tokenizer

        # The tokenizer also sees the *training* side of the evaluation sources, so that a base
        # vocabulary covers every variety it will be measured on (never their held-out text).
        eval_train_side = [dict(s, split="train") if isinstance(s, dict) else s for s in recipe.eval]
        corpus = [d["text"] for d in docs] + [d["text"] for d in D.read_sources(eval_train_side, "train")]
        tokenizer = train_tokenizer(corpus, vocab_size=recipe.model.vocab_size)
        config = new_config(recipe.model, tokenizer)
        check_fits(config, recipe)
        model = AutoModelForCausalLM.from_config(config)
    chars: dict[str, int] = {}
    replayed = {id(r) for r in replay}
    for d in docs:
        key = "replay" if id(d) in replayed else d["variety"]
        chars[key] = chars.get(key, 0) + len(d["text"])
    blocks = D.pack([d["text"] for d in docs], tokenizer, recipe.train.seq_len, seed=recipe.train.seed)
    eval_texts = D.by_variety(D.read_sources(recipe.eval, "heldout"), recipe.eval_max_chars)
    # Counted before training: under ZeRO-3 the local parameter tensors become shards.
    return Setup(model, tokenizer, blocks, eval_texts, chars, sum(p.numel() for p in model.parameters()))


def train(recipe: Recipe, s: Setup, out: Path) -> tuple[dict, object]:
    from transformers import PrinterCallback, Trainer, TrainingArguments, default_data_collator

    t = recipe.train
    before = bpb_by_variety(s.model, s.tokenizer, s.eval_texts, recipe.train.seq_len)
    tokens_per_step = t.batch_size * t.grad_accum * t.seq_len
    args = TrainingArguments(**training_arguments(recipe, out))
    trainer = Trainer(model=s.model, args=args, train_dataset=Blocks(s.train_blocks, D.separator(s.tokenizer)), data_collator=default_data_collator,
                      callbacks=[ProgressAndLog(out, tokens_per_step, f"{recipe.stage} {out.name}"),
                                 MarkCompleteCheckpoints()])
    trainer.remove_callback(PrinterCallback)  # our progress bar and train_log.jsonl replace its prints
    started = time.time()
    result = trainer.train(resume_from_checkpoint=last_checkpoint(out))
    seconds = time.time() - started
    after = bpb_by_variety(s.model, s.tokenizer, s.eval_texts, recipe.train.seq_len)
    return trainer, {
        "stage": recipe.stage,
        "bpb_before": before,
        "bpb_after": after,
        "final_loss": round(result.training_loss, 4),
        "steps": result.global_step,
        "train_tokens": result.global_step * tokens_per_step,
        "tokens_per_second": round(result.global_step * tokens_per_step / max(seconds, 1e-9), 1),
        "train_characters": s.train_chars,
        "replay_share": recipe.data.replay_share,
        "parameters": s.parameters,
        "distributed": distributed_info(trainer),
    }


def run(recipe: Recipe, command: str) -> dict:
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "recipe.yaml", to_yaml(recipe, command))
    s = setup(recipe)
    trainer, metrics = train(recipe, s, out)
    return finish(trainer, s.tokenizer, out, metrics, recipe)  # save: model folder, loss.png, metrics.json
