"""The request path of `hkllm serve`: the same stages, in the same order, for both endpoints and
for both kinds of answer (one JSON body, or an SSE stream).

    validate → authenticate + limits → request guards → watermark → cache → engine → response guards → audit

1. validate: the body's size and UTF-8 (app.py's BodyCheck, before anything parses it), its
   schema and the fields this server does not implement (protocol.py);
2. authenticate + limits: the API key, its requests and tokens per minute, the model name and
   max_tokens against the server's limits (`admit`, `chat_request`, `completion_requests`);
3. request guards: every request, structured, before the cache (guards.py; may refuse or rewrite);
   then the watermark processor, last in the request's logits processors (watermark.py);
4. cache: consistency mode's answers, keyed by everything that decides one, the guard policy included;
5. engine: a bounded queue (429 when full), the prompt's length against the context (400), then
   the engine's Events (contract.py);
6. response guards: the engine's Events before the client (may hold back, redact or stop);
7. audit: metrics, token spend and one audit row per answer, in `flow`'s finally, with the
   watermark config id and the guards' verdicts (audit.py chains the rows by hash).

Stages 3-6 build a Reply (`answer`); `flow` is the one event loop every answer goes through
(first-token time, timeout, the outcome, the cache write, the audit row); `collect` drains it
into a JSON answer, `stream` writes it as server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from hkllm.errors import UserError
from hkllm.safety.guard import audit_scope
from hkllm.serve.audit import AuditLog
from hkllm.serve.cache import ResponseCache, cache_key
from hkllm.serve.contract import Engine, ErrorEvent, Event, Generation, SamplingParams, missing_members
from hkllm.serve.guards import GuardPolicy
from hkllm.serve.keys import STATE_DIR, Key, KeyStore
from hkllm.serve.limits import Admission, RateLimiter
from hkllm.serve.metrics import Metrics
from hkllm.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest, GenerationRequest, SamplingFields
from hkllm.serve.watermark import Watermarker

log = logging.getLogger("hkllm.serve")
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
ANONYMOUS = Key(id="anonymous", name="anonymous", created=0.0, revoked=None, rpm=None, tpm=None)
CACHEABLE = ("stop", "length", "content_filter")     # finished answers (not cut short by an error or a disconnect)


@dataclass
class Settings:
    state_dir: Path = STATE_DIR              # keys.sqlite, cache.sqlite, audit.sqlite
    auth: bool = True
    consistency: bool = True                # greedy + fixed seed + response cache
    cache: bool = True                      # the response cache of consistency mode (off: measure the engine)
    cache_ttl_s: float = 24 * 3600
    max_queue: int = 64                     # requests that may wait beyond the engine's batch
    max_prompt_tokens: int | None = None    # default: the model's context length
    max_output_tokens: int = 1024
    default_max_tokens: int = 256           # chat; completions default to 16, as OpenAI's do
    request_timeout_s: float = 300.0
    rpm: int = 0                            # default per-key limits (0 = none); keys may set their own
    tpm: int = 0
    audit_prompts: bool = True
    seed: int = 0                           # the fixed seed of consistency mode
    guards: str | Path | dict | GuardPolicy | None = None   # the guard policy: a YAML file (guards.py)
    max_body_bytes: int | None = None       # default: sized for the context window (default_max_body)
    watermark: bool = True                  # mark every answer of the embedded engine (watermark.py)
    watermark_config: dict | None = None    # hkllm.safety.watermark.WatermarkConfig fields (default: its defaults)
    watermark_exempt_keys: tuple[str, ...] = ()   # key ids or names whose `"watermarking": false` is honoured
    app: bool = True                        # 港文通 at /app (hkllm/app/web.py)
    app_upload_ttl_days: float = 30.0       # uploads are hard-deleted with their index rows after this
    app_max_upload_bytes: int = 20 << 20    # an upload (PDF, DOCX, HTML, text) over this is a 413
    app_secure_cookies: bool = False        # Secure cookies (HTTPS only): `hkllm serve` sets it off loopback


def default_max_body(max_model_len: int | None) -> int:
    """Room for a whole context window as JSON (32 bytes per token covers CJK text escaped as
    \\uXXXX and token-id lists) plus 1 MiB for the rest of the body: 1.03 MiB for a 1k context,
    5 MiB for 128k. Anything longer could only be refused after it was read and tokenized."""
    return (1 << 20) + 32 * (max_model_len or 131072)


@dataclass
class Outcome:
    """One finished answer, as cached and as sent."""
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[dict] = field(default_factory=list)
    cached: bool = False


@dataclass
class Reply:
    """One answer on its way to the client: where its Events come from and what its audit row needs."""
    request: GenerationRequest
    key: Key
    audit_text: str                   # the request as the client sent it
    layers: list                      # the engine's Events, then each response guard's; the last is the client's
    outcome: Outcome
    cache_key: str | None
    start: float
    watermark: str | None = None      # the audit row's watermark entry (config id:scheme, "none", "exempt")
    guard_records: list = field(default_factory=list)   # the guards' verdicts, filled while the answer runs
    admitted: bool = False            # holds a place in the engine's queue until closed
    first: float | None = None        # when the first text (or the end) arrived
    abort: ApiError | None = None     # why `collect` cancelled it (504, 499)

    @property
    def events(self) -> AsyncIterator[Event]:
        return self.layers[-1]


async def _replay(hit: dict) -> AsyncIterator[Event]:
    yield Event(text=hit["text"], finish_reason=hit["finish_reason"], completion_tokens=hit["completion_tokens"],
                logprobs=hit["logprobs"], prompt_tokens=hit["prompt_tokens"])


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Gateway:
    """The stores (keys, cache, audit, limits, metrics), the guard policy and the engine, and the
    stages of the request path between them."""

    def __init__(self, engine: Engine, settings: Settings):
        if missing := missing_members(engine):
            raise TypeError(f"{type(engine).__name__} does not implement the engine contract: no {', '.join(missing)}")
        self.engine, self.settings = engine, settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.keys = KeyStore(settings.state_dir / "keys.sqlite")
        self.cache = ResponseCache(settings.state_dir / "cache.sqlite", settings.cache_ttl_s)
        self.audit = AuditLog(settings.state_dir / "audit.sqlite", settings.audit_prompts)
        self.limiter = RateLimiter(settings.rpm, settings.tpm)
        self.admission = Admission(engine.max_batch + settings.max_queue)
        self.metrics = Metrics(engine.stats)
        self.guards = GuardPolicy.load(settings.guards)
        self.watermark = self._watermarker(engine, settings)
        self.fingerprint = "-".join(filter(None, (engine.version, engine.template_version, self.guards.version,
                                                  self.watermark and self.watermark.config_id)))
        self.max_prompt = settings.max_prompt_tokens or engine.max_model_len
        self.max_body_bytes = settings.max_body_bytes or default_max_body(engine.max_model_len)

    @staticmethod
    def _watermarker(engine: Engine, settings: Settings) -> Watermarker | None:
        if not settings.watermark:
            return None
        if not getattr(engine, "runs_logits_processors", True):
            log.warning("watermark: the %s engine samples on its own; its answers are not marked here "
                        "(turn on the upstream's own watermark, e.g. vLLM --watermark-config)", engine.kind)
            return None
        from hkllm.safety.watermark import WatermarkConfig

        try:
            config = WatermarkConfig.from_dict(settings.watermark_config or {})
        except (TypeError, ValueError) as e:
            raise UserError(f"watermark_config: {e}") from e
        return Watermarker(settings.state_dir, getattr(engine, "tokenizer", None), config,
                           tuple(settings.watermark_exempt_keys))

    def moderation_guard(self):
        """The guard POST /v1/moderations answers with: the request guard's own when the policy
        runs one (hkllm.safety.guard:RequestModeration), else the default policy's."""
        from hkllm.safety.guard import guard_for

        for g in self.guards.request_guards:
            if hasattr(g, "guard") and hasattr(g.guard, "moderate"):
                return g.guard
        return guard_for(None)

    # -- 2. authenticate + limits ------------------------------------------------------------

    def authenticate(self, http: Request) -> Key:
        if not self.settings.auth:
            http.state.key_id = ANONYMOUS.id
            return ANONYMOUS
        header = http.headers.get("authorization", "")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else ""
        key = self.keys.lookup(secret) if secret else None
        if key is None:
            raise ApiError(401, "missing or invalid API key (create one with `hkllm keys create`)", "invalid_api_key")
        http.state.key_id = key.id
        return key

    def admit(self, http: Request, body: SamplingFields) -> Key:
        """The rest of validation (fields not implemented here), then the key and its rate limits."""
        body.check_supported()
        key = self.authenticate(http)
        self.limiter.admit(key.id, key.rpm, key.tpm)
        return key

    def sampling(self, body: SamplingFields, max_tokens: int | None, default_max: int,
                 logprobs: int | None = None) -> SamplingParams:
        s, engine = self.settings, self.engine
        if body.model and body.model != engine.name:
            raise ApiError(404, f"model '{body.model}' does not exist; this server serves '{engine.name}'",
                           "model_not_found", "model")
        if max_tokens is not None and max_tokens > s.max_output_tokens:
            raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {s.max_output_tokens}",
                           "max_tokens_too_large", "max_tokens")
        if s.consistency:
            temperature, top_p, seed = 0.0, 1.0, s.seed
        else:
            temperature = engine.default_temperature if body.temperature is None else body.temperature
            top_p = engine.default_top_p if body.top_p is None else body.top_p
            seed = body.seed
        return SamplingParams(max_tokens=max_tokens or min(default_max, s.max_output_tokens),
                              temperature=temperature, top_p=top_p, seed=seed, stop=body.stops(), logprobs=logprobs,
                              ignore_eos=body.ignore_eos)

    def chat_request(self, body: ChatCompletionRequest) -> GenerationRequest:
        explicit = body.max_completion_tokens or body.max_tokens
        return GenerationRequest("chat", self.sampling(body, explicit, self.settings.default_max_tokens),
                                 messages=[{"role": m.role, "content": m.text()} for m in body.messages],
                                 stream=body.stream, explicit_max=bool(explicit),
                                 watermark_opt_out=_opts_out(body))

    def completion_requests(self, body: CompletionRequest) -> list[GenerationRequest]:
        if body.stream and (body.echo or body.logprobs is not None):
            raise ApiError(400, "streaming supports no echo and no logprobs", "unsupported",
                           "echo" if body.echo else "logprobs")
        prompts = body.prompts()
        if body.stream and len(prompts) > 1:
            raise ApiError(400, "streaming supports one prompt", "unsupported", "stream")
        params = self.sampling(body, body.max_tokens, 16, logprobs=body.logprobs)
        return [GenerationRequest("completions", params, prompt=p, echo=body.echo, stream=body.stream,
                                  explicit_max=body.max_tokens is not None, watermark_opt_out=_opts_out(body))
                for p in prompts]

    # -- 3-6. request guards → cache → engine → response guards ------------------------------

    async def answer(self, key: Key, request: GenerationRequest) -> Reply:
        """A Reply whose Events are ready to flow: from the cache, or from the engine through the
        response guards. Raises ApiError for a refusal (guard, queue, length)."""
        start, audit_text = time.perf_counter(), request.text()
        records = audit_scope()            # the guards' verdicts for this request, for its audit row
        try:
            request = await self.guards.check(request, key)
        except ApiError as e:
            e.guard_records = records
            raise
        mark = None
        if self.watermark:
            request, mark = self.watermark.attach(request, key)
        if request.watermark_opt_out and mark != "exempt":
            records.append({"watermark": "client opt-out dropped" if self.watermark else "watermark off"})
        ckey, hit = self.lookup(request, mark)
        if hit:
            return Reply(request, key, audit_text, [_replay(hit)], Outcome(cached=True), None, start,
                         watermark=mark, guard_records=records)
        gen = await self.begin(request)
        layers = self.guards.wrap(gen.events, request, key)
        outcome = Outcome(text=gen.echo_text, prompt_tokens=gen.prompt_tokens or 0, logprobs=list(gen.echo_logprobs))
        return Reply(request, key, audit_text, layers, outcome, ckey, start, admitted=True, watermark=mark,
                     guard_records=records)

    async def answers(self, key: Key, requests: list[GenerationRequest]) -> list[Reply]:
        """`answer` for several prompts at once; if one is refused, the others are given back."""
        replies = await asyncio.gather(*(self.answer(key, r) for r in requests), return_exceptions=True)
        failed = [r for r in replies if isinstance(r, BaseException)]
        if failed:
            for r in replies:
                if isinstance(r, Reply):
                    await self.close(r)
            raise failed[0]
        return replies

    def cache_parts(self, r: GenerationRequest, watermark: str | None = None) -> dict:
        """Everything that decides an answer, as the cache key is made of it."""
        p, s = r.params, self.settings
        common = dict(model=self.engine.version, max_tokens=p.max_tokens, stop=list(p.stop),
                      **({"ignore_eos": True} if p.ignore_eos else {}),
                      **({} if s.consistency else {"t": p.temperature, "p": p.top_p}),
                      **({"guards": self.guards.version} if self.guards.version else {}),
                      **({"watermark": watermark} if watermark else {}))
        if r.messages is not None:
            return dict(endpoint="chat", template=self.engine.template_version, messages=r.messages, **common)
        return dict(endpoint="completions", prompt=r.prompt, echo=r.echo, logprobs=p.logprobs, **common)

    def lookup(self, request: GenerationRequest, watermark: str | None = None) -> tuple[str | None, dict | None]:
        """The consistency cache's key for a request and its cached answer, if any."""
        if not (self.settings.consistency and self.settings.cache):
            return None, None
        ckey = cache_key(**self.cache_parts(request, watermark))
        hit = self.cache.get(ckey)
        self.metrics.cache.labels("hit" if hit else "miss").inc()
        return ckey, hit

    def remember(self, ckey: str | None, outcome: Outcome) -> None:
        if ckey and outcome.finish_reason in CACHEABLE:
            self.cache.put(ckey, {k: v for k, v in outcome.__dict__.items() if k != "cached"})

    async def begin(self, request: GenerationRequest) -> Generation:
        """Admit a request into the engine (or 429) and return its not-yet-started Generation,
        with max_tokens fitted to the context."""
        self.admission.acquire()
        try:
            gen = await self._submit(request, request.params)
            params = self.check_length(gen, request)
            return await self._submit(request, params) if params is not request.params else gen
        except ValueError as e:
            self.admission.release()
            raise ApiError(400, str(e), "invalid_request") from e
        except BaseException:
            self.admission.release()
            raise

    def _submit(self, r: GenerationRequest, params: SamplingParams):
        if r.messages is not None:
            return self.engine.chat(r.messages, params, stream=r.stream)
        return self.engine.complete(r.prompt, params, echo=r.echo, stream=r.stream)

    def check_length(self, gen: Generation, request: GenerationRequest) -> SamplingParams:
        """400 for prompts over the limit; shorten a default max_tokens to fit the context."""
        params, n = request.params, gen.prompt_tokens
        if n is None:        # an upstream engine checks for itself
            return params
        if n > self.max_prompt:
            raise ApiError(400, f"prompt is {n} tokens; the limit is {self.max_prompt}", "context_length_exceeded",
                           "messages" if request.messages is not None else "prompt")
        room = (self.engine.max_model_len or 1 << 30) - n
        if params.max_tokens > room:
            if request.explicit_max:
                raise ApiError(400, f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
                               f"context of {self.engine.max_model_len} tokens", "context_length_exceeded",
                               "max_tokens")
            params = replace(params, max_tokens=max(1, room))
        return params

    async def close(self, reply: Reply) -> None:
        """Stop the answer's generators (the outermost first; the engine's stops generating) and
        give back its place in the queue."""
        for layer in reversed(reply.layers):
            if hasattr(layer, "aclose"):
                await layer.aclose()
        if reply.admitted:
            reply.admitted = False
            self.admission.release()

    # -- the event flow: both kinds of answer ------------------------------------------------

    async def flow(self, reply: Reply) -> AsyncIterator[Event]:
        """Every answer, plain or streamed, passes here exactly once. Yields the client's Events;
        the last one is an ErrorEvent when the answer failed (engine error, timeout). Keeps the
        outcome, caches a finished answer, and writes metrics and the audit row at the end,
        whatever the end (a client that left counts as 499)."""
        out, status = reply.outcome, None
        deadline = reply.start + self.settings.request_timeout_s
        try:
            async for ev in reply.events:
                if reply.first is None and (ev.text or ev.finish_reason):
                    reply.first = time.perf_counter()
                if isinstance(ev, ErrorEvent):
                    status = ev.status
                    yield ev
                    return
                out.text += ev.text
                if ev.logprobs:
                    out.logprobs += ev.logprobs
                out.completion_tokens = ev.completion_tokens
                if ev.finish_reason:
                    out.finish_reason = ev.finish_reason
                    out.prompt_tokens = ev.prompt_tokens or out.prompt_tokens
                yield ev
                if not ev.finish_reason and time.perf_counter() > deadline:
                    status = 504
                    yield ErrorEvent(message=f"generation took longer than {self.settings.request_timeout_s:g} s",
                                     status=504, code="timeout")
                    return
            status = 200
            self.remember(reply.cache_key, out)
        except ApiError as e:          # raised by a guard, or by an engine that broke the contract
            status = e.status
            yield ErrorEvent(message=e.message, status=e.status, code=e.code or "error")
        except Exception as e:         # a bug: answered in OpenAI's shape, logged with its traceback
            log.exception("error while answering")
            status = 500
            yield ErrorEvent(message=f"internal error: {type(e).__name__}", status=500, code="internal_error")
        finally:
            if status is None:         # cancelled by `collect`, or the client went away
                status = reply.abort.status if reply.abort else 499
            await self.close(reply)
            self.finish(reply, status)

    async def collect(self, reply: Reply, http: Request) -> Outcome:
        """A plain answer: the flow drained into the outcome, while watching for the client
        leaving (499) and the timeout (504), which cancel the generation."""
        task = asyncio.create_task(self._drain(reply))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if task.done():
                    break
                if await http.is_disconnected():
                    reply.abort = ApiError(499, "client closed the request", "client_disconnected")
                elif time.perf_counter() - reply.start > self.settings.request_timeout_s:
                    reply.abort = ApiError(504, f"generation took longer than {self.settings.request_timeout_s:g} s",
                                           "timeout")
                else:
                    continue
                break
        finally:
            if not task.done():        # aborted above, or this request itself was cancelled
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        error = reply.abort
        if error is None and (failed := task.result()) is not None:
            error = ApiError(failed.status, failed.message, failed.code)
        if error is not None:
            error.recorded = True      # flow's audit row has it: the error handler only answers
            raise error
        return reply.outcome

    async def collect_all(self, replies: list[Reply], http: Request) -> list[Outcome]:
        """`collect` for several replies at once; the first error cancels the rest."""
        if len(replies) == 1:
            return [await self.collect(replies[0], http)]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.collect(r, http)) for r in replies]
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        return [t.result() for t in tasks]

    async def _drain(self, reply: Reply) -> ErrorEvent | None:
        async with contextlib.aclosing(self.flow(reply)) as events:
            async for ev in events:
                if isinstance(ev, ErrorEvent):
                    return ev
        return None

    def stream(self, reply: Reply, fmt) -> StreamingResponse:
        """A streamed (SSE) answer. `fmt` makes the endpoint's chunks: `chunk(text, finish_reason,
        first=False)` and `usage_chunk(outcome)` (None: no usage chunk). Starlette cancels the
        body when the client disconnects, which cancels the engine's work for this request."""
        # Content chunks are most of a stream: splice each text into a frame serialized once.
        left, right = json.dumps(fmt.chunk("\0", None), ensure_ascii=False).split('"\\u0000"')

        async def body():
            yield sse(fmt.chunk("", None, first=True))
            async with contextlib.aclosing(self.flow(reply)) as events:
                async for ev in events:
                    if isinstance(ev, ErrorEvent):
                        yield sse(ApiError(ev.status, ev.message, ev.code).body())
                        return
                    if ev.text:
                        yield f"data: {left}{json.dumps(ev.text, ensure_ascii=False)}{right}\n\n"
            yield sse(fmt.chunk("", reply.outcome.finish_reason))
            if (usage := fmt.usage_chunk(reply.outcome)) is not None:
                yield sse(usage)
            yield "data: [DONE]\n\n"

        headers = {"X-HKLLM-Cache": "hit" if reply.outcome.cached else "miss"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    # -- 7. audit ----------------------------------------------------------------------------

    def finish(self, reply: Reply, status: int) -> None:
        """Metrics, token spend and the audit row for one answer."""
        now, out, start, first = time.perf_counter(), reply.outcome, reply.start, reply.first
        m = self.metrics
        self.limiter.spend(reply.key.id, out.prompt_tokens + out.completion_tokens)
        m.requests.labels(reply.request.endpoint, str(status)).inc()
        m.e2e.observe(now - start)
        if not out.cached:
            m.prompt_tokens.inc(out.prompt_tokens)
            m.generation_tokens.inc(out.completion_tokens)
            if first is not None:
                m.ttft.observe(first - start)
                if out.completion_tokens > 1:
                    m.tpot.observe((now - first) / (out.completion_tokens - 1))
        self.audit.log(time=time.time(), request_id=uuid.uuid4().hex, key_id=reply.key.id,
                       endpoint=reply.request.endpoint, model=self.engine.name, model_version=self.fingerprint,
                       status=status, prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                       latency_ms=round((now - start) * 1000, 2), ttft_ms=round((first - start) * 1000, 2) if first
                       else None, cache_hit=out.cached, finish_reason=out.finish_reason, prompt=reply.audit_text,
                       watermark=reply.watermark, guards=reply.guard_records or None)

    def record_error(self, endpoint: str, error: ApiError, key_id: str | None) -> None:
        """Metrics and, on the generation endpoints, the audit row of a request refused before
        its answer began (validation, key, limits, guards, queue, length)."""
        self.metrics.requests.labels(endpoint, str(error.status)).inc()
        if error.status == 429 or error.code == "content_filter":
            self.metrics.rejections.labels(error.code or str(error.status)).inc()
        if endpoint in ENDPOINTS.values():
            self.audit.log(time=time.time(), request_id=uuid.uuid4().hex, key_id=key_id, endpoint=endpoint,
                           model=self.engine.name, model_version=self.fingerprint, status=error.status,
                           cache_hit=False, finish_reason=error.code, guards=getattr(error, "guard_records", None))


def _opts_out(body: SamplingFields) -> bool:
    """The client sent `"watermarking": false` (honoured only for exempt keys: Watermarker.attach)."""
    return (body.model_extra or {}).get("watermarking") is False
