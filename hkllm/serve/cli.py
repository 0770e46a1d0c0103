"""`hkllm serve`, `hkllm keys` and `hkllm audit`.

    hkllm keys create --name alice --rpm 60
    hkllm serve runs/quickstart/dpo                       # embedded engine, 127.0.0.1:8000
    hkllm serve --upstream http://gpu-node:8000/v1        # in front of vLLM / SGLang / llama-server
    hkllm audit export --since 2026-11-01 > audit.jsonl

Server settings (queue, limits, cache, timeouts, guards) are the fields of `Settings`
(hkllm/serve/gateway.py), whose defaults and types are stated there once: a flag left out leaves
its field at the default, `--settings FILE.yaml` sets any field (flags win), and --help reads the
defaults from Settings.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from hkllm import config
from hkllm.errors import UserError
from hkllm.serve.keys import STATE_DIR

STATE_HELP = f"folder for keys.sqlite, cache.sqlite and audit.sqlite (default {STATE_DIR}/)"
# `hkllm serve` flags that set a Settings field: flag dest -> field. A switch sets its field to False.
SETTING_FLAGS = {"state_dir": "state_dir", "consistency": "consistency", "cache_ttl": "cache_ttl_s",
                 "max_queue": "max_queue", "max_prompt_tokens": "max_prompt_tokens",
                 "max_output_tokens": "max_output_tokens", "request_timeout": "request_timeout_s", "rpm": "rpm",
                 "tpm": "tpm", "guards": "guards", "max_body_bytes": "max_body_bytes", "watermark": "watermark"}
SWITCHES = {"no_auth": "auth", "no_cache": "cache", "no_audit_prompts": "audit_prompts", "no_app": "app"}


def _settings_class():
    from hkllm.serve.gateway import Settings  # imports fastapi: only to serve or to print serve's --help

    return Settings


def _setting(name: str):
    """argparse `type=` for a flag: the text parsed by the Settings field's own type."""
    def parse(text: str):
        tp = config.fields(_settings_class())[name][1]
        try:
            return config.parse_value(text, tp, name)
        except UserError:
            raise argparse.ArgumentTypeError(f"expected {config.describe(tp)}, got {text!r}") from None
    parse.__name__ = name
    return parse


def settings_from(args):
    """Settings from --settings YAML and the flags given (flags win); every field checked by its type."""
    values = {}
    if getattr(args, "settings", None):
        values = config.read_yaml(args.settings, "server settings") or {}
        if not isinstance(values, dict):
            raise config.ConfigError(args.settings, "(top level)", f"expected a mapping, got {type(values).__name__}")
    values = {**values, **{f: getattr(args, dest) for dest, f in SETTING_FLAGS.items() if hasattr(args, dest)},
              **{f: False for dest, f in SWITCHES.items() if getattr(args, dest, False)}}
    return config.build(_settings_class(), values, args.settings or "command line", what="setting")


class _SettingsHelp(argparse.RawDescriptionHelpFormatter):
    """A settings flag's help ends with the field's default, read from Settings as the help is printed."""

    def _get_help_string(self, action):
        name = SETTING_FLAGS.get(action.dest)
        default = getattr(_settings_class()(), name) if name else None
        if default is None:
            return action.help
        if isinstance(default, bool):
            default = "on" if default else "off"
        elif isinstance(default, float):
            default = f"{default:g}"
        return f"{action.help} (default {default})".replace("%", "%%")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args) -> int:
    import uvicorn

    from hkllm.serve.app import build_app

    settings = settings_from(args)
    if not settings.auth and not is_loopback(args.host):
        raise UserError(f"--no-auth is allowed only on a loopback address, not {args.host}; "
                        "create keys with `hkllm keys create` instead / 只可在本機位址停用金鑰")
    if not is_loopback(args.host):
        settings.app_secure_cookies = True     # 港文通's session cookie only over HTTPS (put a TLS proxy in front)
    if bool(args.model_dir) == bool(args.upstream):
        raise UserError("give either MODEL_DIR (embedded engine) or --upstream URL, not both / 請指定模型資料夾或上游伺服器其中之一")
    if args.upstream:
        from hkllm.serve.upstream import UpstreamEngine
        engine = UpstreamEngine(args.upstream, args.upstream_key, args.served_model_name, max_batch=args.max_batch)
    else:
        from hkllm.serve.engine import LocalEngine
        # The engine's own log lines (which forward pass, when the compiled step takes over) to stderr.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("hkllm serve: %(message)s"))
        logging.getLogger("hkllm.serve").addHandler(handler)
        logging.getLogger("hkllm.serve").setLevel(logging.INFO)
        engine = LocalEngine(args.model_dir, max_batch=args.max_batch, served_name=args.served_model_name,
                             threads=args.threads, decoder=args.decoder,
                             compile=not args.eager)
    app = build_app(engine, settings, args.extensions if settings.app else ())
    base = f"http://{args.host}:{args.port}/v1"
    print(f"hkllm serve: {engine.name} ({engine.kind}, version {engine.version}) at {base}\n"
          f"  consistency {'on' if settings.consistency else 'off'} · auth {'on' if settings.auth else 'off'} · "
          f"queue {settings.max_queue} · "
          f"watermark {app.state.gateway.watermark.config_id if app.state.gateway.watermark else 'off'} · "
          f"state {settings.state_dir}/\n"
          + (f"  engine: {engine.runtime}\n" if getattr(engine, "runtime", None) else "")
          + (f"  港文通 document assistant: http://{args.host}:{args.port}/app\n" if settings.app else "")
          + f"  try: curl {base}/chat/completions -H 'Content-Type: application/json'"
          + ("" if not settings.auth else ' -H "Authorization: Bearer $HKLLM_KEY"')
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
    if args.action == "verify":
        return _audit_verify(db, args)
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


def _audit_verify(db: Path, args) -> int:
    import sqlite3

    from hkllm.serve.audit import verify

    anchor = None
    if args.anchor:
        seq, _, digest = args.anchor.partition(":")
        if not (seq.isdigit() and len(digest) == 64):
            raise UserError(f"--anchor {args.anchor}: expected SEQ:HASH as printed by `hkllm audit verify`")
        anchor = (int(seq), digest.lower())
    try:
        report = verify(db, anchor)
    except sqlite3.DatabaseError as e:
        raise UserError(f"{db}: {e} (not an audit log?)") from e
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0 if report["ok"] else 1
    head = report["head"]
    legacy = f", {report['legacy_rows']} unchained legacy rows" if report["legacy_rows"] else ""
    if report["ok"]:
        at = f"head seq {head['seq']} hash {head['hash']}" if head else "no chained rows yet"
        print(f"audit log intact / 審計記錄完整: {report['rows']} rows{legacy}, {at}")
        if head:
            print(f"record this anchor elsewhere and check later with --anchor {head['seq']}:{head['hash']}")
        return 0
    p = report["first_problem"]
    where = f"seq {p['seq']}" + (f" (rowid {p['rowid']})" if p["rowid"] is not None else "")
    print(f"audit log NOT intact / 審計記錄遭改動: {p['kind']} at {where}: {p['detail']}")
    return 1


def add_parser(subparsers, extensions: tuple = ()) -> None:
    """`extensions`: what `hkllm serve` mounts beside the API (build_app), given by the command layer."""
    s = subparsers.add_parser("serve", help="OpenAI-compatible server: embedded engine or in front of vLLM/SGLang",
                              description=__doc__, formatter_class=_SettingsHelp)
    setting = dict(default=argparse.SUPPRESS)          # left out: Settings' default
    s.add_argument("model_dir", nargs="?", help="a model folder (hkllm train output or any HF causal LM)")
    s.add_argument("--upstream", help="forward to this OpenAI-compatible base URL instead of loading a model")
    s.add_argument("--upstream-key", default=None, help="API key for the upstream server")
    s.add_argument("--served-model-name", default=None, help="model id clients use (default: folder name)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--settings", default=None, metavar="YAML",
                   help="server settings as YAML: any field of Settings (hkllm/serve/gateway.py); flags win")
    s.add_argument("--state-dir", type=_setting("state_dir"), **setting,
                   help="folder for keys.sqlite, cache.sqlite and audit.sqlite")
    s.add_argument("--no-auth", action="store_true", help="accept requests without a key (loopback only)")
    s.add_argument("--consistency", type=_setting("consistency"), choices=[True, False], metavar="{on,off}", **setting,
                   help="on: greedy decoding, fixed seed and a response cache, so the same request gets the same "
                        "answer; off: honour temperature/top_p/seed for creative use")
    s.add_argument("--no-cache", action="store_true",
                   help="consistency mode without the response cache (every request reaches the engine)")
    s.add_argument("--cache-ttl", type=_setting("cache_ttl_s"), **setting, help="seconds a cached answer stays valid")
    s.add_argument("--max-batch", type=int, default=32, help="requests decoded together (default 32)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads for the embedded engine (default: timed at start, for small and large "
                        "batches; a light model's large batches leave one core to HTTP)")
    s.add_argument("--decoder", choices=("auto", "transformers"), default="auto",
                   help="auto: Llama-family models (Llama, Qwen2, Mistral, SmolLM2) through hkllm's written-out "
                        "forward pass over per-row KV slots, checked against transformers at start; "
                        "transformers: its own forward for every model (slower per step)")
    s.add_argument("--eager", action="store_true",
                   help="skip compiling the decode step. By default `auto`'s step is compiled ahead of time "
                        "(torch.export + AOTInductor's C++: ~4x faster per step for a small model on a CPU) in the "
                        "background while the eager step serves: ~30 s for a small model and minutes for a 30-layer "
                        "one, once; the program is kept in HKLLM_CACHE_DIR (~/.cache/hkllm/aoti); without a C++ compiler "
                        "the eager step stays and the log says why")
    s.add_argument("--max-queue", type=_setting("max_queue"), **setting,
                   help="requests that may wait beyond the batch; more get 429 + Retry-After")
    s.add_argument("--max-prompt-tokens", type=_setting("max_prompt_tokens"), **setting,
                   help="largest prompt accepted, in tokens (default: the model's context length)")
    s.add_argument("--max-output-tokens", type=_setting("max_output_tokens"), **setting,
                   help="largest max_tokens accepted")
    s.add_argument("--request-timeout", type=_setting("request_timeout_s"), **setting,
                   help="seconds before a request is cut off")
    s.add_argument("--rpm", type=_setting("rpm"), **setting, help="default requests per minute per key, 0 = no limit")
    s.add_argument("--tpm", type=_setting("tpm"), **setting, help="default tokens per minute per key, 0 = no limit")
    s.add_argument("--no-audit-prompts", action="store_true", help="keep prompts out of the audit log entirely")
    s.add_argument("--guards", type=_setting("guards"), **setting, metavar="YAML",
                   help="guard policy: request_guards and response_guards, run in order (hkllm/serve/guards.py)")
    s.add_argument("--watermark", type=_setting("watermark"), choices=[True, False], metavar="{on,off}", **setting,
                   help="mark every answer of the embedded engine with the key in the state folder (watermark.key, "
                        "made on first start); clients cannot turn it off. Detect with `hkllm watermark detect` or "
                        "POST /v1/watermark/detect")
    s.add_argument("--max-body-bytes", type=_setting("max_body_bytes"), **setting,
                   help="largest request body; more is a 413 before it is read "
                        "(default: 1 MiB + 32 bytes per token of the model's context)")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.add_argument("--no-app", action="store_true", help="serve the API only, without 港文通 at /app")
    s.set_defaults(func=_serve, extensions=extensions)

    k = subparsers.add_parser("keys", help="create, list and revoke API keys for hkllm serve")
    k.add_argument("--state-dir", default=str(STATE_DIR), help=STATE_HELP)
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

    a = subparsers.add_parser("audit", help="export or verify hkllm serve's audit log")
    a.add_argument("--state-dir", default=str(STATE_DIR), help=STATE_HELP)
    as_ = a.add_subparsers(dest="action", required=True)
    e = as_.add_parser("export", help="requests as JSONL (prompts are stored redacted)")
    e.add_argument("--since", help="ISO date/time, UTC unless a zone is given")
    e.add_argument("--until", help="ISO date/time (exclusive)")
    e.add_argument("--out", help="file to write (default: stdout)")
    e.add_argument("--state-dir", default=argparse.SUPPRESS, help=STATE_HELP)
    v = as_.add_parser("verify", help="check the hash chain; exit 1 at the first altered, inserted or deleted row")
    v.add_argument("--anchor", metavar="SEQ:HASH", help="a head printed by an earlier verify, kept outside the server")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--state-dir", default=argparse.SUPPRESS, help=STATE_HELP)
    a.set_defaults(func=_audit)
