"""Guardrails at the gateway: two seams, each a small protocol, run as ordered lists set in YAML.

    hkllm serve runs/quickstart/dpo --guards guards.yaml

    # guards.yaml: each list runs in order, like lm-evaluation-harness's filter_list
    request_guards:
      - name: refuse_words             # a registered name, or "package.module:Class" for your own
        words: [炸彈, bomb]
      - name: system_prompt
        text: 你是香港政府的查詢助理。
    response_guards:
      - name: redact_words
        words: ["9123 4567"]

- `RequestGuard.check(request, key)` sees every request, as a structured GenerationRequest
  (messages or prompt, sampling parameters) and the caller's key, before the cache. It returns
  None (pass), a changed copy of the request (rewrite), or raises ApiError (refuse: `refusal()`
  is a 400 with code "content_filter"). It may be a coroutine function.
- `ResponseGuard.wrap(events, request, key)` sees every answer the engine produces, plain or
  streamed, as its stream of Events, before the client. It yields Events: it may hold text back
  across chunk boundaries (as stop strings are held back), redact, or stop the answer with
  finish_reason "content_filter" (the engine then stops generating). `TextGuard` does the
  bookkeeping for guards that only read text: they implement `review(text, final) -> Verdict`.

The policy's version, a hash of both lists (each guard's class, `version` and settings), goes
into the consistency cache's key and into the system_fingerprint, so an answer cached under one
policy is never served under another. The cache stores the answer as the response guards let it
through, and a hit is replayed without running them again: a response guard must be a
deterministic function of the request and the text.

Reading order: the two protocols → TextGuard → the built-in guards → GuardPolicy (load, check, wrap).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Protocol, runtime_checkable

from hkllm.errors import UserError
from hkllm.safety.guard import GuardRefusal
from hkllm.serve.contract import ErrorEvent, Event, longest_stop_prefix
from hkllm.serve.protocol import ApiError, GenerationRequest

if TYPE_CHECKING:
    from hkllm.serve.keys import Key


@runtime_checkable
class RequestGuard(Protocol):
    version: str          # change it whenever what the guard lets through changes (cache, fingerprint)

    def check(self, request: GenerationRequest, key: Key
              ) -> GenerationRequest | None | Awaitable[GenerationRequest | None]:
        """None: pass; a GenerationRequest: go on with this one instead; raise ApiError: refuse."""
        ...


@runtime_checkable
class ResponseGuard(Protocol):
    version: str

    def wrap(self, events: AsyncIterator[Event], request: GenerationRequest, key: Key) -> AsyncIterator[Event]:
        """The answer's Events as the client will get them. An ErrorEvent is passed on as it is;
        to stop, yield a last Event with finish_reason "content_filter" and return."""
        ...


def refusal(message: str, param: str | None = None) -> ApiError:
    """The error a request guard raises to refuse: 400, OpenAI's shape, code "content_filter"."""
    return ApiError(400, message, "content_filter", param)


# -- guards that read text -----------------------------------------------------------------

@dataclass
class Verdict:
    release: str          # text to send now (possibly rewritten)
    hold: str = ""        # text kept back, unreviewed, until more arrives (ignored on the final piece)
    stop: bool = False    # end the answer after `release` (finish_reason "content_filter")


class TextGuard:
    """Base class for a ResponseGuard that only reads the answer's text. `review` gets the text
    not yet released (what it held back last time + the new piece) and says what to send, what
    to keep back and whether to stop; `final` is True on the answer's last piece."""

    version = "1"

    def review(self, text: str, final: bool) -> Verdict:
        raise NotImplementedError

    async def wrap(self, events: AsyncIterator[Event], request: GenerationRequest, key: Key) -> AsyncIterator[Event]:
        held = ""
        async for ev in events:
            if isinstance(ev, ErrorEvent):
                yield ev
                return
            final = ev.finish_reason is not None
            verdict = self.review(held + ev.text, final)
            held = "" if final else verdict.hold
            if verdict.stop:
                yield dataclasses.replace(ev, text=verdict.release, finish_reason="content_filter")
                return
            if verdict.release or final or ev.logprobs:
                yield dataclasses.replace(ev, text=verdict.release)


# -- built-in guards -------------------------------------------------------------------------

REQUEST_GUARDS: dict[str, type] = {}
RESPONSE_GUARDS: dict[str, type] = {}


def register_request_guard(name: str):
    def add(cls):
        REQUEST_GUARDS[name] = cls
        return cls
    return add


def register_response_guard(name: str):
    def add(cls):
        RESPONSE_GUARDS[name] = cls
        return cls
    return add


@register_request_guard("refuse_words")
class RefuseWords:
    """Refuse a request whose text (any message, or the prompt) contains one of `words`
    (case-insensitive). Token-id prompts carry no text and pass."""

    version = "1"

    def __init__(self, words: list[str], message: str = "this request is outside the service's content policy"):
        self.words, self.message = [w.casefold() for w in words], message

    def check(self, request: GenerationRequest, key: Key) -> None:
        text = request.text().casefold()
        if any(w in text for w in self.words):
            raise refusal(self.message, "messages" if request.messages is not None else "prompt")


@register_request_guard("system_prompt")
class SystemPrompt:
    """Put the operator's instructions first in every chat: as the system message, or before
    the client's own system message when there is one."""

    version = "1"

    def __init__(self, text: str):
        self.text = text

    def check(self, request: GenerationRequest, key: Key) -> GenerationRequest | None:
        if request.messages is None:
            return None
        messages = list(request.messages)
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{self.text}\n\n{messages[0]['content']}"}
        else:
            messages.insert(0, {"role": "system", "content": self.text})
        return dataclasses.replace(request, messages=messages)


@register_response_guard("redact_words")
class RedactWords(TextGuard):
    """Replace each of `words` in the answer by `replacement`, also when one arrives split
    across chunks (the end of a piece that may grow into a word is held back, as stop strings
    are); with `stop: true`, end the answer before the first one instead."""

    version = "1"

    def __init__(self, words: list[str], replacement: str = "[REDACTED]", stop: bool = False):
        self.words, self.replacement, self.stop = [w for w in words if w], replacement, stop
        self.pattern = re.compile("|".join(map(re.escape, sorted(self.words, key=len, reverse=True))))

    def review(self, text: str, final: bool) -> Verdict:
        if not self.words:
            return Verdict(text)
        cut = len(text) if final else len(text) - longest_stop_prefix(text, self.words)
        for m in self.pattern.finditer(text):
            if m.start() < cut < m.end():       # a whole word that runs into the held-back end: release it
                cut = m.end()
        if self.stop and (m := self.pattern.search(text, 0, cut)):
            return Verdict(text[:m.start()], stop=True)
        return Verdict(self.pattern.sub(lambda _: self.replacement, text[:cut]), text[cut:])


# -- the policy: both lists, loaded from YAML ----------------------------------------------------

class GuardPolicy:
    """The guards a server runs, in order, and the policy's version (None when there are none)."""

    def __init__(self, request_guards: list | tuple = (), response_guards: list | tuple = ()):
        self.request_guards, self.response_guards = list(request_guards), list(response_guards)
        for g in self.request_guards:
            _require(g, RequestGuard, "request guard", "check(request, key)")
        for g in self.response_guards:
            _require(g, ResponseGuard, "response guard", "wrap(events, request, key)")
        described = [[kind, _describe(g)] for kind, gs in (("request", self.request_guards),
                                                            ("response", self.response_guards)) for g in gs]
        self.version = ("g" + hashlib.sha256(json.dumps(described, sort_keys=True, ensure_ascii=False,
                                                        default=repr).encode()).hexdigest()[:11]
                        if described else None)

    @classmethod
    def load(cls, source: str | Path | dict | GuardPolicy | None) -> GuardPolicy:
        """A policy from a YAML file, from the same mapping in Python, or none at all."""
        if source is None or isinstance(source, GuardPolicy):
            return source or cls()
        where = "guards"
        if not isinstance(source, dict):
            import yaml

            where = str(source)
            try:
                source = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as e:
                raise UserError(f"{where}: cannot read the guard policy ({e})") from e
            if not isinstance(source, dict):
                raise UserError(f"{where}: a guard policy is a mapping with request_guards and response_guards")
        unknown = set(source) - {"request_guards", "response_guards"}
        if unknown:
            raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r}; use request_guards and response_guards")
        return cls(_build(source.get("request_guards"), REQUEST_GUARDS, f"{where}: request_guards"),
                   _build(source.get("response_guards"), RESPONSE_GUARDS, f"{where}: response_guards"))

    async def check(self, request: GenerationRequest, key: Key) -> GenerationRequest:
        """Every request guard in order; each sees the request as the ones before it left it."""
        for guard in self.request_guards:
            try:
                changed = guard.check(request, key)
                if inspect.isawaitable(changed):
                    changed = await changed
            except GuardRefusal as e:      # hkllm.safety's guards cannot raise ApiError (a layer above them)
                raise refusal(e.message, e.param) from e
            if changed is not None:
                request = changed
        return request

    def wrap(self, events: AsyncIterator[Event], request: GenerationRequest, key: Key) -> list[AsyncIterator[Event]]:
        """The answer's stream through every response guard: [engine's events, first guard's, ...];
        the last is what the client gets. All of them are closed when the answer ends."""
        layers = [events]
        for guard in self.response_guards:
            layers.append(guard.wrap(layers[-1], request, key))
        return layers


def _require(guard, protocol, kind: str, method: str) -> None:
    if not isinstance(guard, protocol):
        raise TypeError(f"{type(guard).__name__} is not a {kind}: it needs `version` and `{method}`")


def _describe(guard) -> list:
    cls = type(guard)
    settings = getattr(guard, "settings", None)
    if settings is None:
        settings = {k: v for k, v in vars(guard).items() if not k.startswith("_")} if hasattr(guard, "__dict__") else {}
    return [f"{cls.__module__}:{cls.__qualname__}", str(getattr(guard, "version", "")), settings]


def _build(entries: Any, registry: dict[str, type], where: str) -> list:
    """[{name: ..., **settings}, ...] → guard objects, each error naming the entry."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise UserError(f"{where}: a list of guards, each `- name: ...` with its settings")
    guards = []
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(f"{at}: each guard is a mapping with a `name`")
        name, settings = entry["name"], {k: v for k, v in entry.items() if k != "name"}
        cls = _resolve(name, registry, at)
        try:
            guard = cls(**settings)
        except TypeError as e:
            raise UserError(f"{at}: {name}: {e}") from e
        guard.settings = settings       # what the policy's version is made of
        guards.append(guard)
    return guards


def _resolve(name: str, registry: dict[str, type], at: str) -> type:
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"{at}: cannot import {name} ({e})") from e
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"{at}: unknown guard {name!r}; {hint}known: {', '.join(sorted(registry))}, "
                        "or package.module:Class")
    return registry[name]
