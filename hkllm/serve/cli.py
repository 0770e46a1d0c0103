"""`hkllm serve`, `hkllm keys` and `hkllm audit`.

    hkllm keys create --name alice --rpm 60
    hkllm serve runs/quickstart/dpo                       # embedded engine, 127.0.0.1:8000
    hkllm serve --upstream http://gpu-node:8000/v1        # in front of vLLM / SGLang / llama-server
    hkllm audit export --since 2026-11-01 > audit.jsonl
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from hkllm.errors import UserError

STATE_HELP = "folder for keys.sqlite, cache.sqlite and audit.sqlite (default hkllm-serve/)"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args) -> int:
    import uvicorn

    from hkllm.serve.app import Settings, build_app

    if args.no_auth and not is_loopback(args.host):
        raise UserError(f"--no-auth is allowed only on a loopback address, not {args.host}; "
                        "create keys with `hkllm keys create` instead / 只可在本機位址停用金鑰")
    if bool(args.model_dir) == bool(args.upstream):
        raise UserError("give either MODEL_DIR (embedded engine) or --upstream URL, not both / 請指定模型資料夾或上游伺服器其中之一")
    if args.upstream:
        from hkllm.serve.upstream import UpstreamEngine
        engine = UpstreamEngine(args.upstream, args.upstream_key, args.served_model_name, max_batch=args.max_batch)
    else:
        from hkllm.serve.engine import LocalEngine
        engine = LocalEngine(args.model_dir, max_batch=args.max_batch, served_name=args.served_model_name,
                             threads=args.threads)
    settings = Settings(state_dir=Path(args.state_dir), auth=not args.no_auth, consistency=args.consistency == "on", cache=not args.no_cache,
                        cache_ttl_s=args.cache_ttl, max_queue=args.max_queue, max_prompt_tokens=args.max_prompt_tokens,
                        max_output_tokens=args.max_output_tokens, request_timeout_s=args.request_timeout,
                        rpm=args.rpm, tpm=args.tpm, audit_prompts=not args.no_audit_prompts)
    app = build_app(engine, settings)
    base = f"http://{args.host}:{args.port}/v1"
    print(f"hkllm serve: {engine.name} ({engine.kind}, version {engine.version}) at {base}\n"
          f"  consistency {args.consistency} · auth {'off' if args.no_auth else 'on'} · queue {args.max_queue} · "
          f"state {settings.state_dir}/\n"
          f"  try: curl {base}/chat/completions -H 'Content-Type: application/json'"
          + ("" if args.no_auth else ' -H "Authorization: Bearer $HKLLM_KEY"')
          + f" -d '{{\"model\": \"{engine.name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"你好\"}}]}}'",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def _keys(args) -> int:
    from hkllm.serve.keys import KeyStore

    store = KeyStore(Path(args.state_dir) / "keys.sqlite")
    if args.action == "create":
        key, secret = store.create(args.name, args.rpm, args.tpm)
        print(secret)
        print(f"created {key.id} ({key.name}); the key is shown only once / 金鑰只會顯示一次", file=sys.stderr)
    elif args.action == "list":
        for k in store.list():
            when = datetime.fromtimestamp(k.created, timezone.utc).strftime("%Y-%m-%d %H:%M")
            state = "revoked" if k.revoked else "active"
            print(f"{k.id}\t{k.name}\t{when}\t{state}\trpm={k.rpm or '-'}\ttpm={k.tpm or '-'}")
    else:
        n = store.revoke(args.key)
        if not n:
            raise UserError(f"no active key with id or name '{args.key}' / 找不到此金鑰")
        print(f"revoked {n} key(s)", file=sys.stderr)
    return 0


def _audit(args) -> int:
    from hkllm.serve.audit import export, parse_time

    db = Path(args.state_dir) / "audit.sqlite"
    if not db.exists():
        raise UserError(f"{db}: no audit log here (start `hkllm serve --state-dir {args.state_dir}` first)")
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as e:
        raise UserError(f"--since/--until: {e}; use an ISO date such as 2026-11-01 or 2026-11-01T08:00") from e
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    n = 0
    for record in export(db, since, until):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        n += 1
    if args.out:
        out.close()
    print(f"{n} request(s) exported", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser("serve", help="OpenAI-compatible server: embedded engine or in front of vLLM/SGLang",
                              description=__doc__, formatter_class=fmt)
    s.add_argument("model_dir", nargs="?", help="a model folder (hkllm train output or any HF causal LM)")
    s.add_argument("--upstream", help="forward to this OpenAI-compatible base URL instead of loading a model")
    s.add_argument("--upstream-key", default=None, help="API key for the upstream server")
    s.add_argument("--served-model-name", default=None, help="model id clients use (default: folder name)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--state-dir", default="hkllm-serve", help=STATE_HELP)
    s.add_argument("--no-auth", action="store_true", help="accept requests without a key (loopback only)")
    s.add_argument("--consistency", choices=["on", "off"], default="on",
                   help="on: greedy decoding, fixed seed and a response cache, so the same request gets the same "
                        "answer; off: honour temperature/top_p/seed for creative use (default on)")
    s.add_argument("--no-cache", action="store_true",
                   help="consistency mode without the response cache (every request reaches the engine)")
    s.add_argument("--cache-ttl", type=float, default=86400, help="seconds a cached answer stays valid (default 1 day)")
    s.add_argument("--max-batch", type=int, default=32, help="requests decoded together (default 32)")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the embedded engine (default: all cores but one, kept for HTTP)")
    s.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait beyond the batch; more get 429 + Retry-After (default 64)")
    s.add_argument("--max-prompt-tokens", type=int, default=None, help="default: the model's context length")
    s.add_argument("--max-output-tokens", type=int, default=1024, help="largest max_tokens accepted (default 1024)")
    s.add_argument("--request-timeout", type=float, default=300, help="seconds before a request is cut off (default 300)")
    s.add_argument("--rpm", type=int, default=0, help="default requests per minute per key (0 = no limit)")
    s.add_argument("--tpm", type=int, default=0, help="default tokens per minute per key (0 = no limit)")
    s.add_argument("--no-audit-prompts", action="store_true", help="keep prompts out of the audit log entirely")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=_serve)

    k = subparsers.add_parser("keys", help="create, list and revoke API keys for hkllm serve")
    k.add_argument("--state-dir", default="hkllm-serve", help=STATE_HELP)
    ks = k.add_subparsers(dest="action", required=True)
    c = ks.add_parser("create", help="create a key and print it (once)")
    c.add_argument("--name", required=True, help="who or what the key is for")
    c.add_argument("--rpm", type=int, default=None, help="requests per minute (default: the server's --rpm)")
    c.add_argument("--tpm", type=int, default=None, help="tokens per minute (default: the server's --tpm)")
    ks.add_parser("list", help="list keys (never the secrets)")
    r = ks.add_parser("revoke", help="revoke a key by id or name")
    r.add_argument("key", help="key id (key_...) or name")
    for p in (c, r):
        p.add_argument("--state-dir", default=argparse.SUPPRESS, help=STATE_HELP)
    k.set_defaults(func=_keys)

    a = subparsers.add_parser("audit", help="export hkllm serve's audit log")
    a.add_argument("--state-dir", default="hkllm-serve", help=STATE_HELP)
    as_ = a.add_subparsers(dest="action", required=True)
    e = as_.add_parser("export", help="requests as JSONL (prompts are stored redacted)")
    e.add_argument("--since", help="ISO date/time, UTC unless a zone is given")
    e.add_argument("--until", help="ISO date/time (exclusive)")
    e.add_argument("--out", help="file to write (default: stdout)")
    e.add_argument("--state-dir", default=argparse.SUPPRESS, help=STATE_HELP)
    a.set_defaults(func=_audit)
