"""Serving without a model, for tests and benchmarks of what sits around the engine (gateway, guards,
港文通): a scripted engine and a live server on loopback.

    from hkllm.serve.app import Settings, build_app
    from hkllm.serve.testing import LiveServer, ScriptedEngine
    server = LiveServer(build_app(ScriptedEngine(piece=3, delay=0.01), Settings(auth=False)))
    ...  # openai.OpenAI(base_url=server.base_url, api_key="x") talks to it
    server.stop()

`ScriptedEngine` implements the engine contract (contract.py) and streams a known answer in pieces
of a known size, so chunk boundaries and timing are the caller's to choose (a tiny random model only
ever repeats one token).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn running an app in a background thread, as `hkllm serve` runs it."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
