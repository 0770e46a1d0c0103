"""UpstreamEngine against an upstream that closes connections the way llama-server does: after
every streamed answer, without a `Connection: close` header, a moment after the last byte. A
pooled connection picked up in that moment failed the next request ("Can not write request
body"): 10-14% of streams through the gateway at 8-32 users, before the fix."""

import asyncio
import json
import threading

import pytest

from hkllm.serve.contract import ErrorEvent, SamplingParams

MODELS = json.dumps({"object": "list", "data": [{"id": "closer", "object": "model"}]}).encode()


class ClosingUpstream:
    """A raw HTTP/1.1 server on its own loop: one request per connection, answered, then closed
    5 ms later (after claiming keep-alive), so a client that reuses the connection loses the race."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = json.loads(await reader.readexactly(length)) if length else {}
        ok = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\n"
        if head.startswith(b"GET"):
            writer.write(ok + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(MODELS) + MODELS)
        elif body.get("stream"):
            writer.write(ok + b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for frame in [{"choices": [{"delta": {"content": w}, "finish_reason": None}]} for w in ("港", "鐵")] + [
                    {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"completion_tokens": 2}}]:
                data = b"data: " + json.dumps(frame).encode() + b"\n\n"
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            writer.write(b"0\r\n\r\n")
        else:
            answer = json.dumps({"choices": [{"message": {"content": "港鐵"}, "finish_reason": "stop"}],
                                 "usage": {"completion_tokens": 2}}).encode()
            writer.write(ok + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
        await writer.drain()
        await asyncio.sleep(0.005)
        writer.close()

    def stop(self):
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), self.loop).result(5)   # the last closes finish
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def closing_upstream():
    upstream = ClosingUpstream()
    yield upstream
    upstream.stop()


@pytest.mark.parametrize("stream", [True, False])
def test_answers_survive_an_upstream_that_closes_after_each_answer(closing_upstream, stream):
    from hkllm.serve.upstream import UpstreamEngine

    engine = UpstreamEngine(closing_upstream.url)

    async def answer() -> list:
        gen = await engine.chat([{"role": "user", "content": "點去旺角？"}], SamplingParams(max_tokens=4), stream=stream)
        return [ev async for ev in gen.events]

    async def users() -> list:
        async def one_user():
            return [await answer() for _ in range(15)]
        try:
            return [a for user in await asyncio.gather(*(one_user() for _ in range(4))) for a in user]
        finally:
            await engine.aclose()

    answers = asyncio.run(users())
    failed = [evs[-1].message for evs in answers if isinstance(evs[-1], ErrorEvent)]
    assert not failed, f"{len(failed)} of {len(answers)} answers failed: {failed[0]}"
    assert {"".join(ev.text for ev in evs) for evs in answers} == {"港鐵"}
    assert all(evs[-1].finish_reason == "stop" for evs in answers)
