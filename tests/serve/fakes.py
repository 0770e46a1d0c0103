"""A scripted engine for gateway tests: it implements the Engine contract (contract.py) and
streams a known answer in pieces of known size, so chunk boundaries are under the test's control
(the tiny random model only ever repeats one token)."""

from __future__ import annotations

import asyncio

from hkllm.serve.contract import ErrorEvent, Event, Generation, SamplingParams

SCRIPT = "你好！請致電 9123 4567 或電郵 chan@example.com 查詢，我哋會盡快回覆。"


class ScriptedEngine:
    kind, name, version, template_version = "scripted", "scripted", "script1", "tmpl1"
    max_model_len, max_batch, default_temperature, default_top_p = 1024, 8, 0.0, 1.0

    def __init__(self, piece: int = 2, fail_after: int | None = None, delay: float = 0.0):
        self.piece, self.fail_after, self.delay = piece, fail_after, delay
        self.calls = 0            # generations started
        self.closed_early = 0     # generations whose consumer stopped before the end
        self.running = 0
        self.seen: list = []      # the messages or prompt of every request, as the engine got them

    def answer(self, text: str) -> str:
        """The answer to a request whose text is `text`: it quotes it, then SCRIPT."""
        return f"「{text}」{SCRIPT}"

    async def chat(self, messages: list[dict], params: SamplingParams, stream: bool = True) -> Generation:
        self.seen.append(messages)
        return Generation(len(messages) * 4, self._events(self.answer(messages[-1]["content"]), params))

    async def complete(self, prompt, params: SamplingParams, echo: bool = False, stream: bool = True) -> Generation:
        self.seen.append(prompt)
        text = prompt if isinstance(prompt, str) else f"{len(prompt)} ids"
        return Generation(4, self._events(self.answer(text), params), echo_text=text if echo else "")

    async def _events(self, text: str, params: SamplingParams):
        self.calls += 1
        self.running += 1
        pieces = [text[i:i + self.piece] for i in range(0, len(text), self.piece)]
        done = False
        try:
            for n, piece in enumerate(pieces[:params.max_tokens], start=1):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.fail_after is not None and n > self.fail_after:
                    done = True
                    yield ErrorEvent(message="engine error: RuntimeError: scripted failure", completion_tokens=n - 1)
                    return
                last = n == min(len(pieces), params.max_tokens)
                done = last
                yield Event(text=piece, completion_tokens=n,
                            finish_reason=("length" if n == params.max_tokens else "stop") if last else None)
        finally:
            self.running -= 1
            self.closed_early += not done

    def stats(self) -> dict:
        return {"waiting": 0, "running": self.running}

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass
