"""港文通 — the document assistant, served by `hkllm serve` at /app (same process, keys, limits,
guards, watermark and audit as /v1).

    hkllm serve runs/quickstart/dpo            # then open http://127.0.0.1:8000/app
    hkllm serve --upstream http://gpu:8000/v1  # the same app in front of vLLM / SGLang / llama-server

Server-rendered pages (Jinja2, autoescaped, hkllm/app/pages/) and one small plain-JavaScript
file (hkllm/app/static/app.js): no CDN, no npm, no inline script or style, so the
Content-Security-Policy allows only this origin. Interface in Traditional Chinese (Hong Kong)
and English (`?lang=en`, remembered in the session).

Sign-in: an API key from `hkllm keys create`, held server-side in the session (the browser gets
only a random session id: HttpOnly, SameSite=Strict, Secure off loopback). Every POST carries
the session's CSRF token (header or form field); sign-in itself uses a double-submit token.
With `--no-auth` (loopback only) the session is anonymous and there is no sign-in.

The app is a client of the chat endpoint: every model call goes through `Gateway.answer` and
`Gateway.flow` — the stages /v1/chat/completions runs (limits, request guards, watermark, cache,
engine, response guards, audit) — without an HTTP hop. What it adds is in hkllm/app: the task
prompts (tasks.py), templates and the format checker, retrieval over uploads (retrieval.py: owned
by the key that uploaded them, expiring, hard-deleted) and the Word export (docx_export.py).

Routes: pages GET /app, /app/{draft,rewrite,translate,summarize,ask,docs}, /app/passage/{id};
sign-in GET/POST /app/signin, POST /app/signout; JSON/SSE API under /app/api (run, upload, docs,
check, fix, export). A task's answer streams as server-sent events: `delta` {text}, `progress`
{done, total} (summaries), then `done` {text, document?, failures?, citations?} or `error`
{message, code}.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from hkllm.errors import UserError
from hkllm.serve.app import json_body
from hkllm.serve.contract import ErrorEvent
from hkllm.serve.gateway import ANONYMOUS, Gateway
from hkllm.serve.keys import Key
from hkllm.serve.protocol import ApiError, ChatCompletionRequest

HERE = Path(__file__).resolve().parent
COOKIE, SIGNIN_COOKIE = "hkllm_app", "hkllm_app_signin"
TASKS = ("draft", "rewrite", "translate", "summarize", "ask")
UPLOAD_TYPES = (".pdf", ".docx", ".html", ".htm", ".txt", ".md")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
MAX_TOKENS = {"draft": 320, "rewrite": 200, "translate": 200, "summarize": 200, "ask": 200}


@dataclass
class Session:
    secret: str | None                 # the API key (None: --no-auth); never sent back to the browser
    csrf: str
    lang: str = "zh"
    created: float = field(default_factory=time.time)


SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 10_000          # in memory: a restart signs everyone out


class DocumentApp:
    def __init__(self, gateway: Gateway):
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        from hkllm.app.retrieval import Library

        self.gateway, self.settings = gateway, gateway.settings    # app_* fields: hkllm/serve/gateway.py
        self.sessions: dict[str, Session] = {}
        self.library = Library(gateway.settings.state_dir / "app.sqlite")
        self.library.purge_expired()
        self.pages = Environment(loader=FileSystemLoader(HERE / "pages"), autoescape=select_autoescape(["html"]))
        self.pages.filters["day"] = lambda ts: time.strftime("%Y-%m-%d", time.localtime(ts))
        self.strings = json.loads((HERE / "pages" / "strings.json").read_text(encoding="utf-8"))

    # -- sessions and keys ---------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        sid = request.cookies.get(COOKIE, "")
        s = self.sessions.get(sid)
        if s and time.time() - s.created > SESSION_TTL_S:
            self.sessions.pop(sid, None)
            return None
        return s

    def key(self, s: Session) -> Key:
        """The session's key, looked up again on every call: a revoked key stops working at once."""
        if s.secret is None:
            return ANONYMOUS
        key = self.gateway.keys.lookup(s.secret)
        if key is None:
            raise ApiError(401, "the key of this session was revoked; sign in again / 金鑰已被撤銷，請重新登入",
                           "invalid_api_key")
        return key

    def owner(self, s: Session) -> str:
        """Whose uploads: the key's; without keys (--no-auth), the browser session's, so that two
        people on one loopback server still do not see each other's documents."""
        return f"session:{hashlib.sha256(s.csrf.encode()).hexdigest()[:16]}" if s.secret is None else self.key(s).id

    def new_session(self, secret: str | None, lang: str) -> tuple[str, Session]:
        now = time.time()
        if len(self.sessions) >= MAX_SESSIONS:        # expired ones first, then the oldest
            for old in [k for k, v in self.sessions.items() if now - v.created > SESSION_TTL_S]:
                del self.sessions[old]
            while len(self.sessions) >= MAX_SESSIONS:
                del self.sessions[next(iter(self.sessions))]
        sid = secrets.token_urlsafe(32)
        s = self.sessions[sid] = Session(secret, secrets.token_urlsafe(24), lang)
        return sid, s

    def cookie(self, response: Response, name: str, value: str, path: str, max_age: int) -> None:
        response.set_cookie(name, value, httponly=True, samesite="strict", secure=self.settings.app_secure_cookies,
                            path=path, max_age=max_age)

    def api_session(self, request: Request) -> Session:
        """The session of an API call, with its CSRF token checked."""
        s = self.sessions.get(request.cookies.get(COOKIE, ""))
        if s is None:
            raise ApiError(401, "not signed in / 尚未登入", "not_signed_in")
        if not secrets.compare_digest(request.headers.get("x-csrf-token", ""), s.csrf):
            raise ApiError(403, "missing or wrong CSRF token; reload the page / 請重新載入頁面", "csrf")
        return s

    # -- pages ---------------------------------------------------------------------------------

    def render(self, name: str, s: Session | None, lang: str, status: int = 200, **context) -> HTMLResponse:
        from hkllm.app.templates import load_all

        t = self.strings[lang]
        html = self.pages.get_template(name).render(t=t, lang=lang, other="en" if lang == "zh" else "zh",
                                                    csrf=s.csrf if s else "", signed_in=bool(s and s.secret),
                                                    auth=self.settings.auth, tasks=TASKS,
                                                    templates=list(load_all().values()), model=self.gateway.engine.name,
                                                    **context)
        return HTMLResponse(html, status_code=status, headers=headers())

    def page(self, request: Request, name: str, **context) -> Response:
        """A page for the session; without one, the sign-in page (or, with --no-auth, a new
        anonymous session: it needs a cookie too, for its CSRF token)."""
        s = self.session(request)
        lang = _lang(request, s)
        if s is None and self.settings.auth:
            return RedirectResponse(f"/app/signin?lang={lang}", status_code=303, headers=headers())
        sid = None
        if s is None:
            sid, s = self.new_session(None, lang)
        s.lang = lang
        if "documents" in context and context["documents"] is None:
            context["documents"] = self.library.documents(owner=self.owner(s))
        response = self.render(name, s, lang, **context)
        if sid:
            self.cookie(response, COOKIE, sid, "/app", SESSION_TTL_S)
        return response

    # -- the model, through the gateway ----------------------------------------------------------

    async def stream_chat(self, s: Session, messages: list[dict], max_tokens: int) -> AsyncIterator[str]:
        """The answer's text as it arrives, through every stage of /v1/chat/completions."""
        key = self.key(s)
        gateway = self.gateway
        try:
            gateway.limiter.admit(key.id, key.rpm, key.tpm)
            body = ChatCompletionRequest(messages=messages, max_tokens=max_tokens, stream=True)
            reply = await gateway.answer(key, gateway.chat_request(body))
        except ApiError as e:
            gateway.record_error("chat", e, key.id)
            raise
        async with contextlib.aclosing(gateway.flow(reply)) as events:
            async for ev in events:
                if isinstance(ev, ErrorEvent):
                    raise ApiError(ev.status, ev.message, ev.code)
                if ev.text:
                    yield ev.text

    async def complete(self, s: Session, messages: list[dict], max_tokens: int) -> str:
        return "".join([piece async for piece in self.stream_chat(s, messages, max_tokens)])

    def count_tokens(self, text: str) -> int:
        tok = getattr(self.gateway.engine, "tokenizer", None)
        return len(tok.encode(text, add_special_tokens=False)) if tok is not None else len(text) // 2 + 1

    @property
    def context_tokens(self) -> int:
        return self.gateway.engine.max_model_len or 4096

    # -- tasks -----------------------------------------------------------------------------------

    def run(self, s: Session, body: dict) -> StreamingResponse:
        """One task's answer as server-sent events (the module docstring lists them)."""
        from hkllm.text.redact import redact

        task = body.get("task")
        if task not in TASKS:
            raise ApiError(400, f"task: one of {', '.join(TASKS)}", "invalid_request", "task")
        if body.get("redact"):            # personal data out before the model sees the prompt
            body = {k: redact(v) if isinstance(v, str) and k in ("text", "question") else v for k, v in body.items()}
            if isinstance(body.get("values"), dict):
                body["values"] = {k: redact(v) if isinstance(v, str) else v for k, v in body["values"].items()}
        owner = self.owner(s)
        try:                              # bad input is a 400 before anything streams
            prepared = self.summary_source(body, owner) if task == "summarize" else self.prepare(task, body, owner)
        except (UserError, ValueError, KeyError, TypeError) as e:
            raise ApiError(400, str(e).strip("'\""), "invalid_request") from None

        async def events():
            try:
                if task == "summarize":
                    async for frame in self.summarize(s, *prepared):
                        yield frame
                    return
                messages, finish = prepared
                text = ""
                async for piece in self.stream_chat(s, messages, MAX_TOKENS[task]):
                    text += piece
                    yield _sse("delta", {"text": piece})
                yield _sse("done", {"text": text, **(finish(text) if text.strip() else {})})
            except ApiError as e:
                yield _sse("error", {"message": e.message, "code": e.code, "status": e.status})
            except UserError as e:         # a task's own check (an empty text, say)
                yield _sse("error", {"message": str(e), "code": "invalid_request", "status": 400})

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers())

    def prepare(self, task: str, body: dict, owner: str):
        """(messages, finish): the task's prompt, and what to add to `done` from the answer."""
        from hkllm.app import tasks

        text = body.get("text", "")
        if task == "draft":
            template, values = body.get("template"), body.get("values") or {}

            def finish(answer):
                d = tasks.assemble_draft(template, values, answer)
                return {"document": d["text"], "failures": d["failures"]}
            return tasks.draft(template, values), finish
        if not isinstance(text, str):
            raise ValueError("text: a string")
        if task == "rewrite":
            mode = body.get("mode", "yue_to_written")
            return tasks.rewrite(text, mode), lambda a: {"warnings": tasks.check_rewrite(text, a, mode)["warnings"]}
        if task == "translate":
            source, target = tasks.resolve_languages(text, body.get("source", "auto"), body.get("target", "en"))
            return tasks.translate(text, source, target), lambda a: {"warnings": tasks.check_translation(a, target)}
        question = body.get("question", "")
        messages, hits = tasks.ask(self.library, owner, question, k=4, context_tokens=self.context_tokens,
                                   count_tokens=self.count_tokens, answer_tokens=MAX_TOKENS["ask"])
        if not hits:
            raise ValueError("no passage of your documents matches the question; upload one first / "
                             "你的文件中沒有與問題相關的段落，請先上載文件")

        def cited(answer):
            names = {h.n: h.doc_name for h in hits}
            return {"citations": [{**c, "doc_name": names.get(c["n"])} for c in tasks.check_citations(answer, hits)]}
        return messages, cited

    def summary_source(self, body: dict, owner: str) -> tuple[str, str]:
        doc = body.get("doc")
        found = self.library.text(int(doc), owner=owner) if str(doc or "").isdigit() else None
        if found is None:
            raise ValueError("doc: upload a document and choose it first / 請先上載並選擇文件")
        return found

    async def summarize(self, s: Session, name: str, text: str) -> AsyncIterator[str]:
        """tasks.summary_steps driven by the gateway: each chunk summarized (not streamed: `progress`
        events), then the summary of the summaries streamed."""
        from hkllm.app import tasks

        n = MAX_TOKENS["summarize"]
        steps = tasks.summary_steps(text, self.context_tokens, self.count_tokens, n)
        answer = None
        try:
            while True:
                messages, index, total, round_ = steps.send(answer)
                yield _sse("progress", {"done": index, "total": total, "round": round_})
                answer = await self.complete(s, messages, n)
        except StopIteration as end:
            plan = end.value
        summary = ""
        async for piece in self.stream_chat(s, plan["messages"], n):
            summary += piece
            yield _sse("delta", {"text": piece})
        yield _sse("done", {"text": summary, "document": None, "chunks": plan["chunks"], "rounds": plan["rounds"],
                            "name": name})


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _lang(request: Request, s: Session | None) -> str:
    asked = request.query_params.get("lang")
    if asked in ("zh", "en"):
        return asked
    return s.lang if s else ("en" if request.headers.get("accept-language", "").lower().startswith("en") else "zh")


def headers(extra: dict | None = None) -> dict:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store", **(extra or {})}


def mount(app: FastAPI, gateway: Gateway) -> DocumentApp:
    """Add 港文通's routes to `hkllm serve`'s app."""
    from fastapi.staticfiles import StaticFiles

    from hkllm.app import docx_export, format_check
    from hkllm.app.retrieval import ExtractError, UnreadableError, extract_text
    from hkllm.app.templates import load_template

    web = DocumentApp(gateway)
    app.state.document_app = web

    class Static(StaticFiles):
        async def get_response(self, path, scope):
            response = await super().get_response(path, scope)
            response.headers.update(headers({"Cache-Control": "no-cache"}))
            return response

    app.mount("/app/static", Static(directory=HERE / "static"), name="app-static")

    @app.get("/app", include_in_schema=False)
    async def home(request: Request):
        return web.page(request, "home.html")

    for task in (*TASKS, "docs"):
        def show(request: Request, task=task):
            return web.page(request, f"{task}.html", task=task, documents=None)
        app.add_api_route(f"/app/{task}", show, methods=["GET"], include_in_schema=False)

    @app.get("/app/passage/{passage_id}", include_in_schema=False)
    async def passage(passage_id: int, request: Request):
        s = web.session(request)
        if s is None:
            return web.page(request, "home.html")          # signs in (or starts an anonymous session) first
        p = web.library.passage(passage_id, owner=web.owner(s))
        if p is None:
            return web.render("message.html", s, s.lang, status=404, message=web.strings[s.lang]["no_passage"])
        return web.render("passage.html", s, s.lang, passage=p)

    @app.get("/app/signin", include_in_schema=False)
    async def signin_form(request: Request):
        lang = _lang(request, None)
        if not web.settings.auth:
            return RedirectResponse(f"/app?lang={lang}", status_code=303)
        token = secrets.token_urlsafe(24)
        response = web.render("signin.html", None, lang, signin_token=token, error=None)
        web.cookie(response, SIGNIN_COOKIE, token, "/app/signin", 3600)
        return response

    @app.post("/app/signin", include_in_schema=False)
    async def signin(request: Request):
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        value = lambda name: (form.get(name) or [""])[0]
        lang = value("lang") if value("lang") in ("zh", "en") else "zh"
        token = request.cookies.get(SIGNIN_COOKIE, "")
        if not token or not secrets.compare_digest(token, value("signin_token")):
            return web.render("signin.html", None, lang, status=403, signin_token="", error="csrf")
        secret = value("key").strip()
        if not secret or gateway.keys.lookup(secret) is None:
            new = secrets.token_urlsafe(24)
            response = web.render("signin.html", None, lang, status=401, signin_token=new, error="bad_key")
            web.cookie(response, SIGNIN_COOKIE, new, "/app/signin", 3600)
            return response
        response = RedirectResponse(f"/app?lang={lang}", status_code=303, headers=headers())
        sid, _ = web.new_session(secret, lang)
        web.cookie(response, COOKIE, sid, "/app", SESSION_TTL_S)
        response.delete_cookie(SIGNIN_COOKIE, path="/app/signin")
        return response

    @app.post("/app/signout", include_in_schema=False)
    async def signout(request: Request):
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        s = web.sessions.get(request.cookies.get(COOKIE, ""))
        if s and secrets.compare_digest((form.get("csrf") or [""])[0], s.csrf):
            web.sessions.pop(request.cookies.get(COOKIE, ""), None)
        response = RedirectResponse("/app/signin" if web.settings.auth else "/app", status_code=303)
        response.delete_cookie(COOKIE, path="/app")
        return response

    # -- API ------------------------------------------------------------------------------------

    @app.post("/app/api/run", include_in_schema=False)
    async def run(request: Request):
        s = web.api_session(request)
        return web.run(s, await json_body(request))

    @app.post("/app/api/upload", include_in_schema=False)
    async def upload(request: Request):
        s = web.api_session(request)
        name = urllib.parse.unquote(request.headers.get("x-file-name", "")).strip()[:200]
        if not name or not name.lower().endswith(UPLOAD_TYPES):
            raise ApiError(400, f"{name or 'file'}: upload PDF, DOCX, HTML or text ({', '.join(UPLOAD_TYPES)}) / "
                           "請上載 PDF、DOCX、HTML 或純文字檔", "unsupported_file", "file")
        data = await request.body()
        try:
            text = extract_text(name, data)
            doc_id = web.library.add(name, text, owner=web.owner(s), ttl_days=web.settings.app_upload_ttl_days)
        except (UnreadableError, ExtractError) as e:
            raise ApiError(400, f"{e} / 無法讀取此文件的文字，未有加入", "unreadable", "file") from None
        web.library.purge_expired()
        doc = next(d for d in web.library.documents(owner=web.owner(s)) if d.id == doc_id)
        return JSONResponse({"id": doc.id, "name": doc.name, "chars": len(text), "expires": doc.expires},
                            headers=headers())

    @app.post("/app/api/docs/{doc_id}/delete", include_in_schema=False)
    async def delete(doc_id: int, request: Request):
        s = web.api_session(request)
        if not web.library.delete(doc_id, owner=web.owner(s)):
            raise ApiError(404, "no such document / 找不到此文件", "not_found")
        return JSONResponse({"deleted": doc_id}, headers=headers())

    def _checked(body: dict) -> tuple[str, list[str], object]:
        text = body.get("text")
        if not isinstance(text, str):
            raise ApiError(400, "text: a string", "invalid_request", "text")
        template = None
        if body.get("template"):
            try:
                template = load_template(body["template"])
            except Exception as e:        # an unknown template id
                raise ApiError(400, f"template: {e}", "invalid_request", "template") from None
        return text, list(template.rules) if template else [], template

    @app.post("/app/api/check", include_in_schema=False)
    async def check(request: Request):
        web.api_session(request)
        text, rules, _ = _checked(await json_body(request))
        from hkllm.app.tasks import failures

        return JSONResponse({"failures": failures(text, rules)}, headers=headers())

    @app.post("/app/api/fix", include_in_schema=False)
    async def fix(request: Request):
        web.api_session(request)
        body = await json_body(request)
        text, rules, _ = _checked(body)
        if body.get("rule") not in rules:
            raise ApiError(400, "rule: not one of this template's rules", "invalid_request", "rule")
        from hkllm.app.tasks import failures

        fixed = format_check.fix(text, body["rule"])
        return JSONResponse({"text": fixed, "failures": failures(fixed, rules)}, headers=headers())

    @app.post("/app/api/export", include_in_schema=False)
    async def export(request: Request):
        web.api_session(request)
        text, _, template = _checked(await json_body(request))
        data = docx_export.export(text, template)
        name = f"{template.id if template else 'document'}.docx"
        return Response(data, media_type="application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                        headers=headers({"Content-Disposition": f'attachment; filename="{name}"'}))

    return web
