"""What every training stage shares: the run folder, progress, logs, plots and the final save.

A run folder holds the Hugging Face model (safetensors, config, tokenizer with its chat
template, generation_config.json), train_log.jsonl, loss.png, metrics.json and recipe.yaml.
Files are written to a temporary name and renamed, so a crash never leaves a half-written one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from hkllm.files import read_jsonl, write_atomic


class ProgressAndLog(TrainerCallback):
    """A progress bar with loss, tokens/s and ETA, and train_log.jsonl (one JSON line per log)."""

    def __init__(self, out: Path, tokens_per_step: int, desc: str):
        self.log_path = out / "train_log.jsonl"
        self.tokens_per_step = tokens_per_step
        self.desc = desc
        self.bar = None
        self.start = 0.0
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm import tqdm

        self.start, self.start_step = time.time(), state.global_step
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step",
                        dynamic_ncols=True, disable=not state.is_world_process_zero)

    def tokens_per_second(self, state) -> float:
        elapsed = max(time.time() - self.start, 1e-9)
        return (state.global_step - self.start_step) * self.tokens_per_step / elapsed

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(tok_s=f"{self.tokens_per_second(state):,.0f}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        entry = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))},
                 "tokens_per_second": round(self.tokens_per_second(state), 1), "time": round(time.time(), 3)}
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if self.bar is not None and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", tok_s=f"{self.tokens_per_second(state):,.0f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


def plot_loss(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for _, r in read_jsonl(out / "train_log.jsonl") if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(out.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out / "loss.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out / "loss.png")


def stop_ids(tokenizer) -> list[int]:
    stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    return [i for i in stop if i is not None and i != tokenizer.unk_token_id] or [tokenizer.eos_token_id]


def base_generation_config(path: str | None):
    """The base model's generation_config.json, or None (a model from scratch, or a base without one)."""
    from transformers import GenerationConfig

    if not path:
        return None
    try:
        return GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None


def generation_config(tokenizer, base=None):
    """What generation_config.json says after a stage.

    A base's own file is kept as it is (vLLM and SGLang take their sampling defaults from it:
    Qwen's top_p 0.8, top_k 20, repetition_penalty 1.1 are tuned for the model); only the
    end-of-turn ids this tokenizer stops on are added and pad follows the tokenizer.
    """
    from transformers import GenerationConfig

    if base is None:
        # do_sample=True: engines that honour generation_config then sample at temperature 1 when
        # asked to; hkllm serve's consistency mode requests greedy decoding explicitly.
        return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_ids(tokenizer),
                                pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.7, top_p=0.9,
                                max_new_tokens=256)
    config = GenerationConfig.from_dict(base.to_dict())
    eos = base.eos_token_id if isinstance(base.eos_token_id, list) else [base.eos_token_id]
    # the base's own stop ids first (Llama 3's <|eot_id|> is not one hkllm knows by name)
    config.eos_token_id = list(dict.fromkeys([i for i in eos if i is not None] + stop_ids(tokenizer)))
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def save_model(trainer, tokenizer, out: Path, base_path: str | None = None) -> None:
    """Save into out/ via a temporary folder whose files are renamed into place.

    trainer.save_model consolidates sharded weights (DeepSpeed ZeRO-3, FSDP) and writes on the
    main process only; every process must call it. generation_config.json starts from the base's
    file (base_path), read again here because the trainers rewrite model.generation_config.
    """
    tmp = out / "_final.tmp"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.generation_config = generation_config(tokenizer, base_generation_config(base_path))
    trainer.save_model(str(tmp))
    if main:
        tokenizer.save_pretrained(tmp)
        trainer.model.generation_config.save_pretrained(tmp)
        for f in tmp.iterdir():
            f.replace(out / f.name)
        tmp.rmdir()


def stage_precision(recipe):
    """train.precision resolved for this machine (see hkllm/precision.py)."""
    from hkllm.precision import choose

    return choose(recipe.train.precision, "training")


def training_arguments(recipe, out: Path) -> dict:
    """transformers/TRL arguments shared by every stage (TRL configs add their own on top)."""
    t = recipe.train
    precision = stage_precision(recipe)
    print(f"hkllm: training in {precision.name} on {precision.device} ({precision.reason}) / 訓練精度 {precision.name}",
          flush=True)
    schedule = {"cosine": ("cosine", {}), "wsd": ("warmup_stable_decay", {"num_decay_steps": max(1, t.max_steps // 5)})}
    name, kwargs = schedule[t.schedule]
    import torch

    return dict(
        use_cpu=not torch.cuda.is_available(),
        output_dir=str(out / "checkpoints"), max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, lr_scheduler_type=name, lr_scheduler_kwargs=kwargs,
        warmup_steps=math.ceil(t.warmup_ratio * t.max_steps), weight_decay=t.weight_decay,
        bf16=precision.name == "bf16", fp16=precision.name == "fp16",
        logging_steps=t.log_steps, save_steps=t.save_steps, save_total_limit=1, seed=t.seed, data_seed=t.seed,
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
        gradient_checkpointing=t.gradient_checkpointing,
    )


def finish(trainer, tokenizer, out: Path, metrics: dict, recipe) -> dict:
    """The end of every stage: the model folder, loss.png and metrics.json (with the precision used)."""
    metrics = {**metrics, "precision": stage_precision(recipe).as_dict()}
    save_model(trainer, tokenizer, out, recipe.model.path)
    if trainer.is_world_process_zero():
        plot_loss(out)
        write_atomic(out / "metrics.json", json.dumps(metrics, ensure_ascii=False, indent=1))
    return metrics


def distributed_info(trainer) -> dict:
    """How the run was spread: processes, and the DeepSpeed ZeRO stage or FSDP if used."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return {"world_size": trainer.args.world_size,
            "zero_stage": plugin.zero_stage if plugin is not None else None,
            "fsdp": bool(getattr(trainer, "is_fsdp_enabled", False))}


COMPLETE = "hkllm_complete"


class MarkCompleteCheckpoints(TrainerCallback):
    """The Trainer writes checkpoint-N in place; a marker written after it is whole makes the
    checkpoint count, so a run killed mid-save resumes from the previous, complete one."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / COMPLETE).write_text(str(state.global_step))


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint in out/checkpoints; incomplete ones are removed."""
    folder = out / "checkpoints"
    if not folder.exists():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ckpt in found:
        if (ckpt / COMPLETE).exists():
            return str(ckpt)
        print(f"hkllm: ignoring incomplete checkpoint {ckpt} (a save was interrupted) / 忽略不完整的檢查點")
        shutil.rmtree(ckpt, ignore_errors=True)
    return None


def check_fits(config, recipe) -> None:
    """Refuse to start a run whose training state cannot fit, before anything is allocated."""
    import psutil
    import torch

    from hkllm.errors import UserError
    from hkllm.train.plan import count_parameters, estimate

    if torch.cuda.is_available():
        available = torch.cuda.get_device_properties(0).total_memory / 1024**3
        where = f"GPU ({torch.cuda.get_device_name(0)})"
    else:
        available = psutil.virtual_memory().available / 1024**3
        where = "CPU memory"
    params = count_parameters(config)
    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    e = estimate(config, params, world, available, False, recipe.train.seq_len, recipe.train.batch_size)
    if not e["fits"]:
        need = e["per_gpu"]["total"] / 1024**3
        raise UserError(f"the model will not fit: {params / 1e9:.2f}B parameters need ~{need:,.1f} GiB per process for "
                        f"full-parameter training (16 bytes/parameter + activations) but {where} has {available:,.1f} GiB. "
                        f"See `hkllm plan --model ... --gpus N --gpu-mem GB --offload` and recipes/accelerate/. "
                        f"/ 記憶體不足，模型放不下。")
