"""A bare HTTP relay: the floor of what any Python hop in front of an OpenAI-compatible server
costs (used by serve_gateway.py; not a benchmark itself).

    .venv/bin/python benchmarks/relay.py http://127.0.0.1:8080 PORT

aiohttp server → aiohttp client, the bytes passed through as they arrive: no keys, limits, cache,
guards, audit or parsing. What the gateway adds beyond this is the cost of its features.
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web


def main() -> None:
    upstream, port = sys.argv[1].rstrip("/"), int(sys.argv[2])

    async def relay(request: web.Request) -> web.StreamResponse:
        async with request.app["client"].request(request.method, upstream + request.path, data=await request.read(),
                                                 headers={"Content-Type": "application/json"}) as r:
            resp = web.StreamResponse(status=r.status, headers={"Content-Type": r.headers.get("Content-Type", "")})
            await resp.prepare(request)
            async for chunk in r.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def start(app: web.Application) -> None:
        # a new connection per request, as the gateway streams (llama-server closes streamed ones)
        app["client"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_route("*", "/{tail:.*}", relay)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
