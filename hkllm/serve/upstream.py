"""An engine that forwards to any OpenAI-compatible server: vLLM, SGLang, llama-server,
`transformers serve`, or another `hkllm serve`.

    hkllm serve --upstream http://gpu-node:8000/v1 --upstream-key $VLLM_KEY

The gateway in front still does keys, limits, guards, the consistency cache, metrics and the
audit log; the upstream does the model work (and checks prompt length for itself). Generation is
streamed from the upstream unless the client asked for one plain answer, so a client that goes
away stops the upstream too. It implements the Engine contract (contract.py): the upstream's
refusals and failures arrive as an ErrorEvent with the upstream's status (a 4xx is the client's
to fix; anything else is a 502, or 504 on a timeout). Logits processors cannot cross the network:
a request that has any is refused (vLLM's own `--logits-processors` are the way there).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import AsyncIterator

import aiohttp
import httpx2 as httpx

from hkllm.errors import UserError
from hkllm.serve.contract import ErrorEvent, Event, Generation, SamplingParams
from hkllm.serve.protocol import ApiError


class UpstreamEngine:
    kind = "upstream"
    runs_logits_processors = False   # sampling happens upstream: no watermark or other processor here
    default_temperature, default_top_p = 1.0, 1.0   # OpenAI's defaults

    def __init__(self, base_url: str, api_key: str | None = None, served_name: str | None = None,
                 max_batch: int = 256, timeout_s: float = 600.0):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_batch = max_batch
        try:
            listing = httpx.get(f"{self.base_url}/models", headers=self.headers, timeout=10).json()
            model = listing["data"][0]
        except Exception as e:
            raise UserError(f"upstream {self.base_url}: cannot list models ({type(e).__name__}: {e})") from e
        self.upstream_model = model["id"]
        self.name = served_name or self.upstream_model
        self.max_model_len = model.get("max_model_len")
        # The upstream's own fingerprint when it offers one (another hkllm does), else its URL and model id.
        self.version = model.get("version") or hashlib.sha256(f"{self.base_url}|{self.upstream_model}".encode()
                                                               ).hexdigest()[:12]
        self.template_version = "upstream"
        self.timeout_s = timeout_s
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self._in_flight = 0

    def _http(self, fresh: bool = False) -> aiohttp.ClientSession:
        """Pooled sessions, made on the server's event loop at first use. aiohttp rather than httpx
        for the streams: its C parser costs the gateway far less per streamed chunk. `fresh`: a new
        connection for every request. Streams take it because llama-server closes the connection
        after every streamed answer, and a pooled one it has closed fails the next request that
        picks it (measured: 10-14% of streams at 8-32 concurrent users); a connect costs well under
        a millisecond beside a stream."""
        session = self._sessions.get(fresh)
        if session is None or session.closed:
            session = self._sessions[fresh] = aiohttp.ClientSession(
                headers=self.headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.max_batch, force_close=fresh))
        return session

    def stats(self) -> dict:
        return {"waiting": 0, "running": self._in_flight}

    async def ready(self) -> bool:
        try:
            async with self._http().get(f"{self.base_url}/models", timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _body(self, params: SamplingParams, **extra) -> dict:
        if params.logits_processors:
            raise ApiError(501, "logits processors need the embedded engine; an upstream applies its own",
                           "unsupported")
        body = {"model": self.upstream_model, "max_tokens": params.max_tokens, "temperature": params.temperature,
                "top_p": params.top_p, **extra}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.ignore_eos:
            body["ignore_eos"] = True       # vLLM, SGLang and llama-server all read this field
        return body

    async def chat(self, messages: list[dict], params: SamplingParams, stream: bool = True) -> Generation:
        if not stream:      # one plain request: cheaper for both servers than a stream of chunks
            return Generation(None, self._once("/chat/completions", self._body(params, messages=messages)))
        body = self._body(params, messages=messages, stream=True, stream_options={"include_usage": True})
        return Generation(None, self._stream("/chat/completions", body, lambda c: (c.get("delta") or {}).get("content")))

    async def complete(self, prompt: str | list[int], params: SamplingParams, echo: bool = False,
                       stream: bool = True) -> Generation:
        if echo or params.logprobs is not None or not stream:   # log-probabilities come in one plain answer
            body = self._body(params, prompt=prompt, echo=echo, logprobs=params.logprobs)
            return Generation(None, self._once("/completions", body))
        body = self._body(params, prompt=prompt, stream=True, stream_options={"include_usage": True})
        return Generation(None, self._stream("/completions", body, lambda c: c.get("text")))

    async def _send(self, path: str, body: dict) -> aiohttp.ClientResponse:
        if body.get("stream"):
            return await self._http(fresh=True).post(self.base_url + path, json=body)
        try:
            return await self._http().post(self.base_url + path, json=body)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            # A kept-alive connection that the upstream closed meanwhile (its idle timeout) fails on
            # the next write: the request never arrived, so it goes again, once, on a new connection.
            return await self._http(fresh=True).post(self.base_url + path, json=body)

    async def _stream(self, path: str, body: dict, text_of) -> AsyncIterator[Event]:
        self._in_flight += 1
        try:
            async with await self._send(path, body) as resp:
                if resp.status != 200:
                    yield self._error(resp.status, await resp.text())
                    return
                tokens, finish, usage = 0, None, {}
                async for raw in resp.content:
                    if not raw.startswith(b"data: ") or raw.startswith(b"data: [DONE]"):
                        continue
                    chunk = json.loads(raw[6:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        text = text_of(choice) or ""
                        finish = choice.get("finish_reason") or finish
                        if text:
                            tokens += 1
                            yield Event(text=text, completion_tokens=tokens)
                yield Event(finish_reason=finish or "stop", completion_tokens=usage.get("completion_tokens", tokens),
                            prompt_tokens=usage.get("prompt_tokens"))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            yield self._failure(e)
        finally:
            self._in_flight -= 1

    async def _once(self, path: str, body: dict) -> AsyncIterator[Event]:
        self._in_flight += 1
        try:
            async with await self._send(path, body) as resp:
                if resp.status != 200:
                    yield self._error(resp.status, await resp.text())
                    return
                data = await resp.json()
            choice, usage = data["choices"][0], data.get("usage") or {}
            text = choice["message"].get("content") or "" if "message" in choice else choice.get("text", "")
            lp = choice.get("logprobs") or {}
            entries = [{"token": t, "logprob": p, "top": top} for t, p, top in
                       zip(lp.get("tokens", []), lp.get("token_logprobs", []), lp.get("top_logprobs", []))]
            event = Event(text=text, finish_reason=choice.get("finish_reason") or "stop",
                          completion_tokens=usage.get("completion_tokens", 0), prompt_tokens=usage.get("prompt_tokens"),
                          logprobs=entries)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, IndexError, TypeError) as e:
            event = self._failure(e)
        finally:
            self._in_flight -= 1
        yield event

    @staticmethod
    def _error(status: int, text: str) -> ErrorEvent:
        """The upstream's own error, passed on with its status (a 4xx is the client's to fix)."""
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text[:500]
        return ErrorEvent(message=f"upstream: {message}", status=status if 400 <= status < 500 else 502,
                          code="upstream_error")

    def _failure(self, e: Exception) -> ErrorEvent:
        """The upstream could not be reached, timed out, or answered something that is not OpenAI's shape."""
        if isinstance(e, asyncio.TimeoutError):
            return ErrorEvent(message=f"upstream {self.base_url} timed out", status=504, code="upstream_timeout")
        return ErrorEvent(message=f"upstream {self.base_url}: {type(e).__name__}: {e}", status=502,
                          code="upstream_error")

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
