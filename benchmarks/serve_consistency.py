"""Consistency under load: 100 identical greedy requests, cache disabled, while 32 concurrent
clients send different requests; prints how many distinct answers the 100 got (target 1).

    .venv/bin/python benchmarks/serve_consistency.py [--model runs/quickstart/cpt]

The identical request therefore lands in batches of every size and padding the engine makes.
`--random-weights` serves the same architecture with random weights instead: its logits are
nearly tied, so the smallest numerical difference between batch shapes would change a greedy
answer — the hardest case for batch invariance (the trained tiny model's answers are too
repetitive to show much).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
from pathlib import Path

from openai import AsyncOpenAI
from servers import DEFAULT_MODEL, REPO, check_model, free_port, hkllm_serve

PROBE = "香港公共圖書館提供"
OTHERS = ["香港有幾多個區？", "點樣申請公共圖書館借書證？", "What does typhoon signal No. 8 mean?", "八達通可以喺邊度增值？",
          "請把以下句子改寫成正式書面語：佢聽日唔使返工。", "Recommend a cha chaan teng dish.", "請簡介香港的公眾假期。",
          "Translate into English: 本署已收到閣下的來信。", "天文台幾時會發出黑色暴雨警告？", "How do I renew my HKID card?"]


async def run(url: str, probes: int, load: int) -> collections.Counter:
    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
    model = (await client.models.list()).data[0].id
    done = asyncio.Event()

    async def background(i: int):
        n = 0
        while not done.is_set():
            prompt = OTHERS[(i + n) % len(OTHERS)] + " " * (i % 5)      # varied lengths, hence varied padding
            await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                 max_tokens=16 + (i * 7 + n) % 48)
            n += 1

    async def probe():
        # The completions API also returns each chosen token's log-probability: identical text
        # is the target; identical log-probabilities show whether the arithmetic itself was.
        r = await client.completions.create(model=model, prompt=PROBE, max_tokens=48, logprobs=0)
        return r.choices[0].text, tuple(r.choices[0].logprobs.token_logprobs)

    loaders = [asyncio.create_task(background(i)) for i in range(load)]
    await asyncio.sleep(1.0)
    answers = []
    for start in range(0, probes, 4):
        answers += await asyncio.gather(*(probe() for _ in range(min(4, probes - start))))
    done.set()
    await asyncio.gather(*loaders)
    return answers


def random_copy(model: Path, out: Path) -> Path:
    """The model's architecture and tokenizer with fresh random weights (seed 0)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).save_pretrained(out)
    for f in model.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "generation_config")):
            shutil.copy(f, out / f.name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--load", type=int, default=32)
    ap.add_argument("--random-weights", action="store_true")
    args = ap.parse_args()
    model = check_model(args.model.resolve())
    if args.random_weights:
        model = random_copy(model, REPO / "runs/bench_random_model")
    with hkllm_serve(model, free_port(), "--no-cache") as (url, _):
        answers = asyncio.run(run(url, args.probes, args.load))
    texts = collections.Counter(text for text, _ in answers)
    logprobs = {lp for _, lp in answers}
    spread = max(max(abs(a - b) for a, b in zip(x, y)) for x in logprobs for y in logprobs)
    print(f"{len(answers)} identical greedy requests under a load of {args.load} concurrent different requests: "
          f"{len(texts)} distinct answer(s) (target 1); {len(logprobs)} distinct log-probability sequence(s), "
          f"largest difference {spread:.2e}")
    for text, n in texts.most_common(3):
        print(f"  {n:3d} × {text[:60]!r}")


if __name__ == "__main__":
    main()
