"""The HTTP gateway: OpenAI's API in front of any engine (embedded or upstream).

    app = build_app(LocalEngine("runs/quickstart/dpo"), Settings(state_dir=Path("hkllm-serve")))

This layer is thin, as in vLLM's entrypoints: it checks keys and limits, answers from the
consistency cache when it can, hands the rest to the engine, streams (SSE) or collects the
answer, and records metrics and the audit log. Engines provide `chat`, `complete`, `stats`,
`ready` and the attributes `name`, `version`, `template_version`, `max_model_len`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hkllm.serve.audit import AuditLog
from hkllm.serve.cache import ResponseCache, cache_key
from hkllm.serve.engine import Generation, SamplingParams
from hkllm.serve.keys import Key, KeyStore
from hkllm.serve.limits import Admission, RateLimiter
from hkllm.serve.metrics import Metrics
from hkllm.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest, SamplingFields, validation_message

log = logging.getLogger("hkllm.serve")
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
ANONYMOUS = Key(id="anonymous", name="anonymous", created=0.0, revoked=None, rpm=None, tpm=None)


@dataclass
class Settings:
    state_dir: Path = Path("hkllm-serve")   # keys.sqlite, cache.sqlite, audit.sqlite
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


@dataclass
class Outcome:
    """One finished answer, as cached and as sent."""
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[dict] = field(default_factory=list)
    cached: bool = False


def build_app(engine, settings: Settings) -> FastAPI:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    keys = KeyStore(settings.state_dir / "keys.sqlite")
    cache = ResponseCache(settings.state_dir / "cache.sqlite", settings.cache_ttl_s)
    audit = AuditLog(settings.state_dir / "audit.sqlite", settings.audit_prompts)
    limiter = RateLimiter(settings.rpm, settings.tpm)
    admission = Admission(engine.max_batch + settings.max_queue)
    metrics = Metrics(engine.stats)
    fingerprint = f"{engine.version}-{engine.template_version}"
    max_prompt = settings.max_prompt_tokens or engine.max_model_len

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        audit.close()          # flush the rows still queued
        if hasattr(engine, "aclose"):
            await engine.aclose()

    app = FastAPI(title="hkllm serve", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API for a Hong Kong-localized model · 香港本地化模型的 OpenAI 相容介面")
    app.state.engine, app.state.audit = engine, audit

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        endpoint = ENDPOINTS.get(request.url.path, request.url.path)
        metrics.requests.labels(endpoint, str(exc.status)).inc()
        if exc.status == 429:
            metrics.rejections.labels(exc.code or "429").inc()
        if endpoint in ENDPOINTS.values() and not getattr(request.state, "audited", False):
            audit.log(time=time.time(), request_id=uuid.uuid4().hex, key_id=getattr(request.state, "key_id", None),
                      endpoint=endpoint, model=engine.name, model_version=fingerprint, status=exc.status,
                      cache_hit=False, finish_reason=exc.code)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        return await _api_error(request, ApiError(400, message, "invalid_request", param))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return await _api_error(request, ApiError(500, f"internal error: {type(exc).__name__}", "internal_error"))

    def authenticate(request: Request) -> Key:
        if not settings.auth:
            request.state.key_id = ANONYMOUS.id
            return ANONYMOUS
        header = request.headers.get("authorization", "")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else ""
        key = keys.lookup(secret) if secret else None
        if key is None:
            raise ApiError(401, "missing or invalid API key (create one with `hkllm keys create`)", "invalid_api_key")
        request.state.key_id = key.id
        return key

    # -- plain endpoints -------------------------------------------------------------------

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if await engine.ready():
            return {"status": "ready", "model": engine.name, "version": fingerprint}
        return JSONResponse({"status": "not ready"}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(key: Key = Depends(authenticate)):
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "hkllm",
                                            "max_model_len": engine.max_model_len, "version": fingerprint}]}

    # -- generation ------------------------------------------------------------------------

    def sampling(body: SamplingFields, max_tokens: int | None, default_max: int, logprobs: int | None = None):
        if body.model and body.model != engine.name:
            raise ApiError(404, f"model '{body.model}' does not exist; this server serves '{engine.name}'",
                           "model_not_found", "model")
        if max_tokens is not None and max_tokens > settings.max_output_tokens:
            raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {settings.max_output_tokens}",
                           "max_tokens_too_large", "max_tokens")
        if settings.consistency:
            temperature, top_p, seed = 0.0, 1.0, settings.seed
        else:
            temperature = engine.default_temperature if body.temperature is None else body.temperature
            top_p = engine.default_top_p if body.top_p is None else body.top_p
            seed = body.seed
        return SamplingParams(max_tokens=max_tokens or min(default_max, settings.max_output_tokens),
                              temperature=temperature, top_p=top_p, seed=seed, stop=body.stops(), logprobs=logprobs)

    def check_length(gen: Generation, params: SamplingParams, explicit_max: bool) -> SamplingParams:
        """400 for prompts over the limit; shorten a default max_tokens to fit the context."""
        if gen.prompt_tokens is None:        # an upstream engine checks for itself
            return params
        if gen.prompt_tokens > max_prompt:
            raise ApiError(400, f"prompt is {gen.prompt_tokens} tokens; the limit is {max_prompt}",
                           "context_length_exceeded", "messages")
        room = (engine.max_model_len or 1 << 30) - gen.prompt_tokens
        if params.max_tokens > room:
            if explicit_max:
                raise ApiError(400, f"prompt ({gen.prompt_tokens} tokens) + max_tokens ({params.max_tokens}) exceeds "
                               f"the model's context of {engine.max_model_len} tokens", "context_length_exceeded",
                               "max_tokens")
            params = SamplingParams(**{**params.__dict__, "max_tokens": max(1, room)})
        return params

    def lookup(parts: dict) -> tuple[str | None, dict | None]:
        """The consistency cache's key for a request and its cached answer, if any."""
        if not (settings.consistency and settings.cache):
            return None, None
        ckey = cache_key(**parts)
        hit = cache.get(ckey)
        metrics.cache.labels("hit" if hit else "miss").inc()
        return ckey, hit

    def remember(ckey: str | None, outcome: Outcome) -> None:
        """Cache a finished answer (not one cut short by an error or a disconnect)."""
        if ckey and outcome.finish_reason in ("stop", "length"):
            cache.put(ckey, {k: v for k, v in outcome.__dict__.items() if k != "cached"})

    async def begin(make: Callable[[SamplingParams], Awaitable[Generation]], params: SamplingParams,
                    explicit_max: bool) -> Generation:
        """Admit a request into the engine (or 429) and return its not-yet-started Generation,
        with max_tokens fitted to the context."""
        admission.acquire()
        try:
            gen = await make(params)
            checked = check_length(gen, params, explicit_max)
            return await make(checked) if checked is not params else gen
        except ApiError:
            admission.release()
            raise
        except ValueError as e:
            admission.release()
            raise ApiError(400, str(e), "invalid_request") from e

    async def run(request: Request, key: Key, endpoint: str, prompt_text: str, parts: dict,
                  make: Callable[[SamplingParams], Awaitable[Generation]], params: SamplingParams,
                  explicit_max: bool) -> Outcome:
        """One non-streamed answer: from the cache, or generated (cancelled if the client leaves)."""
        start = time.perf_counter()
        ckey, hit = lookup(parts)
        if hit:
            outcome = Outcome(**{**hit, "cached": True})
            finish(key, endpoint, prompt_text, outcome, start, None, 200)
            return outcome
        gen = await begin(make, params, explicit_max)
        try:
            outcome = Outcome(text=gen.echo_text, prompt_tokens=gen.prompt_tokens or 0,
                              logprobs=list(gen.echo_logprobs))
            first: list[float] = []

            async def collect():
                async for ev in gen.events:
                    if not first and (ev.text or ev.finish_reason):
                        first.append(time.perf_counter())
                    outcome.text += ev.text
                    outcome.logprobs += ev.logprobs
                    outcome.completion_tokens = ev.completion_tokens
                    if ev.finish_reason:
                        outcome.finish_reason = ev.finish_reason
                        outcome.prompt_tokens = ev.prompt_tokens or outcome.prompt_tokens
                        if ev.finish_reason == "error":
                            raise RuntimeError(ev.text)

            task = asyncio.create_task(collect())
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if task.done():
                    break
                if await request.is_disconnected():
                    task.cancel()
                    finish(key, endpoint, prompt_text, outcome, start, None, 499, count=False)
                    request.state.audited = True
                    raise ApiError(499, "client closed the request", "client_disconnected")
                if time.perf_counter() - start > settings.request_timeout_s:
                    task.cancel()
                    finish(key, endpoint, prompt_text, outcome, start, None, 504, count=False)
                    request.state.audited = True
                    raise ApiError(504, f"generation took longer than {settings.request_timeout_s:g} s",
                                   "timeout")
            task.result()
        finally:
            admission.release()
        remember(ckey, outcome)
        finish(key, endpoint, prompt_text, outcome, start, first[0] if first else None, 200)
        return outcome

    def finish(key: Key, endpoint: str, prompt_text: str, outcome: Outcome, start: float, first: float | None,
               status: int, count: bool = True) -> None:
        """Metrics, token spend and the audit row for one request (count=False: an ApiError
        about to be raised is counted by its handler)."""
        now = time.perf_counter()
        limiter.spend(key.id, outcome.prompt_tokens + outcome.completion_tokens)
        if count:
            metrics.requests.labels(endpoint, str(status)).inc()
        metrics.e2e.observe(now - start)
        if not outcome.cached:
            metrics.prompt_tokens.inc(outcome.prompt_tokens)
            metrics.generation_tokens.inc(outcome.completion_tokens)
            if first is not None:
                metrics.ttft.observe(first - start)
                if outcome.completion_tokens > 1:
                    metrics.tpot.observe((now - first) / (outcome.completion_tokens - 1))
        audit.log(time=time.time(), request_id=uuid.uuid4().hex, key_id=key.id, endpoint=endpoint, model=engine.name,
                  model_version=fingerprint, status=status, prompt_tokens=outcome.prompt_tokens,
                  completion_tokens=outcome.completion_tokens, latency_ms=round((now - start) * 1000, 2),
                  ttft_ms=round((first - start) * 1000, 2) if first else None, cache_hit=outcome.cached,
                  finish_reason=outcome.finish_reason, prompt=prompt_text)

    async def stream(request: Request, key: Key, endpoint: str, prompt_text: str, parts: dict,
                     make: Callable[[SamplingParams], Awaitable[Generation]], params: SamplingParams,
                     explicit_max: bool, chunk: Callable[[str, str | None], dict], usage_chunk: Callable | None):
        """A streamed (SSE) answer. Starlette cancels the generator when the client disconnects,
        which cancels the engine's work for this request."""
        start = time.perf_counter()
        ckey, hit = lookup(parts)
        gen = None
        if not hit:
            gen = await begin(make, params, explicit_max)

        def sse(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        # Content chunks are most of a stream: splice each text into a frame serialized once.
        left, right = json.dumps(chunk("\0", None), ensure_ascii=False).split('"\\u0000"')

        def content(text: str) -> str:
            return f"data: {left}{json.dumps(text, ensure_ascii=False)}{right}\n\n"

        async def body():
            outcome = Outcome(**{**hit, "cached": True}) if hit else Outcome(prompt_tokens=gen.prompt_tokens or 0)
            first = None
            status = 200
            try:
                yield sse(chunk("", None, first=True))
                if hit:
                    first = time.perf_counter()
                    yield sse(chunk(outcome.text, None))
                else:
                    async for ev in gen.events:
                        if first is None:
                            first = time.perf_counter()
                        if ev.finish_reason == "error":
                            status = 500
                            yield sse({"error": {"message": ev.text, "type": "server_error", "code": "engine_error"}})
                            return
                        outcome.text += ev.text
                        outcome.completion_tokens = ev.completion_tokens
                        if ev.text:
                            yield content(ev.text)
                        if ev.finish_reason:
                            outcome.finish_reason = ev.finish_reason
                            outcome.prompt_tokens = ev.prompt_tokens or outcome.prompt_tokens
                        if time.perf_counter() - start > settings.request_timeout_s:
                            status = 504
                            yield sse({"error": {"message": "generation timed out", "type": "timeout",
                                                 "code": "timeout"}})
                            return
                    remember(ckey, outcome)
                yield sse(chunk("", outcome.finish_reason))
                if usage_chunk:
                    yield sse(usage_chunk(outcome))
                yield "data: [DONE]\n\n"
            except ApiError as e:        # an upstream refused after the stream had begun
                status = e.status
                yield sse({"error": {"message": e.message, "type": ApiError.TYPES.get(e.status, "server_error"),
                                     "code": e.code}})
            except asyncio.CancelledError:
                status = 499
                raise
            finally:
                if gen is not None:
                    await gen.events.aclose()
                    admission.release()
                finish(key, endpoint, prompt_text, outcome, start, first, status)

        headers = {"X-HKLLM-Cache": "hit" if hit else "miss"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    def usage(outcome: Outcome) -> dict:
        return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
                "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request, key: Key = Depends(authenticate)):
        limiter.admit(key.id, key.rpm, key.tpm)
        explicit = body.max_completion_tokens or body.max_tokens
        params = sampling(body, explicit, settings.default_max_tokens)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        parts = dict(endpoint="chat", model=engine.version, template=engine.template_version, messages=messages,
                     max_tokens=params.max_tokens, stop=list(params.stop),
                     **({} if settings.consistency else {"t": params.temperature, "p": params.top_p}))
        prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        make = lambda p: engine.chat(messages, p, stream=body.stream)  # noqa: E731
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": rid, "created": created, "model": engine.name, "system_fingerprint": fingerprint}
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))

            def chunk(text, finish_reason, first=False):
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

            usage_chunk = (lambda o: {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(o)}) \
                if include_usage else None
            return await stream(request, key, "chat", prompt_text, parts, make, params, bool(explicit), chunk,
                                usage_chunk)
        outcome = await run(request, key, "chat", prompt_text, parts, make, params, bool(explicit))
        return JSONResponse({**head, "object": "chat.completion", "cached": outcome.cached,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.text},
                                          "logprobs": None, "finish_reason": outcome.finish_reason}],
                             "usage": usage(outcome)}, headers={"X-HKLLM-Cache": "hit" if outcome.cached else "miss"})

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, key: Key = Depends(authenticate)):
        limiter.admit(key.id, key.rpm, key.tpm)
        params = sampling(body, body.max_tokens, 16, logprobs=body.logprobs)
        prompts = body.prompts()
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": rid, "created": created, "model": engine.name, "system_fingerprint": fingerprint}

        def parts(prompt):
            return dict(endpoint="completions", model=engine.version, prompt=prompt, max_tokens=params.max_tokens,
                        stop=list(params.stop), echo=body.echo, logprobs=body.logprobs,
                        **({} if settings.consistency else {"t": params.temperature, "p": params.top_p}))

        def make_for(prompt):
            return lambda p: engine.complete(prompt, p, echo=body.echo, stream=body.stream)

        def text_of(prompt):
            return prompt if isinstance(prompt, str) else f"<{len(prompt)} token ids>"

        if body.stream:
            if len(prompts) > 1 or body.echo:
                raise ApiError(400, "streaming supports one prompt and no echo", "unsupported", "stream")

            def chunk(text, finish_reason, first=False):
                return {**head, "object": "text_completion",
                        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}

            return await stream(request, key, "completions", text_of(prompts[0]), parts(prompts[0]),
                                make_for(prompts[0]), params, body.max_tokens is not None, chunk, None)
        outcomes = await asyncio.gather(*[run(request, key, "completions", text_of(p), parts(p), make_for(p), params,
                                              body.max_tokens is not None) for p in prompts])
        choices = [{"index": i, "text": o.text, "finish_reason": o.finish_reason,
                    "logprobs": legacy_logprobs(o.logprobs) if body.logprobs is not None else None}
                   for i, o in enumerate(outcomes)]
        total = Outcome(prompt_tokens=sum(o.prompt_tokens for o in outcomes),
                        completion_tokens=sum(o.completion_tokens for o in outcomes))
        return JSONResponse({**head, "object": "text_completion", "cached": all(o.cached for o in outcomes),
                             "choices": choices, "usage": usage(total)})

    return app


def legacy_logprobs(entries: list[dict]) -> dict:
    """Per-token entries → the completions API's logprobs object (as lm-evaluation-harness reads it)."""
    offsets, at = [], 0
    for e in entries:
        at = e.get("offset", at)
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [e["top"] for e in entries], "text_offset": offsets}
