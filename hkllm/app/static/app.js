// 港文通: the little JavaScript the pages need (hkllm/app/web.py). No framework, no build step.
// A task form posts JSON to /app/api/run and reads the answer as server-sent events (delta,
// progress, done, error) from fetch's stream, so text appears as it arrives; Stop aborts the
// fetch (the server then stops generating). All text goes in with textContent: no HTML from
// the model or the documents is ever parsed.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
const LANG = () => document.querySelector('meta[name="app-lang"]').content;
const T = {
  zh: {working: "生成中…", done: "完成", stopped: "已停止", empty: "模型沒有回應（空白答案）。請再試一次或改寫要求。",
       failed: "出錯了：", progress: (d, n) => `已摘要 ${d}／${n} 段`, copied: "已複製", fix: "修正",
       noFailures: "格式檢查全部通過。", quoteOk: "引文見於原文", quoteBad: "引文不在原文中",
       missing: "沒有此出處", uploaded: "已上載", uploading: "上載中…", deleted: "已刪除", needText: "請先填寫必填欄位。"},
  en: {working: "Writing…", done: "Done", stopped: "Stopped", empty: "The model gave no answer (empty). Try again or reword the request.",
       failed: "Something went wrong: ", progress: (d, n) => `Summarized ${d} of ${n} parts`, copied: "Copied", fix: "Fix",
       noFailures: "The format check found nothing to fix.", quoteOk: "quote found in the passage",
       quoteBad: "quote NOT in the passage", missing: "no such source", uploaded: "Uploaded", uploading: "Uploading…",
       deleted: "Deleted", needText: "Fill in the required fields first."},
};
const t = () => T[LANG()] || T.zh;

async function post(url, body, extra = {}) {
  const headers = {"X-CSRF-Token": csrf(), ...(extra.headers || {})};
  if (!(body instanceof Blob) && !(body instanceof ArrayBuffer)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  return fetch(url, {method: "POST", body, headers, signal: extra.signal, credentials: "same-origin"});
}

async function errorMessage(response) {
  try { return (await response.json()).error.message; } catch (_) { return `HTTP ${response.status}`; }
}

// -- a task form and its result panel ---------------------------------------------------------

function formBody(form) {
  const body = {task: form.dataset.task, values: {}};
  for (const el of form.elements) {
    if (!el.name || el.matches(":disabled")) continue;     // fields of the other templates' fieldsets
    if (el.type === "checkbox") { if (el.checked) body[el.name] = true; continue; }
    if (el.name.startsWith("values.")) body.values[el.name.slice(7)] = el.value;
    else body[el.name] = el.value;
  }
  return body;
}

function missingRequired(form) {
  for (const el of form.querySelectorAll("[required]")) {
    if (!el.matches(":disabled") && !el.value.trim()) { el.setAttribute("aria-invalid", "true"); el.focus(); return true; }
    el.removeAttribute("aria-invalid");
  }
  return false;
}

class Result {
  constructor(root) {
    this.root = root;
    this.output = root.querySelector("[data-output]");
    this.status = root.querySelector("[data-status]");
    this.error = root.querySelector("[data-error]");
    this.stopButton = root.querySelector("[data-stop]");
    this.copyButton = root.querySelector("[data-copy]");
    this.exportButton = root.querySelector("[data-export]");
    this.text = "";
    this.template = null;
    this.controller = null;
    this.stopButton.addEventListener("click", () => this.stop());
    this.copyButton.addEventListener("click", () => this.copy());
    if (this.exportButton) this.exportButton.addEventListener("click", () => this.exportDocx());
  }

  begin() {
    this.text = "";
    this.output.textContent = "";
    this.error.hidden = true;
    this.error.textContent = "";
    this.output.setAttribute("aria-busy", "true");
    this.status.textContent = t().working;
    this.stopButton.disabled = false;
    this.copyButton.disabled = true;
    if (this.exportButton) this.exportButton.disabled = true;
    for (const sel of ["[data-checks]", "[data-citations]"]) {
      const el = this.root.querySelector(sel);
      if (el) el.hidden = true;
    }
    this.controller = new AbortController();
    return this.controller.signal;
  }

  append(piece) {
    this.text += piece;
    this.output.append(document.createTextNode(piece));
  }

  end(statusText) {
    this.output.setAttribute("aria-busy", "false");
    this.stopButton.disabled = true;
    this.copyButton.disabled = !this.text;
    if (this.exportButton) this.exportButton.disabled = !this.text;
    this.status.textContent = statusText;
    this.controller = null;
  }

  fail(message) {
    this.error.textContent = message;
    this.error.hidden = false;
    this.end("");
  }

  stop() {
    if (this.controller) this.controller.abort();
    this.end(t().stopped);
  }

  async copy() {
    try { await navigator.clipboard.writeText(this.text); this.status.textContent = t().copied; }
    catch (_) { this.status.textContent = this.text ? "" : t().empty; }
  }

  async exportDocx() {
    const response = await post("/app/api/export", {text: this.text, template: this.template});
    if (!response.ok) return this.fail(t().failed + await errorMessage(response));
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = (this.template || "document") + ".docx";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  show(text) {
    this.text = text;
    this.output.textContent = text;
  }

  // Draft: the assembled document and its format failures, each with a one-click fix.
  failures(list) {
    const box = this.root.querySelector("[data-checks]");
    if (!box) return;
    const ul = box.querySelector("[data-failures]");
    ul.replaceChildren();
    if (!list.length) {
      const li = document.createElement("li");
      li.textContent = t().noFailures;
      ul.append(li);
    }
    for (const f of list) {
      const li = document.createElement("li");
      li.textContent = (LANG() === "en" ? f.message_en : f.message_zh) + (f.line ? ` (${f.line})` : "");
      if (f.fixable) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = t().fix;
        b.setAttribute("aria-label", `${t().fix}: ${LANG() === "en" ? f.message_en : f.message_zh}`);
        b.addEventListener("click", () => this.fix(f.rule));
        li.append(" ", b);
      }
      ul.append(li);
    }
    box.hidden = false;
  }

  async fix(rule) {
    const response = await post("/app/api/fix", {text: this.text, template: this.template, rule});
    if (!response.ok) return this.fail(t().failed + await errorMessage(response));
    const body = await response.json();
    this.show(body.text);
    this.failures(body.failures);
    const first = this.root.querySelector("[data-failures] button") || this.output;
    first.focus();
  }

  // Ask: every [n] becomes a link to its passage; each citation's quotes marked checked or not.
  citations(list) {
    const byN = new Map(list.map(c => [String(c.n), c]));
    const parts = this.text.split(/(\[\d+\])/);
    this.output.replaceChildren();
    for (const part of parts) {
      const m = part.match(/^\[(\d+)\]$/);
      const c = m && byN.get(m[1]);
      if (c && c.exists) {
        const a = document.createElement("a");
        a.href = `/app/passage/${c.passage_id}?lang=${LANG()}`;
        a.textContent = part;
        a.setAttribute("data-citation", m[1]);
        this.output.append(a);
      } else {
        this.output.append(document.createTextNode(part));
      }
    }
    const box = this.root.querySelector("[data-citations]");
    if (!box) return;
    const ol = box.querySelector("[data-cite-list]");
    ol.replaceChildren();
    for (const c of list) {
      const li = document.createElement("li");
      li.value = c.n;
      if (c.exists) {
        const a = document.createElement("a");
        a.href = `/app/passage/${c.passage_id}?lang=${LANG()}`;
        a.textContent = c.doc_name || `[${c.n}]`;
        li.append(a);
      } else {
        li.textContent = `[${c.n}] ${t().missing}`;
      }
      for (const q of c.quotes || []) {
        const span = document.createElement("span");
        span.className = q.verified ? "quote-ok" : "quote-bad";
        span.textContent = ` 「${q.text}」 ${q.verified ? t().quoteOk : t().quoteBad}`;
        li.append(span);
      }
      ol.append(li);
    }
    box.hidden = !list.length;
  }
}

async function runTask(form, result) {
  if (missingRequired(form)) { result.fail(t().needText); return; }
  const body = formBody(form);
  result.template = body.template || null;
  const signal = result.begin();
  let response;
  try {
    response = await post("/app/api/run", body, {signal});
  } catch (e) {
    if (e.name !== "AbortError") result.fail(t().failed + e.message);
    return;
  }
  if (!response.ok) return result.fail(t().failed + await errorMessage(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = (frame.match(/^event: (.*)$/m) || [])[1];
        const data = JSON.parse((frame.match(/^data: (.*)$/m) || [, "{}"])[1]);
        if (event === "delta") result.append(data.text);
        else if (event === "progress") result.status.textContent = t().progress(data.done, data.total);
        else if (event === "error") return result.fail(t().failed + data.message);
        else if (event === "done") {
          if (!data.text || !data.text.trim()) return result.fail(t().empty);
          if (data.document) result.show(data.document);
          if (data.failures) result.failures(data.failures);
          if (data.citations) result.citations(data.citations);
          const warnings = (data.warnings || []).map(w => LANG() === "en" ? w.message_en : w.message_zh);
          result.end([t().done, ...warnings].join(" — "));
          return;
        }
      }
    }
    if (result.controller) result.fail(t().empty);       // the stream ended without "done"
  } catch (e) {
    if (e.name !== "AbortError") result.fail(t().failed + e.message);
  }
}

// -- uploads and the document list ----------------------------------------------------------

async function upload(input) {
  const root = input.closest(".upload");
  const status = root.querySelector("[data-upload-status]");
  const error = root.querySelector("[data-upload-error]");
  const file = input.files[0];
  if (!file) return;
  error.hidden = true;
  status.textContent = t().uploading;
  const response = await post("/app/api/upload", file, {headers: {"X-File-Name": encodeURIComponent(file.name)}});
  if (!response.ok) {
    status.textContent = "";
    error.textContent = await errorMessage(response);
    error.hidden = false;
    return;
  }
  const doc = await response.json();
  status.textContent = `${t().uploaded}: ${doc.name}`;
  const select = document.querySelector("[data-doc-select]");
  for (const opt of [...select.options]) if (!opt.value) opt.remove();
  const opt = new Option(doc.name, doc.id, true, true);
  select.append(opt);
}

async function deleteDoc(button) {
  const response = await post(`/app/api/docs/${button.dataset.delete}/delete`, {});
  const status = document.querySelector("[data-status]");
  if (!response.ok) { status.textContent = await errorMessage(response); return; }
  button.closest("tr").remove();
  status.textContent = t().deleted;
}

document.addEventListener("DOMContentLoaded", () => {
  const resultRoot = document.querySelector("section.result");
  const result = resultRoot ? new Result(resultRoot) : null;
  for (const form of document.querySelectorAll("form.task")) {
    form.addEventListener("submit", (e) => { e.preventDefault(); runTask(form, result); });
  }
  const picker = document.querySelector("[data-template-select]");
  if (picker) {
    const sync = () => {
      for (const fs of document.querySelectorAll("fieldset[data-template]")) {
        const on = fs.dataset.template === picker.value;
        fs.hidden = !on;
        fs.disabled = !on;
      }
    };
    picker.addEventListener("change", sync);
    sync();
  }
  for (const input of document.querySelectorAll("[data-upload]")) input.addEventListener("change", () => upload(input));
  for (const b of document.querySelectorAll("[data-delete]")) b.addEventListener("click", () => deleteDoc(b));
});
