"""Training throughput: `hkllm train cpt` vs a plain transformers Trainer, and packing vs padding.

    .venv/bin/python benchmarks/train_throughput.py [--steps 30] [--model tiny|0.5b]

1. tokens/s of hkllm's cpt recipe on the tiny Llama (recipes/tiny/base.yaml shapes, random
   weights, bf16 autocast) against a plain `Trainer` on the same model, the same packed
   blocks and the same batch, measured back to back in this process; prints the ratio.
2. the share of real (non-pad) tokens per batch on the SFT data (data/chat/hk_instructions.jsonl)
   when conversations are padded to the longest in each batch vs packed (TRL's best-fit
   decreasing packing into rows of seq_len); prints the ratio.
With a GPU, `--model 0.5b` runs a ~0.5B random Llama in bf16 and reports MFU too.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"tiny": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=384),   # recipes/tiny/base.yaml
          "0.5b": dict(hidden_size=1280, num_layers=24, num_heads=20, intermediate_size=3584)}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def make_base(folder: Path, shape: str):
    from hkllm.train import data as D
    from hkllm.train.pretrain import new_model
    from hkllm.train.recipe import ModelSpec
    from hkllm.train.tokenizer import train_tokenizer

    texts = [r["text"] for r in D.read_source({"path": "pydoc:"}, "all")]
    texts += [r["text"] for r in D.read_source({"path": str(REPO / "data/general/zh_general.jsonl")}, "all")]
    tok = train_tokenizer(texts, vocab_size=4000 if shape == "tiny" else 8000)
    model = new_model(ModelSpec(**SHAPES[shape]), tok)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return texts


def hkllm_cpt(base: Path, out: Path, texts_file: Path, steps: int, batch: int, seq: int, bf16: bool) -> float:
    from hkllm.train.pretrain import run
    from hkllm.train.recipe import DataSpec, ModelSpec, Recipe, TrainSpec

    recipe = Recipe(stage="cpt", out=str(out), model=ModelSpec(path=str(base)), data=DataSpec(train=[str(texts_file)]),
                    eval=[], train=TrainSpec(max_steps=steps, batch_size=batch, seq_len=seq, precision="bf16" if bf16 else "fp32", save_steps=10**9,
                                             log_steps=steps))
    return run(recipe, "benchmark")["tokens_per_second"]


def plain_trainer(base: Path, out: Path, texts: list[str], steps: int, batch: int, seq: int, bf16: bool) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    from hkllm.train.data import pack

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    blocks = pack(texts, tok, seq)
    dataset = [{"input_ids": b, "labels": b} for b in blocks]
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, bf16=bf16,
                             use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no",
                             logging_steps=steps, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    start = time.perf_counter()
    trainer.train()
    return steps * batch * seq / (time.perf_counter() - start)


def padding_vs_packing(base: Path, seq: int, batch: int) -> tuple[float, float]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.data_utils import pack_dataset

    from hkllm.data.chat import load_conversations

    tok = AutoTokenizer.from_pretrained(base)
    convs = load_conversations(REPO / "data/chat/hk_instructions.jsonl")
    lengths = [min(seq, len(tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"])) for c in convs]
    padded_real = padded_total = 0
    for i in range(0, len(lengths), batch):
        chunk = lengths[i : i + batch]
        padded_real += sum(chunk)
        padded_total += max(chunk) * len(chunk)
    ids = [tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"][:seq] for c in convs]
    packed = pack_dataset(Dataset.from_dict({"input_ids": ids}), seq_length=seq, strategy="bfd")
    packed_real = sum(len(r) for r in packed["input_ids"])
    packed_total = len(packed) * seq
    return padded_real / padded_total, packed_real / packed_total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: bf16 only where the hardware computes it natively (hkllm/precision.py)")
    args = ap.parse_args()
    from hkllm.precision import choose

    chosen = choose(args.precision)
    print(f"precision: {chosen.name} ({chosen.reason})")
    bf16 = chosen.name == "bf16"

    tmp = Path(tempfile.mkdtemp(prefix="hkllm-train-bench-"))
    texts = make_base(tmp / "base", args.model)
    texts_file = tmp / "texts.jsonl"
    texts_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    from hkllm.train.data import read_source

    train_texts = [r["text"] for r in read_source({"path": str(texts_file)}, "train")]  # what hkllm trains on

    plain = plain_trainer(tmp / "base", tmp / "plain", train_texts, args.steps, args.batch, args.seq_len, bf16)
    ours = hkllm_cpt(tmp / "base", tmp / "cpt", texts_file, args.steps, args.batch, args.seq_len, bf16)
    print(f"model: {args.model} Llama ({SHAPES[args.model]}), batch {args.batch} × {args.seq_len} tokens, "
          f"{args.steps} steps, bf16={bf16}\n")
    print("| trainer | tokens/s |\n|---|---:|")
    print(f"| hkllm train cpt | {ours:,.0f} |\n| plain transformers Trainer | {plain:,.0f} |")
    print(f"\nratio hkllm / plain Trainer: {ours / plain:.2f}")

    import torch

    if torch.cuda.is_available():
        from transformers import AutoModelForCausalLM

        n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tmp / "base").parameters())
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        if peak:
            print(f"MFU on {name}: {6 * n * ours / peak:.1%} (6·N·tokens/s over {peak / 1e12:.0f} TFLOP/s bf16 peak)")

    padded, packed = padding_vs_packing(tmp / "base", args.seq_len, args.batch)
    print(f"\nSFT data, real (non-pad) tokens per batch: padding {padded:.1%}, packing {packed:.1%}; "
          f"ratio packing / padding: {packed / padded:.2f}")


if __name__ == "__main__":
    main()
