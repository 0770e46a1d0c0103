"""The embedded engine decodes exactly what transformers' own greedy `generate` does, alone,
in a batch, and when requests join a batch already decoding."""

import asyncio

import torch
from transformers.cache_utils import DynamicLayer

from hkllm.serve.engine import SamplingParams
from hkllm.serve.kv_cache import GrowableLayer

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


# -- logits processors -------------------------------------------------------------------------

async def entries(engine, prompt: str, params: SamplingParams) -> list[dict]:
    out = []
    async for event in engine.generate(engine.encode_text(prompt), params):
        out += event.logprobs
    return out


def test_logits_processor_bans_a_token_alone_and_in_a_batch_of_rows_without_one(engine):
    """A toy processor that bans the token greedy decoding would pick first: it applies at
    prefill (the first token changes) and at every step (the token never comes back), sees the
    token ids so far, and leaves the other rows of the batch exactly as transformers decodes them."""
    prompt, n = PROMPTS[1], 24
    free = reference(engine, prompt, n)
    banned = free[0]
    prompt_ids = engine.encode_text(prompt)

    def banning():
        seen: list[list[int]] = []

        def ban(ids, logits):
            seen.append(list(ids))
            logits[banned] = float("-inf")
            return logits
        return SamplingParams(max_tokens=n, logprobs=3, logits_processors=(ban,)), seen

    alone_params, alone_seen = banning()
    batch_params, batch_seen = banning()

    async def main():
        alone = await entries(engine, prompt, alone_params)
        together = await asyncio.gather(*(entries(engine, p, batch_params if p == prompt
                                                  else SamplingParams(n, logprobs=0)) for p in PROMPTS))
        return alone, together

    alone, together = asyncio.run(main())
    # called at prefill and at each decoding step, with the prompt's ids and those generated so far
    assert [len(ids) for ids in alone_seen] == list(range(len(prompt_ids), len(prompt_ids) + n))
    assert all(ids[:len(prompt_ids)] == prompt_ids for ids in alone_seen)
    generated = alone_seen[-1][len(prompt_ids):]            # all but the last token
    assert banned not in generated and generated[0] != free[0]
    assert [engine.token_text(i) for i in generated] == [e["token"] for e in alone][:-1]
    # in a batch: the banned row decodes as it did alone, the others as transformers' generate does
    assert batch_seen[-1] == alone_seen[-1]
    for p, got in zip(PROMPTS, together):
        want = [e["token"] for e in alone] if p == prompt else as_text(engine, reference(engine, p, n))
        assert [e["token"] for e in got] == want, p


def test_logprobs_are_those_after_processing(engine):
    """A processor that pushes one token far ahead: it is chosen every time, and its reported
    log-probability is ~0 (after processing), not the ~-6 of the raw, near-uniform tiny model."""
    favourite = engine.encode_text("a")[0]

    def boost(ids, logits):
        logits[favourite] += 50.0
        return logits

    got = asyncio.run(entries(engine, PROMPTS[0], SamplingParams(6, logprobs=2, logits_processors=(boost,))))
    assert [e["token"] for e in got] == ["a"] * 6
    assert all(e["logprob"] > -1e-3 and e["logprob"] == max(e["top"].values()) for e in got)


def test_sample_is_pure_and_near_zero_temperature_is_greedy():
    from hkllm.serve.engine import sample

    logits = torch.tensor([0.1, 3.0, 0.2, 2.9])
    assert sample(logits, SamplingParams(1, temperature=0.0), None) == 1
    assert sample(logits, SamplingParams(1, temperature=1e-300), None) == 1        # no overflow to NaN
    draws = {sample(logits, SamplingParams(1, temperature=1.0, top_p=0.6), torch.Generator().manual_seed(s))
             for s in range(40)}
    assert draws == {1, 3}                                                          # top-p keeps the two likely ones
    assert torch.equal(logits, torch.tensor([0.1, 3.0, 0.2, 2.9]))


def test_incremental_text_is_the_whole_answer_decoded(engine):
    """The engine decodes only the newest tokens at each step; the text must be what decoding the
    whole answer gives, Chinese characters split across byte tokens included."""
    import random

    from hkllm.serve.engine import _Sequence

    rng = random.Random(0)
    chinese = engine.encode_text("我哋今日去咗旺角食嘢，仲行咗好耐街。市民可於辦事處辦理登記手續。")
    for trial in range(40):
        answer = [rng.choice(chinese) if rng.random() < 0.7 else rng.randrange(len(engine.tokenizer))
                  for _ in range(30)]
        s = _Sequence([1], SamplingParams(max_tokens=64), None, None, None)
        for n in range(1, len(answer) + 1):
            s.generated.append(answer[n - 1])
            assert engine._decoded(s, n) == engine.tokenizer.decode(answer[:n], skip_special_tokens=True), (trial, n)


def test_ignore_eos_decodes_past_end_of_turn_to_max_tokens(engine):
    """vLLM's `ignore_eos` (load tests compare servers on answers of one length): an end-of-turn
    token that would stop the answer is decoded past, and the answer ends at max_tokens."""
    eos = min(engine.eos_ids)

    def end_at_third(ids, logits):
        if len(ids) == len(prompt) + 2:
            logits[:] = float("-inf")
            logits[eos] = 0.0
        return logits

    prompt = engine.encode_text(PROMPTS[0])

    async def run(ignore: bool):
        last = None
        async for event in engine.generate(prompt, SamplingParams(max_tokens=10, ignore_eos=ignore,
                                                                  logits_processors=(end_at_third,))):
            last = event
        return last.finish_reason, last.completion_tokens

    assert asyncio.run(run(False)) == ("stop", 3)
    assert asyncio.run(run(True)) == ("length", 10)


def test_transformers_decoder_decodes_the_same_tokens(model_dir, engine):
    """`--decoder transformers` (any architecture) and the written-out pass agree token for token."""
    from hkllm.serve.engine import LocalEngine

    padded = LocalEngine(model_dir, max_batch=8, decoder="transformers", threads=1)
    try:
        assert padded.decoder.name == "transformers" and engine.decoder.name == "slots"

        async def both():
            a = await asyncio.gather(*(tokens(engine, p, 24) for p in PROMPTS))
            b = await asyncio.gather(*(tokens(padded, p, 24) for p in PROMPTS))
            return a, b

        a, b = asyncio.run(both())
        assert a == b
    finally:
        padded.close()


def test_serving_precision_on_a_native_bf16_cpu_is_timed_not_assumed(model_dir, monkeypatch):
    """`auto` where the CPU has native bf16: both precisions are timed and the faster kept, saying so.
    (Any CPU can run this: where bf16 is emulated it is slow, and fp32 must win.)"""
    from hkllm import precision
    from hkllm.serve import engine as E

    native_here = precision.cpu_bf16_support()[0]
    monkeypatch.delenv("HKLLM_PRECISION", raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (True, "CPU has native bf16 (pretend)"))
    model, decoder, chosen = E.load_for_serving(model_dir, "auto", 4, 0, "auto")
    assert chosen.name in ("bf16", "fp32") and model.dtype == chosen.torch_dtype == decoder.dtype
    assert " thread(s) at 1 · 4 rows took" in chosen.reason and " ms in bf16, " in chosen.reason and " in fp32" in chosen.reason
    if not native_here:                           # emulated bf16 is many times slower: the timing must see it
        assert chosen.name == "fp32", chosen.reason

    monkeypatch.setattr(E, "TIME_BOTH_MAX_PARAMS", 0)     # too big to load twice: bf16, as the hardware says
    model, _, chosen = E.load_for_serving(model_dir, "auto", 4, 0, "auto")
    assert (chosen.name, chosen.reason, model.dtype) == ("bf16", "CPU has native bf16 (pretend)", torch.bfloat16)
    _, _, chosen = E.load_for_serving(model_dir, "fp32", 4, 0, "auto")        # asked for: not second-guessed
    assert chosen.name == "fp32" and "took" not in chosen.reason


def test_scoring_beside_a_running_batch_does_not_hold_back_its_last_tokens(engine, monkeypatch):
    """prompt_logprobs scores between two decoding steps; the tokens of the step before it go out
    first, not after the scoring (a long prompt's forward pass)."""
    pending, score = [], engine._score
    monkeypatch.setattr(engine, "_score", lambda ids, top: pending.append(len(engine._outbox)) or score(ids, top))

    async def main():
        stream = engine.generate(engine.encode_text(PROMPTS[1]), SamplingParams(max_tokens=30, logprobs=0))
        await stream.__anext__()                     # the batch is decoding
        scored = await engine.prompt_logprobs(engine.encode_text(PROMPTS[2]))
        rest = [event async for event in stream]
        return scored, rest

    scored, rest = asyncio.run(main())
    assert len(scored) == len(engine.encode_text(PROMPTS[2])) and rest
    assert pending == [0]
