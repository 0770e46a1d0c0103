"""The engine contract: everything the gateway (gateway.py) needs from an engine, and nothing more.

    engine: Engine = LocalEngine("runs/quickstart/dpo")     # or UpstreamEngine("http://gpu-node:8000/v1")
    gen = await engine.chat([{"role": "user", "content": "你好"}], SamplingParams(max_tokens=64))
    async for event in gen.events:                           # nothing runs before this loop
        if isinstance(event, ErrorEvent):
            ...                                              # the last event of a failed generation
        print(event.text, end="")

Two engines implement it: `LocalEngine` (engine.py, a model in this process) and `UpstreamEngine`
(upstream.py, any OpenAI-compatible server). A test fake, a wrapper or another backend implements
the same members; `Engine` is a `typing.Protocol`, so nothing has to inherit from it.

Errors, in two places only:
- `chat`/`complete` raise `ValueError` for a request this engine cannot take (the gateway answers
  400 with the message), or `protocol.ApiError` for one with its own status;
- once `events` is iterated, a failure arrives as one `ErrorEvent`, always the last event, never
  as an exception. Leaving the loop early (or `aclose()` on `events`) cancels the generation.

Every engine honours `SamplingParams.stop` the same way: the answer ends before the first stop
string and no event ever carries part of one (text that may grow into a stop string is held
back; `longest_stop_prefix` says how much).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

# (token ids so far: the prompt's and those generated, logits of the next token) -> logits.
# Called once per decoding step for its row only, at prefill too; it may change `logits` in place.
# `ids` is the engine's own list, growing by one token per step: read it, never change it.
#
# Optionally batched: a processor with a `batch_kind` (hashable) whose class has
#     apply_batch(processors, ids_per_row, logits, rows) -> None
# is called once per step for every row whose processor at the same place in its list has the same
# kind, changing rows `rows` of the batch's `logits` in place, as calling each row's processor would
# (the watermark does this: one vectorised hash for the batch instead of a Python call per row).
LogitsProcessor = Callable[[list[int], "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0          # 0 (or below 1e-5) = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None       # top-k alternatives per generated token (completions API)
    ignore_eos: bool = False          # decode past end-of-turn to max_tokens (vLLM's and llama-server's field: benchmarks)
    # Per-row logits processors, applied in order before sampling, at prefill and at every decoding step.
    # Returned logprobs are those AFTER processing (and before temperature/top-p): the distribution the
    # token was drawn from, so a greedy token is always its own top alternative and a banned token shows
    # as -inf. Only the embedded engine can run them; an upstream engine refuses a request that has any.
    logits_processors: tuple[LogitsProcessor, ...] = ()


@dataclass
class Event:
    """A piece of a streamed answer; the last one has a finish_reason and the token counts."""
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "content_filter" (a response guard stopped it)
    completion_tokens: int = 0
    logprobs: list[dict] = field(default_factory=list)  # per token: {"token", "logprob", "top"}
    prompt_tokens: int | None = None  # set on the last Event by engines that learn it late (upstream)


@dataclass
class ErrorEvent(Event):
    """The last event of a generation that failed. Its finish_reason is "error" (so a loop that
    stops at the first finish_reason also stops here) and its text is empty: the message is in
    `message`, the HTTP status the gateway answers with in `status`."""
    message: str = "engine error"
    status: int = 500                 # 500: the engine failed; 502/504: an upstream failed or timed out
    code: str = "engine_error"
    finish_reason: str | None = "error"


@dataclass
class Generation:
    """One request handed to an engine: its prompt size, the prompt echoed back with its
    log-probabilities when asked (completions API), and the stream of Events to come.
    Nothing runs until `events` is iterated, so the gateway can still refuse the request."""
    prompt_tokens: int | None         # None: unknown until the end (an upstream checks length itself)
    events: AsyncIterator[Event]
    echo_text: str = ""
    echo_logprobs: list[dict] = field(default_factory=list)


@runtime_checkable
class Engine(Protocol):
    """What the gateway uses of an engine: eight attributes and five methods."""

    kind: str                         # "embedded" | "upstream" | ... (printed at start-up)
    name: str                         # the model id clients send and /v1/models lists
    version: str                      # changes whenever the weights do (cache key, system_fingerprint)
    template_version: str             # changes whenever the chat template does (cache key)
    max_model_len: int | None         # context length; None: unknown, the engine checks prompts itself
    max_batch: int                    # requests it works on at once (the gateway queues up to max_queue more)
    default_temperature: float        # used when consistency mode is off and a client sends none
    default_top_p: float

    # Optional: `runs_logits_processors = False` on an engine that cannot (an upstream). The gateway
    # then attaches none (no watermark); such an engine refuses a request that carries one.

    async def chat(self, messages: list[dict], params: SamplingParams, stream: bool = True) -> Generation:
        """A chat answer to messages ({"role", "content"} dicts). `stream=False` is a hint that the
        client wants one answer at the end (an engine behind a network hop may ask for it in one piece)."""
        ...

    async def complete(self, prompt: str | list[int], params: SamplingParams, echo: bool = False,
                       stream: bool = True) -> Generation:
        """A text completion of a string or of token ids; with `echo`, the prompt comes back in
        `echo_text` (and its log-probabilities in `echo_logprobs` when `params.logprobs` is set)."""
        ...

    def stats(self) -> dict:
        """{"waiting": n, "running": n}, read at every /metrics scrape: must be cheap."""
        ...

    async def ready(self) -> bool:
        """True when the engine can answer now (GET /ready)."""
        ...

    async def aclose(self) -> None:
        """The server is shutting down: release what it holds for the server (connections). The engine
        may be shared by several apps (tests do that), so it must stay usable afterwards."""
        ...


def missing_members(engine: object) -> list[str]:
    """The members of the Engine contract that `engine` lacks (none: it implements it)."""
    methods = [n for n, v in vars(Engine).items() if callable(v) and not n.startswith("_")]
    return [n for n in [*Engine.__annotations__, *methods] if not hasattr(engine, n)]


def longest_stop_prefix(text: str, stops: tuple[str, ...] | list[str]) -> int:
    """Length of the longest end of `text` that could still grow into one of `stops`.

    That much text is held back from the stream, so a client never sees part of a stop string
    (response guards hold back the same way, see guards.py).
    """
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
