"""The OpenAI API's request bodies and error shape, as pydantic models (they also make the
OpenAPI schema served at /openapi.json), and `GenerationRequest`, the structured request that the
gateway's stages pass on (request guards, cache key, engine).

Unknown fields are accepted and ignored, as vLLM does, so clients that send extras keep working,
except OpenAI fields that this server does not implement and that would change the answer
(`tools`, `response_format`, `logprobs` in chat, ... see UNSUPPORTED): those are a 400 naming the
field, unless their value means "off" (`null`, `false`, `0`, `[]`, `"none"`, ...). Text must be
valid Unicode: a lone surrogate (`"\\ud800"`, which JSON allows) is a 400, anywhere in the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from hkllm.serve.contract import SamplingParams


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_exceeded",
             503: "service_unavailable", 504: "timeout"}

    recorded = False      # its answer had begun and has its audit row already (gateway.collect sets it)
    guard_records = None  # the guards' verdicts on a refused request, for its audit row (gateway.answer)

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.retry_after = status, message, code, param, retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        if self.retry_after is not None:
            headers = {**(headers or {}), "Retry-After": str(max(1, round(self.retry_after)))}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _valid_unicode(text: str) -> str:
    """JSON may carry a lone surrogate ("\\ud800"); no tokenizer, cache key or log can take one."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"contains a lone surrogate (U+{ord(text[e.start]):04X} at character {e.start}); "
                             "text must be valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]


def find_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (value or key) under `value` holding a lone surrogate, or None."""
    if isinstance(value, str):
        try:
            _valid_unicode(value)
        except ValueError:
            return path
    elif isinstance(value, dict):
        for k, v in value.items():
            if find_surrogate(k, path):
                return path or "body"            # in a key: name the object that holds it
            if found := find_surrogate(v, f"{path}.{k}" if path else str(k)):
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if where := find_surrogate(v, f"{path}.{i}"):
                return where
    return None


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


# Values of an unimplemented field that mean "off": the request is then the same without it.
OFF = (None, False, 0, "", [], {})
_COMMON = {"logit_bias": (), "frequency_penalty": (), "presence_penalty": (), "best_of": (1,),
           # vLLM's and others' sampling extras: each would change the answer if it were honoured
           "top_k": (-1,), "min_p": (), "repetition_penalty": (1,), "min_tokens": (),
           "guided_json": (), "guided_regex": (), "guided_choice": (), "guided_grammar": (), "structured_outputs": ()}
UNSUPPORTED = {
    "chat": {**_COMMON, "tools": (), "tool_choice": ("none", "auto"), "functions": (),
             "function_call": ("none", "auto"), "parallel_tool_calls": (True,),
             "response_format": ({"type": "text"},), "logprobs": (), "top_logprobs": (), "audio": (),
             "modalities": (["text"],), "prediction": (), "reasoning_effort": (), "web_search_options": (),
             "verbosity": ("medium",)},
    "completions": {**_COMMON, "suffix": (), "response_format": ({"type": "text"},)},
}


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    endpoint: ClassVar[str]
    model: Text | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    ignore_eos: bool = False        # vLLM's extra: answers of exactly max_tokens, for load tests
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    user: Text | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 non-empty stop strings")
        return v

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def check_supported(self) -> None:
        """400 for a field this server does not implement (set to anything but "off") and for a
        lone surrogate among the fields it ignores (declared fields are checked by their type)."""
        extra = self.model_extra or {}
        for name, harmless in UNSUPPORTED[self.endpoint].items():
            if name in extra and not any(_same(extra[name], v) for v in OFF + harmless):
                raise ApiError(400, f"{name}: not supported by this server (send it unset or null)",
                               "unsupported_parameter", name)
        where = find_surrogate(extra, "")
        for i, m in enumerate(self.messages if isinstance(self, ChatCompletionRequest) else ()):
            if m.model_extra and m.model_extra.get("tool_calls"):
                raise ApiError(400, f"messages.{i}.tool_calls: tool calls are not supported by this server",
                               "unsupported_parameter", f"messages.{i}.tool_calls")
            where = where or find_surrogate(m.model_extra or {}, f"messages.{i}")
        if where:
            raise ApiError(400, f"{where}: contains a lone surrogate; text must be valid Unicode",
                           "invalid_request", where)


def _same(value: Any, off: Any) -> bool:
    """value == off, without Python's 1 == True and 0 == False (`"logprobs": 1` is not "off")."""
    return type(value) is type(off) and value == off or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and
        isinstance(off, (int, float)) and not isinstance(off, bool) and value == off)


class ChatCompletionRequest(SamplingFields):
    endpoint: ClassVar[str] = "chat"
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(SamplingFields):
    endpoint: ClassVar[str] = "completions"
    prompt: Text | list[Text] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v):
        if not v or (isinstance(v, list) and any(isinstance(p, (str, list)) and not p for p in v)):
            raise ValueError("prompt must not be empty")
        return v

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a string, or a list of token ids (as lm-evaluation-harness sends)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic's errors → one line naming the field, e.g. `messages.0.role: Input should be ...`.

    Of a union's alternatives (`content` is a string or a list of parts) a value error, such as a
    lone surrogate, says more than "should be a valid string"; the union's member tags
    (`function-after[...]`, `list[int]`) are left out of the field's name."""
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    loc = [str(x) for x in first.get("loc", ()) if x != "body" and not _union_tag(x)]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


def _union_tag(part) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "none", "dict", "list")
                                      or "[" in part or "(" in part)


@dataclass(frozen=True)
class GenerationRequest:
    """One request as the gateway's stages pass it on, structured (not yet a prompt string):
    request guards see it and may return a changed copy (`dataclasses.replace`), the cache key
    is made from it, and the engine gets its `messages` or `prompt` with its `params`."""
    endpoint: str                              # "chat" | "completions"
    params: SamplingParams
    messages: list[dict] | None = None         # chat: [{"role", "content"}], content a string
    prompt: str | list[int] | None = None      # completions: a string or token ids
    echo: bool = False
    stream: bool = False
    explicit_max: bool = False                 # max_tokens came from the client: too long is a 400, not cut
    watermark_opt_out: bool = False            # the client sent "watermarking": false (gateway.py decides)

    def text(self) -> str:
        """The request as one string (for the audit log and for guards that read text)."""
        if self.messages is not None:
            return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages)
        return self.prompt if isinstance(self.prompt, str) else f"<{len(self.prompt or ())} token ids>"
