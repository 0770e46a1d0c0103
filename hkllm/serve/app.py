"""The HTTP layer: OpenAI's API in front of any engine (embedded or upstream).

    app = build_app(LocalEngine("runs/quickstart/dpo"), Settings(state_dir=Path("hkllm-serve")))

Thin, as vLLM's entrypoints are: each route is a few lines over the Gateway (gateway.py), which
holds the request path (validate → authenticate + limits → request guards → cache → engine →
response guards → audit) and talks to the engine only through its contract (contract.py).
What is here: the routes, the shapes of OpenAI's answers (ChatFormat, CompletionFormat), and
the answers to bad input, all in OpenAI's error shape and none a 5xx: a body too large (413,
before it is read), not UTF-8 (400), not valid JSON or not the schema (400 naming the field),
an unknown path or method (404, 405).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from hkllm.serve.contract import Engine
from hkllm.serve.gateway import ENDPOINTS, Gateway, Outcome, Settings  # noqa: F401  (Settings: re-exported)
from hkllm.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest, validation_message

log = logging.getLogger("hkllm.serve")


def build_app(engine: Engine, settings: Settings, extensions: tuple = ()) -> FastAPI:
    """The server. `extensions`: callables `(app, gateway)` that add routes over the same gateway
    (hkllm/app/web.py's `mount`); serve sits below them and does not import them."""
    gateway = Gateway(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        gateway.audit.close()          # flush the rows still queued
        await engine.aclose()

    app = FastAPI(title="hkllm serve", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API for a Hong Kong-localized model · 香港本地化模型的 OpenAI 相容介面")
    app.state.engine, app.state.audit, app.state.gateway = engine, gateway.audit, gateway
    paths = set()           # the routes' paths, filled in below: metrics label anything else "other"

    def endpoint(path: str) -> str:
        return ENDPOINTS.get(path) or (path if path in paths else "other")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        if not exc.recorded:
            gateway.record_error(endpoint(request.url.path), exc, getattr(request.state, "key_id", None))
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        return await _api_error(request, ApiError(400, message, "invalid_request", param))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        """Starlette's own errors (no such path, method not allowed, a body it could not parse)."""
        path = request.url.path[:200]
        message, code = {404: (f"no such path: {path}", "not_found"),
                         405: (f"{request.method} is not allowed on {path}", "method_not_allowed"),
                         400: ("the request body could not be parsed", "invalid_request")
                         }.get(exc.status_code, (str(exc.detail), None))
        error = ApiError(exc.status_code, message, code)
        gateway.record_error(endpoint(request.url.path), error, None)
        return error.response(headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return await _api_error(request, ApiError(500, f"internal error: {type(exc).__name__}", "internal_error"))

    app.add_middleware(BodyCheck, gateway=gateway, endpoint=endpoint)

    # -- plain endpoints -------------------------------------------------------------------

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if await engine.ready():
            return {"status": "ready", "model": engine.name, "version": gateway.fingerprint}
        return JSONResponse({"status": "not ready"}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        gateway.authenticate(request)
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "hkllm",
                                            "max_model_len": engine.max_model_len, "version": gateway.fingerprint}]}

    # -- generation ------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        key = gateway.admit(request, body)
        reply = await gateway.answer(key, gateway.chat_request(body))
        fmt = ChatFormat(gateway, body)
        return gateway.stream(reply, fmt) if body.stream else fmt.response(await gateway.collect(reply, request))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        key = gateway.admit(request, body)
        replies = await gateway.answers(key, gateway.completion_requests(body))
        fmt = CompletionFormat(gateway, body)
        if body.stream:
            return gateway.stream(replies[0], fmt)
        return fmt.response(await gateway.collect_all(replies, request))

    # -- safeguards ------------------------------------------------------------------------

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        """OpenAI's moderation endpoint, answered by the gateway's guard (its categories plus Hong Kong's)."""
        gateway.authenticate(request)
        texts = text_inputs(await json_body(request))
        return await asyncio.to_thread(gateway.moderation_guard().moderate, texts)   # a guard model may be remote

    @app.post("/v1/watermark/detect")
    async def watermark_detect(request: Request):
        """Is this text marked with this server's key? (hkllm/serve/watermark.py; never returns the key)."""
        gateway.authenticate(request)
        if gateway.watermark is None or gateway.watermark.tokenizer is None:
            raise ApiError(501, "this server does not watermark its answers (--watermark off, or an upstream "
                           "engine): nothing to detect", "unsupported")
        body = await json_body(request)
        alpha = body.get("alpha", 0.01)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ApiError(400, "alpha: a number between 0 and 1", "invalid_request", "alpha")
        return await asyncio.to_thread(gateway.watermark.detect, text_inputs(body), alpha)   # tokenizing: off the loop

    for extend in extensions:          # e.g. 港文通 at /app, added by the `hkllm serve` command (hkllm/cli.py)
        extend(app, gateway)
    paths.update(route.path for route in app.routes)
    return app


async def json_body(request: Request) -> dict:
    """A JSON object body, or a 400 naming what is wrong."""
    try:
        body = await request.json()
    except ValueError as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", "invalid_request") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalid_request")
    return body


MAX_TEXT_INPUTS, MAX_TEXT_CHARS = 64, 100_000     # per request to /v1/moderations and /v1/watermark/detect


def text_inputs(body: dict) -> list[str]:
    """The `input` field of a moderation or detection request: a string or a list of strings."""
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "input: a string or a non-empty list of strings", "invalid_request", "input")
    if len(texts) > MAX_TEXT_INPUTS:
        raise ApiError(400, f"input: at most {MAX_TEXT_INPUTS} texts per request", "invalid_request", "input")
    for i, t in enumerate(texts):
        if len(t) > MAX_TEXT_CHARS:
            raise ApiError(400, f"input.{i}: {len(t)} characters; at most {MAX_TEXT_CHARS}", "invalid_request",
                           f"input.{i}")
    return texts


class BodyCheck:
    """ASGI middleware: a request body over the limit is refused (413) from its Content-Length,
    or as soon as that many bytes have arrived, before anything parses it; a body that is not
    UTF-8 is a 400. The body is read here once and handed on whole."""

    def __init__(self, app, gateway: Gateway, endpoint):
        self.app, self.gateway, self.endpoint = app, gateway, endpoint

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        upload = scope["path"] == "/app/api/upload"        # a document, not JSON: its own limit, not UTF-8
        limit = self.gateway.settings.app_max_upload_bytes if upload else self.gateway.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self.refuse(scope, receive, send, self.too_large(int(declared), limit))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":       # the client left while sending
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await self.refuse(scope, receive, send, self.too_large(None, limit))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            if not upload:
                body.decode("utf-8")
        except UnicodeDecodeError as e:
            return await self.refuse(scope, receive, send, ApiError(
                400, f"request body is not valid UTF-8 (byte {e.start}: {body[e.start:e.start + 1]!r})",
                "invalid_encoding"))
        handed = False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()                  # after the body: disconnect notices
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def too_large(self, size: int | None, limit: int) -> ApiError:
        told = f"is {size} bytes" if size is not None else f"is over {limit} bytes"
        return ApiError(413, f"request body {told}; this server accepts at most {limit} bytes "
                        "(--max-body-bytes)", "request_too_large")

    async def refuse(self, scope, receive, send, error: ApiError) -> None:
        self.gateway.record_error(self.endpoint(scope["path"]), error, None)
        response = error.response(headers={"Connection": "close"} if error.status == 413 else None)
        await response(scope, receive, send)


# -- OpenAI's answer shapes ------------------------------------------------------------------

def usage(o: Outcome) -> dict:
    return {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
            "total_tokens": o.prompt_tokens + o.completion_tokens}


class ChatFormat:
    def __init__(self, gateway: Gateway, body: ChatCompletionRequest):
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                     "model": gateway.engine.name, "system_fingerprint": gateway.fingerprint}
        self.include_usage = bool((body.stream_options or {}).get("include_usage"))

    def chunk(self, text: str, finish_reason: str | None, first: bool = False) -> dict:
        delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
        return {**self.head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    def usage_chunk(self, o: Outcome) -> dict | None:
        return {**self.head, "object": "chat.completion.chunk", "choices": [], "usage": usage(o)} \
            if self.include_usage else None

    def response(self, o: Outcome) -> JSONResponse:
        return JSONResponse({**self.head, "object": "chat.completion", "cached": o.cached,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": o.text},
                                          "logprobs": None, "finish_reason": o.finish_reason}],
                             "usage": usage(o)}, headers={"X-HKLLM-Cache": "hit" if o.cached else "miss"})


class CompletionFormat:
    def __init__(self, gateway: Gateway, body: CompletionRequest):
        self.head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                     "model": gateway.engine.name, "system_fingerprint": gateway.fingerprint}
        self.logprobs = body.logprobs is not None

    def chunk(self, text: str, finish_reason: str | None, first: bool = False) -> dict:
        return {**self.head, "object": "text_completion",
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}

    def usage_chunk(self, o: Outcome) -> None:
        return None

    def response(self, outcomes: list[Outcome]) -> JSONResponse:
        choices = [{"index": i, "text": o.text, "finish_reason": o.finish_reason,
                    "logprobs": legacy_logprobs(o.logprobs) if self.logprobs else None}
                   for i, o in enumerate(outcomes)]
        total = Outcome(prompt_tokens=sum(o.prompt_tokens for o in outcomes),
                        completion_tokens=sum(o.completion_tokens for o in outcomes))
        return JSONResponse({**self.head, "object": "text_completion", "cached": all(o.cached for o in outcomes),
                             "choices": choices, "usage": usage(total)})


def legacy_logprobs(entries: list[dict]) -> dict:
    """Per-token entries → the completions API's logprobs object (as lm-evaluation-harness reads it)."""
    offsets, at = [], 0
    for e in entries:
        at = e.get("offset", at)
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [e["top"] for e in entries], "text_offset": offsets}
