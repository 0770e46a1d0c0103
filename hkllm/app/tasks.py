"""The document assistant's five tasks as plain functions: build OpenAI chat `messages` for a model
behind /v1/chat/completions, then check and post-process what it answers.

    from hkllm.app import tasks
    msgs = tasks.draft("letter_reply", values)                       # 1. draft from a template
    doc = tasks.assemble_draft("letter_reply", values, answer)       #    → {"text", "paragraphs", "failures"}
    msgs = tasks.rewrite(text, "yue_to_written")                     # 2. rewrite (yue_to_written | plain | formal | polite)
    tasks.check_rewrite(text, answer, "yue_to_written")              #    → {"ok", "warnings", ...}: still Cantonese?
    msgs = tasks.translate(text, "auto", "en")                       # 3. translate yue ↔ zh-hant ↔ en
    out = tasks.summarize(text, complete, context_tokens=1024)       # 4. map-reduce summary → {"summary", "chunks", "rounds"}
    msgs, hits = tasks.ask(library, owner, question)                 # 5. answer from the owner's documents, cite [n]
    tasks.check_citations(answer, hits)                              #    → [{n, passage_id, exists, quotes}]

Nothing here calls a model: a function that needs several calls (summarize) takes a
`complete(messages) -> str` callable from the caller. To stream the last call of a summary, call
`prepare_summary` (it runs the map and any intermediate reduce rounds) and stream its `messages`.

The prompts are short on purpose: the embedded model is tiny (runs/quickstart/dpo has a context of
1024 tokens), so every instruction is one or two sentences, in the output's language (Traditional
Chinese with Hong Kong forms for Chinese outputs, English for English ones).
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from hkllm.errors import UserError

Messages = list[dict[str, str]]
Complete = Callable[[Messages], str]

DEFAULT_CONTEXT_TOKENS = 1024  # runs/quickstart/dpo: max_position_embeddings
DEFAULT_ANSWER_TOKENS = 256    # room left for the model's answer in every call

# ---------------------------------------------------------------------------------------------
# Shared helpers


def estimate_tokens(text: str) -> int:
    """A conservative token count without a tokenizer: ~1.2 per CJK character, ~1 per 2.2 ASCII
    characters (measured on data/app/docs with the quickstart tokenizer: it never undercounts).
    Pass the model's own tokenizer as `count_tokens` where there is one."""
    ascii_chars = sum(1 for c in text if ord(c) < 128)
    return int((len(text) - ascii_chars) * 1.2 + ascii_chars / 2.2) + 1


def messages_tokens(messages: Messages, count_tokens: Callable[[str], int] = estimate_tokens) -> int:
    """Tokens of a chat prompt: the contents plus ~4 per message for the chat template's markers."""
    return sum(count_tokens(m["content"]) + 4 for m in messages) + 3


def _chat(system: str, user: str) -> Messages:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _lang(variety: str) -> str:
    """"en" or "zh": the language of the instructions for an output of `variety`."""
    return "en" if variety == "en" else "zh"


_FENCE = re.compile(r"^```[\w-]*\n(.*?)\n?```$", re.S)


def clean_answer(answer: str) -> str:
    """The model's answer without code fences and surrounding whitespace (small models wrap text)."""
    text = answer.strip()
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text


def _warning(code: str, zh: str, en: str) -> dict:
    return {"code": code, "message_zh": zh, "message_en": en}


# ---------------------------------------------------------------------------------------------
# 1. Draft from a template

_DRAFT_SYSTEM = {
    "zh": "你是香港政府公文寫作助理。只寫正文段落，段與段之間空一行；不寫稱謂、標題、簽署、日期，不加編號。"
          "用書面語及香港繁體字。",
    "en": "You are a writing assistant for the Hong Kong Government. Write only the body paragraphs, separated by "
          "a blank line: no headline, salutation, signature or date, and no numbering. Use British English.",
}


def _template(template):
    from hkllm.app.templates import load_template

    return load_template(template) if isinstance(template, str) else template


def _facts(template, values: dict, lang: str) -> str:
    """The filled-in fields as "- label: value" lines (the generic instruction when a template has
    no `prompt`)."""
    from hkllm.app.templates import values_for

    vals = values_for(template, values)
    lines = []
    for f in template.fields:
        if values.get(f.name, f.default) in (None, "", []):
            continue
        v = vals[f.name]
        if isinstance(v, list):
            v = "、".join(v) if lang == "zh" else "; ".join(v)
        elif f.type == "date":
            v = format(v, "zh" if lang == "zh" else "en")
        elif f.type == "time":
            v = format(v, lang)
        sep = "：" if lang == "zh" else ": "
        lines.append(f"- {f.label[lang]}{sep}{v}")
    return "\n".join(lines)


def draft(template, values: dict) -> Messages:
    """Chat messages asking for the body paragraphs of `template` (an id or a Template) filled with
    `values`; the layout (references, salutation, signature…) comes from `assemble_draft`. Uses the
    template's own `prompt` where it has one, else lists the facts. Raises TemplateError for a
    missing required field or a bad date."""
    from hkllm.app.templates import prompt, values_for

    t = _template(template)
    lang = "en" if t.language == "en" else "zh"
    instruction = prompt(t, values, lang) if t.prompt else ""
    if instruction:
        # The prompts rarely name the subject, which is what the body must be about.
        vals = values_for(t, values)
        for name in ("subject", "headline"):
            if name in vals and isinstance(vals[name], str) and vals[name] not in instruction:
                label = t.field(name).label[lang]
                instruction = f"{label}{'：' if lang == 'zh' else ': '}{vals[name]}\n{instruction}"
    else:
        head = (f"撰寫{t.label['zh']}的正文，資料如下：" if lang == "zh"
                else f"Write the body of a {t.label['en'].lower()} from these facts:")
        instruction = f"{head}\n{_facts(t, values, lang)}"
    return _chat(_DRAFT_SYSTEM[lang], instruction)


_LEADING_NUMBER = re.compile(
    r"^\s*(?:第?[一二三四五六七八九十]+\s*[、.．]|\d+\s*[.．、)）](?!\d)|[（(]\s*(?:\d+|[一二三四五六七八九十]+)\s*[)）]|[-*•・]\s+)"
    r"[ \t\u3000]*")
_LAYOUT_LINE = re.compile(r"^\s*(?:(?:敬啟者|敬啓者|此致|謹啟|謹覆)[：:，,]?|Dear\s.+|Yours\s+(?:faithfully|sincerely)\s*,?|完|"
                          r"Ends\b.*|NNNN)\s*$", re.I)


def split_paragraphs(answer: str, drop: Iterable[str] = ()) -> list[str]:
    """The answer's paragraphs: split at blank lines (at line ends if it has none), leading numbers
    and bullets removed (render numbers them as the template says), salutation/closing lines and
    any line equal to one of `drop` (the subject, the salutation) left out, since render adds those."""
    text = clean_answer(answer).replace("\r\n", "\n")
    blocks = re.split(r"\n\s*\n", text) if re.search(r"\n\s*\n", text) else text.split("\n")
    skip = {d.strip().rstrip("：:").strip() for d in drop if d and d.strip()}
    out: list[str] = []

    def close(lines: list[str]):
        if lines:  # Chinese lines join without a space, English ones with one
            out.append("".join(lines) if all(re.search(r"[\u3400-\u9fff]", ln) for ln in lines) else " ".join(lines))
        lines.clear()

    for block in blocks:
        current: list[str] = []
        for line in block.split("\n"):
            numbered = bool(_LEADING_NUMBER.match(line))
            line = _LEADING_NUMBER.sub("", line).strip()
            if not line or _LAYOUT_LINE.match(line) or line.rstrip("：:").strip() in skip:
                continue
            if numbered:  # "1. …\n2. …" without blank lines: one paragraph per number
                close(current)
            current.append(line)
        close(current)
    return out


def failure_dicts(failures) -> list[dict]:
    """format_check Failures as JSON-ready dicts: rule, message_zh, message_en, line, column, fixable."""
    return [{"rule": f.rule, "message_zh": f.message_zh, "message_en": f.message_en, "line": f.line,
             "column": f.column, "fixable": f.fixable} for f in failures]


def assemble_draft(template, values: dict, answer_text: str) -> dict:
    """The full document from the model's answer: {"text": the rendered document, "paragraphs": the
    body paragraphs used, "failures": format-check failures of the template's rules as dicts
    (failure_dicts)}. `hkllm.app.format_check.fix_all(text, template.rules)` repairs the fixable ones."""
    from hkllm.app.format_check import check
    from hkllm.app.templates import render

    t = _template(template)
    drop = [str(values.get(n) or "") for n in ("subject", "headline", "salutation")]
    paragraphs = split_paragraphs(answer_text, drop)
    text = render(t, values, paragraphs)
    return {"text": text, "paragraphs": paragraphs, "failures": failure_dicts(check(text, t.rules))}


# ---------------------------------------------------------------------------------------------
# 2. Rewrite

REWRITE_MODES = ("yue_to_written", "plain", "formal", "polite")

_REWRITE = {
    "yue_to_written": {
        "zh": "把以下粵語口語改寫成規範書面語（標準中文），用香港繁體字，保留原意和所有資料，只輸出改寫後的文字。",
    },
    "plain": {
        "zh": "把以下文字改寫成淺白易明的白話：用短句和常用詞，不用公文套語，保留所有資料，只輸出改寫後的文字。",
        "en": "Rewrite the text below in plain English: short sentences, everyday words, active voice. Keep every "
              "fact. Output only the rewritten text.",
    },
    "formal": {
        "zh": "把以下文字改寫成莊重得體的公文語體，用書面語及香港繁體字，保留所有資料，只輸出改寫後的文字。",
        "en": "Rewrite the text below in a formal tone for a Hong Kong Government letter, in British English. Keep "
              "every fact. Output only the rewritten text.",
    },
    "polite": {
        "zh": "把以下文字改寫得更有禮貌、體諒讀者，語氣溫和，用書面語，保留所有資料，只輸出改寫後的文字。",
        "en": "Rewrite the text below in a more courteous and considerate tone, in British English. Keep every fact. "
              "Output only the rewritten text.",
    },
}
_REWRITE_SYSTEM = {"zh": "你是香港政府的中文寫作助理。", "en": "You are an English writing assistant for the Hong Kong Government."}


class TaskError(UserError, ValueError):
    """A request the tasks cannot build (unknown mode, language pair): the message says what is allowed."""


def rewrite(text: str, mode: str) -> Messages:
    """Chat messages asking the model to rewrite `text` in `mode` (one of REWRITE_MODES). English
    text gets English instructions for plain/formal/polite; yue_to_written is always Chinese."""
    from hkllm.text import detect

    if mode not in _REWRITE:
        raise TaskError(f"unknown rewrite mode {mode!r}; modes: {', '.join(REWRITE_MODES)}")
    if not text.strip():
        raise TaskError("nothing to rewrite: the text is empty / 沒有需要改寫的文字")
    lang = "zh" if mode == "yue_to_written" else _lang(detect(text).variety)
    return _chat(_REWRITE_SYSTEM[lang], f"{_REWRITE[mode][lang]}\n\n{text.strip()}")


def check_variety(answer: str, expected: str) -> list[dict]:
    """Warnings where `answer`'s variety (hkllm.text.detect) is not `expected` (yue, zh-hant, en):
    still Cantonese, Simplified characters, the wrong language. [] when it matches."""
    from hkllm.text import detect, simplified_leak

    got = detect(answer).variety if answer.strip() else "other"
    if got == expected:
        return []
    if expected == "zh-hant" and got == "yue":
        return [_warning("still_cantonese", "改寫結果仍是粵語口語，請再改寫或人手修訂為書面語。",
                         "The result is still written Cantonese: rewrite again or edit it into Standard Written "
                         "Chinese.")]
    if expected in ("zh-hant", "yue") and (got == "zh-hans" or simplified_leak(answer)):
        return [_warning("simplified", "結果含簡體字，請轉為香港繁體字（hkllm.text.convert）。",
                         "The result has Simplified characters: convert it to Hong Kong Traditional forms.")]
    names = {"yue": ("粵語", "Cantonese"), "zh-hant": ("書面語（繁體）", "Standard Written Chinese"),
             "zh-hans": ("簡體中文", "Simplified Chinese"), "en": ("英文", "English"), "other": ("其他", "another language")}
    return [_warning("wrong_language", f"結果似乎是{names[got][0]}，而不是{names[expected][0]}。",
                     f"The result looks like {names[got][1]}, not {names[expected][1]}.")]


def check_rewrite(text: str, answer: str, mode: str) -> dict:
    """Deterministic checks around a rewrite: {"ok": no blocking warning, "source_variety",
    "answer_variety", "warnings": [{code, message_zh, message_en}]}. For yue_to_written, an input
    that is not Cantonese gives `not_cantonese` (informational) and an answer still detected as
    Cantonese gives `still_cantonese` (ok False). Other modes check the answer kept the language."""
    from hkllm.text import detect

    source, got = detect(text).variety, detect(answer).variety if answer.strip() else "other"
    warnings = []
    if mode == "yue_to_written":
        if source != "yue":
            warnings.append(_warning("not_cantonese", "原文看來已是書面語，改寫未必有需要。",
                                     "The text does not look like Cantonese; it may not need rewriting."))
        warnings += check_variety(answer, "zh-hant")
    elif source in ("zh-hant", "en"):
        warnings += check_variety(answer, source)
    if not answer.strip():
        warnings.append(_warning("empty", "模型沒有輸出任何文字。", "The model returned no text."))
    blocking = {"still_cantonese", "simplified", "wrong_language", "empty"}
    return {"ok": not any(w["code"] in blocking for w in warnings), "source_variety": source,
            "answer_variety": got, "warnings": warnings}


# ---------------------------------------------------------------------------------------------
# 3. Translate

LANGUAGES = ("yue", "zh-hant", "en")
_LANGUAGE_NAMES = {"yue": ("粵語口語", "Cantonese"), "zh-hant": ("書面語（標準中文）", "Standard Written Chinese"),
                   "en": ("英文", "English")}


def resolve_languages(text: str, source: str, target: str) -> tuple[str, str]:
    """(source, target) checked, with source "auto" detected (Simplified Chinese counts as zh-hant).
    Raises TaskError naming the allowed values for an unknown language, the same language twice, or
    text whose language cannot be told."""
    from hkllm.text import detect

    allowed = ", ".join(LANGUAGES)
    if target not in LANGUAGES:
        raise TaskError(f"unknown target language {target!r}; choose one of {allowed} / 目標語言須為 {allowed}")
    if source == "auto":
        if not text.strip():
            raise TaskError("nothing to translate: the text is empty / 沒有需要翻譯的文字")
        variety = detect(text).variety
        if variety == "other":
            raise TaskError("cannot tell the language of the text; choose the source language (yue, zh-hant or en) "
                            "/ 未能辨認原文語言，請選擇原文語言")
        source = "zh-hant" if variety == "zh-hans" else variety
    elif source not in LANGUAGES:
        raise TaskError(f"unknown source language {source!r}; choose auto or one of {allowed} / 原文語言須為 auto 或 {allowed}")
    if source == target:
        raise TaskError(f"source and target are both {source}: nothing to translate; for Cantonese → written Chinese "
                        f"pick yue → zh-hant / 原文與目標語言相同")
    return source, target


def translate(text: str, source: str, target: str) -> Messages:
    """Chat messages translating `text` from `source` (yue | zh-hant | en | auto) to `target`
    (yue | zh-hant | en): six directions, the instruction in the target's language. Simplified input
    is converted to Hong Kong forms first. Raises TaskError for a bad pair (resolve_languages)."""
    from hkllm.text import convert, detect

    source, target = resolve_languages(text, source, target)
    if source == "zh-hant" and detect(text).variety == "zh-hans":
        text = convert(text, to="hk")  # the model writes HK forms better from HK forms
    src_zh, src_en = _LANGUAGE_NAMES[source]
    if target == "en":
        system = "You are a translator for the Hong Kong Government."
        user = f"Translate the following {src_en} into clear British English. Output only the translation.\n\n{text.strip()}"
    else:
        system = "你是香港政府的翻譯員。"
        style = "地道的香港粵語口語（繁體字）" if target == "yue" else "規範書面語，用香港繁體字"
        user = f"把以下{src_zh}翻譯成{style}，只輸出譯文。\n\n{text.strip()}"
    return _chat(system, user)


def check_translation(answer: str, target: str) -> list[dict]:
    """Warnings if the translation is not in `target` (check_variety): [] when it is."""
    return check_variety(answer, target)


# ---------------------------------------------------------------------------------------------
# 4. Summarize beyond the context window (map-reduce)

_SUMMARY_SYSTEM = {"zh": "你是香港政府的文件摘要助理。", "en": "You summarise documents for the Hong Kong Government."}
_MAP = {"zh": "以下是一份文件的第{i}部分（共{n}部分）。用三至五句書面語撰寫摘要，保留數字、日期和決定：",
        "en": "This is part {i} of {n} of a document. Summarise it in three to five sentences, keeping figures, "
              "dates and decisions:"}
_WHOLE = {"zh": "用三至五句書面語撰寫以下文件的摘要，保留數字、日期和決定：",
          "en": "Summarise the document below in three to five sentences, keeping figures, dates and decisions:"}
_REDUCE = {"zh": "以下是同一份文件各部分的摘要。把它們合併成一段連貫的摘要，刪去重複，保留數字、日期和決定：",
           "en": "Below are summaries of the parts of one document. Merge them into one coherent summary without "
                 "repetition, keeping figures, dates and decisions:"}


def summary_language(text: str) -> str:
    """"en" for English text, else "zh" (Cantonese input is summarised in written Chinese)."""
    from hkllm.text import detect

    return _lang(detect(text).variety)


def chunk_summary_messages(chunk: str, index: int = 1, total: int = 1, language: str = "zh") -> Messages:
    """The map step: messages summarising one chunk (`index` of `total`, 1-based; total 1 = the
    whole document)."""
    head = _WHOLE[language] if total == 1 else _MAP[language].format(i=index, n=total)
    return _chat(_SUMMARY_SYSTEM[language], f"{head}\n\n{chunk.strip()}")


def summary_messages(partials: list[str], language: str = "zh") -> Messages:
    """The reduce step: messages merging partial summaries (numbered, in document order)."""
    body = "\n\n".join(f"({i}) {p.strip()}" for i, p in enumerate(partials, 1))
    return _chat(_SUMMARY_SYSTEM[language], f"{_REDUCE[language]}\n\n{body}")


def _budget(build: Callable[[str], Messages], context_tokens: int, answer_tokens: int,
            count_tokens: Callable[[str], int]) -> int:
    """Tokens left for the text once the instruction (`build("")`) and the answer are counted."""
    room = context_tokens - answer_tokens - messages_tokens(build(""), count_tokens)
    if room < 32:
        raise TaskError(f"a context of {context_tokens} tokens leaves no room for text after the instruction and "
                        f"{answer_tokens} answer tokens; lower answer_tokens or use a model with a longer context")
    return room


def _cut(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """`text` in pieces of at most `max_tokens`, cut at paragraph, then sentence ends
    (retrieval.chunk), a piece still too long halved until it fits."""
    from hkllm.app.retrieval import chunk

    # Characters per piece: a first guess from this text's tokens per character.
    ratio = max(count_tokens(text) / max(len(text), 1), 0.05)
    size = max(16, int(max_tokens / ratio * 0.9))
    out: list[str] = []
    todo = [text[s:e] for s, e in chunk(text, size)]
    while todo:
        piece = todo.pop(0).strip()
        if not piece:
            continue
        if count_tokens(piece) <= max_tokens or len(piece) < 2:
            out.append(piece)
        else:
            half = len(piece) // 2
            todo[:0] = [piece[:half], piece[half:]]
    return out


def _pack(pieces: list[str], max_tokens: int, count_tokens: Callable[[str], int], sep: str = "\n\n") -> list[list[str]]:
    """Consecutive pieces grouped greedily so each group, joined by `sep`, fits `max_tokens`."""
    groups: list[list[str]] = []
    for p in pieces:
        if groups and count_tokens(sep.join(groups[-1] + [p])) <= max_tokens:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def split_for_summary(text: str, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                      count_tokens: Callable[[str], int] = estimate_tokens,
                      answer_tokens: int = DEFAULT_ANSWER_TOKENS, language: str | None = None) -> list[str]:
    """The chunks of `text` whose map-step messages (chunk_summary_messages) fit the context with
    `answer_tokens` to spare; one chunk if the whole text fits."""
    language = language or summary_language(text)
    text = text.strip()
    whole = _budget(lambda c: chunk_summary_messages(c, 1, 1, language), context_tokens, answer_tokens, count_tokens)
    if count_tokens(text) <= whole:
        return [text]
    # "part 12 of 12" is longer than "part 1 of 1": budget for the longest header.
    room = _budget(lambda c: chunk_summary_messages(c, 999, 999, language), context_tokens, answer_tokens, count_tokens)
    return ["\n\n".join(g) for g in _pack(_cut(text, room, count_tokens), room, count_tokens)]


def summary_steps(text: str, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                  count_tokens: Callable[[str], int] = estimate_tokens, answer_tokens: int = DEFAULT_ANSWER_TOKENS,
                  language: str | None = None, max_rounds: int = 8):
    """The summary's calls but its last, as a generator, so that a caller with a blocking model
    (`prepare_summary`) and one with an async one (the web app, which also reports progress) run
    the same algorithm. It yields (messages, index, total, round) for each call — `send` it the
    model's answer — and returns `prepare_summary`'s dict."""
    if not text.strip():
        raise TaskError("nothing to summarise: the text is empty / 沒有需要撮要的文字")
    language = language or summary_language(text)
    chunks = split_for_summary(text, context_tokens, count_tokens, answer_tokens, language)
    if len(chunks) == 1:
        return {"messages": chunk_summary_messages(chunks[0], 1, 1, language), "chunks": 1, "rounds": 1,
                "partials": []}
    partials = []
    for i, c in enumerate(chunks):
        partials.append(clean_answer((yield chunk_summary_messages(c, i + 1, len(chunks), language), i, len(chunks), 1)))
    rounds = 1

    def fits(group: list[str]) -> bool:
        return messages_tokens(summary_messages(group, language), count_tokens) + answer_tokens <= context_tokens

    # A partial longer than half the room is cut, so that any two fit one call and each round at
    # least halves their number: the recursion ends even if the model rambles.
    half = (_budget(lambda p: summary_messages([p], language), context_tokens, answer_tokens, count_tokens) - 16) // 2
    while True:
        rounds += 1
        partials = [p if count_tokens(p) <= half else _cut(p, half, count_tokens)[0] for p in partials if p.strip()]
        groups: list[list[str]] = []
        for p in partials or [""]:
            if groups and fits(groups[-1] + [p]):
                groups[-1].append(p)
            else:
                groups.append([p])
        if len(groups) == 1 or rounds >= max_rounds:
            # (max_rounds is a guard against a tokenizer that defeats the halving: keep what fits.)
            return {"messages": summary_messages(groups[0], language), "chunks": len(chunks), "rounds": rounds,
                    "partials": groups[0]}
        partials = []
        for i, g in enumerate(groups):
            partials.append(clean_answer((yield summary_messages(g, language), i, len(groups), rounds))
                            if len(g) > 1 else g[0])


def prepare_summary(text: str, complete: Complete, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                    count_tokens: Callable[[str], int] = estimate_tokens, answer_tokens: int = DEFAULT_ANSWER_TOKENS,
                    language: str | None = None, max_rounds: int = 8) -> dict:
    """Everything of a summary but its last call: {"messages": the final call's messages (stream
    them), "chunks": how many chunks the text was cut into, "rounds": model-call rounds including
    the final one, "partials": the last round's partial summaries}. Calls `complete(messages)` for
    every chunk (the map) and for every intermediate reduce round."""
    steps = summary_steps(text, context_tokens, count_tokens, answer_tokens, language, max_rounds)
    answer = None
    try:
        while True:
            messages, *_ = steps.send(answer)
            answer = complete(messages)
    except StopIteration as end:
        return end.value


def summarize(text: str, complete: Complete, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
              count_tokens: Callable[[str], int] = estimate_tokens, answer_tokens: int = DEFAULT_ANSWER_TOKENS,
              language: str | None = None) -> dict:
    """Summary of a text of any length: {"summary": the final summary, "chunks": how many chunks the
    map step summarised, "rounds": rounds of model calls (1: the text fitted in one call)}. Each
    call's messages fit `context_tokens` with `answer_tokens` to spare, counted by `count_tokens`."""
    plan = prepare_summary(text, complete, context_tokens, count_tokens, answer_tokens, language)
    return {"summary": clean_answer(complete(plan["messages"])), "chunks": plan["chunks"], "rounds": plan["rounds"]}


# ---------------------------------------------------------------------------------------------
# 5. Ask the owner's documents, with [n] citations

NO_ANSWER = {"zh": "文件中沒有相關資料。", "en": "The documents do not say."}
_ASK_SYSTEM = {
    "zh": "只根據下列段落回答問題，用書面語。每句後以[n]註明出處段落；引用原文時用「」。段落沒有答案就只回答「"
          + NO_ANSWER["zh"] + "」",
    "en": "Answer only from the passages below. After each sentence cite its passage as [n]; put words quoted from a "
          "passage in \"double quotes\". If the passages do not answer the question, reply only \""
          + NO_ANSWER["en"] + "\"",
}


def ask_messages(question: str, passages: list, language: str | None = None) -> Messages:
    """Messages answering `question` from `passages` (Hits or texts), numbered [1]… in order."""
    from hkllm.text import detect

    lang = language or _lang(detect(question).variety)
    listed = "\n\n".join(f"[{i}] {_passage_text(p)}" for i, p in enumerate(passages, 1))
    if lang == "zh":
        user = f"段落：\n{listed or '（沒有段落）'}\n\n問題：{question.strip()}"
    else:
        user = f"Passages:\n{listed or '(none)'}\n\nQuestion: {question.strip()}"
    return _chat(_ASK_SYSTEM[lang], user)


def _passage_text(p) -> str:
    return p if isinstance(p, str) else p.text


def ask(library, owner: str, question: str, k: int = 4, context_tokens: int | None = DEFAULT_CONTEXT_TOKENS,
        count_tokens: Callable[[str], int] = estimate_tokens, answer_tokens: int = DEFAULT_ANSWER_TOKENS,
        also: tuple[str, ...] = ()) -> tuple[Messages, list]:
    """(messages, passages): the `k` best passages of `owner`'s documents for `question`
    (Library.search, `also` = the question in other words), as many as fit `context_tokens`
    (lowest-ranked dropped first; None: no limit), numbered [1]… in the prompt, and the chat
    messages telling the model to answer only from them and cite [n]. `passages` are the Hits in
    the prompt, in order (hit.n == its [n]); [] if nothing matched, then the caller may answer
    NO_ANSWER without calling the model."""
    from dataclasses import replace

    if not question.strip():
        raise TaskError("the question is empty / 問題不能空白")
    hits = library.search(question, owner=owner, k=k, also=also)
    messages = ask_messages(question, hits)
    while context_tokens and len(hits) > 1 and messages_tokens(messages, count_tokens) + answer_tokens > context_tokens:
        hits = hits[:-1]
        messages = ask_messages(question, hits)
    if context_tokens and hits and messages_tokens(messages, count_tokens) + answer_tokens > context_tokens:
        # One passage that alone is too long: the prompt gets its beginning (check_citations still
        # verifies against the whole passage).
        room = context_tokens - answer_tokens - messages_tokens(ask_messages(question, [""]), count_tokens)
        text = hits[0].text
        while text and count_tokens(text) > room:
            text = text[: int(len(text) * 0.9)]
        messages = ask_messages(question, [text])
    hits = [replace(h, n=i) for i, h in enumerate(hits, 1)]
    return messages, hits


_CITATION = re.compile(r"[\[［]\s*(\d+(?:\s*[,，、]\s*\d+)*)\s*[\]］]")
_CITATION_GROUP = re.compile(rf"(?:{_CITATION.pattern}\s*)+")
_TRAILING_CITATION = re.compile(rf"[ \t]*{_CITATION_GROUP.pattern}")
_QUOTED = re.compile(r"「([^「」]+)」|『([^『』]+)』|“([^“”]+)”|\"([^\"\n]+)\"")
_SENTENCE_END = re.compile(r"[。！？!?\n]|\.(?=\s|$)")


def _sentences(answer: str) -> list[tuple[int, int]]:
    """(start, end) of the answer's sentences; a sentence end inside a quotation does not count,
    and a citation right after a sentence end (「…」。[1]) belongs to that sentence."""
    inside = [(m.start(), m.end()) for m in _QUOTED.finditer(answer)]
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(answer):
        if any(s < m.start() < e for s, e in inside):
            continue
        end = m.end()
        g = _TRAILING_CITATION.match(answer, end)
        if g:
            end = g.end()
        if end > start:
            spans.append((start, end))
        start = end
    if start < len(answer):
        spans.append((start, len(answer)))
    return spans


def check_citations(answer: str, passages: list) -> list[dict]:
    """Every [n] in `answer`, in order: {"n", "passage_id" (None if [n] was not given),
    "exists" (False: a number that was not in the prompt), "quotes": [{"text", "verified"}], "start",
    "end" (the marker's offsets)}. A quotation (「…」, 『…』, “…” or "…") belongs to the first
    citation after it in its sentence, else the last one before it; it is verified with
    retrieval.verify_quote against that citation's passage."""
    from hkllm.app.retrieval import verify_quote

    by_n = {}
    for i, p in enumerate(passages, 1):
        n = getattr(p, "n", 0) or i
        by_n[n] = p
    out: list[dict] = []
    for s, e in _sentences(answer):
        sentence = answer[s:e]
        groups = []  # (offset, [entries]) per citation group
        for g in _CITATION_GROUP.finditer(sentence):
            entries = []
            for m in _CITATION.finditer(g.group(0)):
                for num in re.split(r"\s*[,，、]\s*", m.group(1)):
                    n = int(num)
                    p = by_n.get(n)
                    entries.append({"n": n, "passage_id": getattr(p, "id", None) if p is not None else None,
                                    "exists": p is not None, "quotes": [], "start": s + g.start() + m.start(),
                                    "end": s + g.start() + m.end()})
            groups.append((g.start(), entries))
            out.extend(entries)
        if not groups:
            continue
        for q in _QUOTED.finditer(sentence):
            quote = next(x for x in q.groups() if x is not None)
            after = [entries for at, entries in groups if at >= q.end()]
            target = after[0] if after else [entries for at, entries in groups if at < q.start()][-1]
            for entry in target:
                p = by_n.get(entry["n"])
                entry["quotes"].append({"text": quote, "verified": p is not None and verify_quote(quote, _passage_text(p))})
    return out
