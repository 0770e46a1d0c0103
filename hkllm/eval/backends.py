"""The model under evaluation, in-process or behind an OpenAI-compatible server.

    model = LocalBackend("runs/quickstart/dpo")          # scored in this process
    model = RemoteBackend("http://127.0.0.1:8000/v1")    # hkllm serve, vLLM, SGLang, ...
    model.loglikelihoods([("香港有幾多個區？\n答案：", "18個")])
    model.doc_nll(["一段香港文字"])                          # [(nats, bytes)]
    model.chat([[{"role": "user", "content": "你好"}]], max_tokens=64)
    model.chat_with_finish(...)                           # [(answer, "stop" | "length")]
    model.generate(conversations, [SamplingParams(...)])  # in-process only: per-row sampling, logits processors

Every evaluation task uses only these calls, so the same suite scores a local folder
and a served model; `generate` is the in-process backend's alone (the watermark task marks
answers with a logits processor, which a server does not take from a client), and a served
model skips that task. Generation is greedy, or seeded: evaluation must be repeatable.
"""

from __future__ import annotations

import asyncio


class LocalBackend:
    def __init__(self, model_dir, max_batch: int = 32):
        from hkllm.serve.engine import LocalEngine

        self.engine = LocalEngine(model_dir, max_batch=max_batch)
        self.name, self.version = self.engine.name, self.engine.version
        self.model, self.tokenizer = self.engine.model, self.engine.tokenizer

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def loglikelihoods(self, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[float]:
        """log P(continuation | context) for each pair, summed over the continuation's tokens."""
        import torch

        rows = []
        for context, continuation in pairs:
            ctx, whole = self._encode(context), self._encode(context + continuation)
            if whole[: len(ctx)] != ctx:      # the join merged tokens: score the parts as tokenized apart
                whole = ctx + self._encode(continuation)
            rows.append((whole[-self.engine.max_model_len:], min(len(whole) - len(ctx), self.engine.max_model_len - 1)))
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = rows[start:start + batch_size]
                width = max(len(ids) for ids, _ in batch)
                x = torch.full((len(batch), width), self.engine.pad_id)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, (ids, _) in enumerate(batch):
                    x[i, :len(ids)], mask[i, :len(ids)] = torch.tensor(ids), 1
                logp = torch.log_softmax(self.model(input_ids=x, attention_mask=mask).logits.float(), -1)
                for i, (ids, n_cont) in enumerate(batch):
                    positions = range(len(ids) - n_cont, len(ids))
                    out.append(sum(float(logp[i, p - 1, ids[p]]) for p in positions))
        return out

    def doc_nll(self, texts: list[str], max_len: int = 512) -> list[tuple[float, int]]:
        """Per document: total negative log-likelihood in nats and UTF-8 bytes (for bits-per-byte).
        Long documents are scored in windows, each opened by BOS, as in training's evaluation."""
        import torch

        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.engine.pad_id
        out = []
        with torch.no_grad():
            for text in texts:
                ids, nll = self._encode(text), 0.0
                for start in range(0, len(ids), max_len - 1):
                    x = torch.tensor([[bos] + ids[start:start + max_len - 1]])
                    logp = torch.log_softmax(self.model(input_ids=x).logits[0, :-1].float(), -1)
                    nll -= float(logp.gather(1, x[0, 1:, None]).sum())
                out.append((nll, len(text.encode("utf-8"))))
        return out

    def chat(self, conversations: list[list[dict]], max_tokens: int = 128) -> list[str]:
        return [text for text, _ in self.chat_with_finish(conversations, max_tokens)]

    def chat_with_finish(self, conversations: list[list[dict]], max_tokens: int = 128) -> list[tuple[str, str]]:
        """(answer, finish reason): "stop" when the model ended its turn, "length" at max_tokens."""
        from hkllm.serve.engine import SamplingParams

        params = SamplingParams(max_tokens=max_tokens)
        return [(r["text"], r["finish"]) for r in self.generate(conversations, [params] * len(conversations))]

    def generate(self, conversations: list[list[dict]], params: list) -> list[dict]:
        """Each conversation answered under its own SamplingParams (temperature, seed, logits
        processors: in-process only, e.g. the watermark task's): [{"text", "finish", "tokens"}]."""

        async def one(messages, p):
            text, finish, tokens = "", "length", 0
            async for event in self.engine.generate(self.engine.encode_chat(messages), p):
                text += event.text
                finish = event.finish_reason or finish
                tokens = event.completion_tokens or tokens
            return {"text": text, "finish": finish, "tokens": tokens}

        async def all_():
            return await asyncio.gather(*(one(m, p) for m, p in zip(conversations, params)))

        return asyncio.run(all_())


class RemoteBackend:
    """Any OpenAI-compatible server. Log-likelihoods need `/v1/completions` with `echo` and
    `logprobs` (hkllm serve and vLLM have them; chat-only servers can run generation tasks only)."""

    def __init__(self, base_url: str, api_key: str = "none", model: str | None = None, concurrency: int = 8):
        from openai import OpenAI

        self.base_url, self.api_key, self.concurrency = base_url, api_key, concurrency
        self.client = OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=600)
        listed = self.client.models.list().data[0]
        self.name = model or listed.id
        self.version = (listed.model_extra or {}).get("version") or self.name

    def _prompt_logprobs(self, text: str) -> list[float | None]:
        """Log-probabilities of the text's own tokens (echo), without the one generated token."""
        r = self.client.completions.create(model=self.name, prompt=text, max_tokens=1, echo=True, logprobs=0,
                                           temperature=0)
        return r.choices[0].logprobs.token_logprobs[:-1]

    def loglikelihoods(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Context and context + continuation are echoed apart; the continuation's tokens are the
        ones past the context's count (the same prefix assumption as the in-process backend)."""
        context_tokens: dict[str, int] = {}
        out = []
        for context, continuation in pairs:
            if context not in context_tokens:
                context_tokens[context] = len(self._prompt_logprobs(context))
            whole = self._prompt_logprobs(context + continuation)
            out.append(sum(lp for lp in whole[context_tokens[context]:] if lp is not None))
        return out

    def doc_nll(self, texts: list[str]) -> list[tuple[float, int]]:
        """Over the API the first token has no log-probability (there is no BOS to condition on),
        so documents score slightly lower than in-process; compare served runs with served runs."""
        return [(-sum(lp for lp in self._prompt_logprobs(t) if lp is not None), len(t.encode("utf-8")))
                for t in texts]

    def chat(self, conversations: list[list[dict]], max_tokens: int = 128) -> list[str]:
        return [text for text, _ in self.chat_with_finish(conversations, max_tokens)]

    def chat_with_finish(self, conversations: list[list[dict]], max_tokens: int = 128) -> list[tuple[str, str]]:
        from openai import AsyncOpenAI

        async def all_():
            client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=2, timeout=600)
            gate = asyncio.Semaphore(self.concurrency)

            async def one(messages):
                async with gate:
                    r = await client.chat.completions.create(model=self.name, messages=messages, max_tokens=max_tokens,
                                                             temperature=0, seed=0)
                    return r.choices[0].message.content or "", r.choices[0].finish_reason or "length"

            try:
                return await asyncio.gather(*(one(m) for m in conversations))
            finally:
                await client.close()

        return asyncio.run(all_())
