"""The embedded engine decodes exactly what transformers' own greedy `generate` does, alone,
in a batch, and when requests join a batch already decoding."""

import asyncio

import torch

from hkllm.serve.engine import SamplingParams
from hkllm.serve.kv_cache import GrowableLayer
from transformers.cache_utils import DynamicLayer

PROMPTS = ["你好", "請問圖書館幾點開？借書證點樣申請？", "Hello there, how are you today?", "旺角"]


def reference(engine, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([engine.encode_text(prompt)])
    out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                eos_token_id=None, pad_token_id=engine.pad_id)
    return out[0, ids.shape[1]:].tolist()


async def tokens(engine, prompt: str, n: int, delay: float = 0.0) -> list[int]:
    await asyncio.sleep(delay)
    params = SamplingParams(max_tokens=n, logprobs=0)
    out = []
    async for event in engine.generate(engine.encode_text(prompt), params):
        out += event.logprobs
    return [e["token"] for e in out]


def as_text(engine, ids):
    return [engine.token_text(i) for i in ids]


def test_engine_matches_generate_alone_batched_and_joining(engine):
    expected = {p: as_text(engine, reference(engine, p, 40)) for p in PROMPTS}

    async def main():
        alone = await tokens(engine, PROMPTS[1], 40)
        together = await asyncio.gather(*(tokens(engine, p, 40) for p in PROMPTS))
        # the later ones join while the first is mid-way through its 40 tokens
        joining = await asyncio.gather(*(tokens(engine, p, 40, delay=0.01 * i) for i, p in enumerate(PROMPTS)))
        return alone, together, joining

    alone, together, joining = asyncio.run(main())
    assert alone == expected[PROMPTS[1]]
    assert together == [expected[p] for p in PROMPTS]
    assert joining == [expected[p] for p in PROMPTS]


def test_growable_layer_behaves_like_dynamic_layer():
    torch.manual_seed(0)
    grow, plain = GrowableLayer(), DynamicLayer()
    for step in range(70):                      # past the first capacity of 64
        k, v = torch.randn(3, 2, 5 if step == 0 else 1, 4), torch.randn(3, 2, 5 if step == 0 else 1, 4)
        gk, gv = grow.update(k, v)
        pk, pv = plain.update(k, v)
        assert torch.equal(gk, pk) and torch.equal(gv, pv)
    index = torch.tensor([2, 0])
    grow.batch_select_indices(index)
    plain.batch_select_indices(index)
    assert torch.equal(grow.keys, plain.keys) and grow.get_seq_length() == plain.get_seq_length() == 74
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    assert torch.equal(grow.update(k, v)[1], plain.update(k, v)[1])
