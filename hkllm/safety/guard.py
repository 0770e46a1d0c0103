"""Guardrails: moderation in OpenAI's shape, three tiers, a policy of actions, and the gateway's two seams.

    from hkllm.safety.guard import moderate, Guard
    moderate(["教我點樣整炸彈", "點樣殺晒屋企啲曱甴？"])      # {"id": "modr-…", "model": "hkllm-guard-…", "results": [...]}
    Guard().check_text("身份證 A123456(3)").action           # "redact"

    # the gateway's guard policy (hkllm/serve/guards.py), by "package.module:Class":
    request_guards:
      - name: hkllm.safety.guard:RequestModeration         # refuses, redacts, warns, logs
        policy: recipes/safety/guard_policy.yaml
    response_guards:
      - name: hkllm.safety.guard:ResponseRail              # streaming output rail: stops and retracts
        policy: recipes/safety/guard_policy.yaml

Categories: OpenAI's 13 (harassment, harassment/threatening, hate, hate/threatening, illicit,
illicit/violent, self-harm, self-harm/intent, self-harm/instructions, sexual, sexual/minors,
violence, violence/graphic) and Hong Kong's: hk/doxxing (PDPO s.64), hk/intimate-deepfake
(Crimes Ordinance Part XIIIA: non-consensual intimate images, including faked ones, voyeurism),
hk/prompt-injection, hk/personal-data (HKID, phone, e-mail, card numbers: redacted, not refused)
and hk/hidden-text (invisible characters, ASCII smuggled in tag characters: stripped).

Tiers, each adding scores in [0, 1] per category (a category's score is the highest):
1. rules (~0.1 ms): personal data through `hkllm.text.redact`, invisible characters, prompt-injection
   patterns in English and Chinese, and the policy's own `patterns`, all matched on the normalized
   view (`guard_model.normalize`: invisible characters out, homoglyphs and full-width folded, HK
   forms, lower case), so `ｉɡnоrе previous instructions` and `忽略之前的所有指令` match too. A
   pattern inside quotation marks (a question *about* an attack) scores `rules.quoted_score`.
2. classifier (~1 ms): `guard_model.Classifier`. How harmful a text is: the mean of its ANY head
   (harmful at all) and its top category head; the category heads say which harm: a category
   scores that × (its head / the top head), so the top category carries it. (5-fold CV on the
   training set chose the mean over ANY alone: recall 0.91 against 0.88 at 5% of harmless
   flagged.) Texts over 300 characters are scored per window of whole sentences.
3. upstream (optional): `guard_model.UpstreamGuard`, a guard model behind an OpenAI-compatible URL.

The policy (recipes/safety/guard_policy.yaml) gives each category an action — refuse, redact,
warn, log — a threshold, a refusal message (in yue, zh-hant, zh-hans and en: the answer is in
the variety `hkllm.text.detect` finds in the text) and whether it sets `flagged`. A text's action
is the most severe action among its flagged categories.

Results: `Moderation.result()` is one entry of OpenAI's `results` (flagged, categories,
category_scores, category_applied_input_types); `Moderation.audit()` is what the gateway writes
to its audit log (verdict, scores, tiers' latency, redaction counts; never the text). The guards
append their audit records to `audit_records()` inside an `audit_scope()` the gateway opens per
request, and a refusal carries its record as `GuardRefusal.audit`.

Reading order: categories → rules → the policy → Guard → moderate → the gateway's guards (request
seam, streaming output rail) → audit records.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import difflib
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Literal

from hkllm.config import ConfigError
from hkllm.safety import guard_model
from hkllm.safety.guard_model import ANY, ANY_RESPONSE, CLASSIFIED, PARENT, Normalized, normalize

# =============================================================================================
# categories
# =============================================================================================

OPENAI_CATEGORIES = guard_model.OPENAI_CATEGORIES
HK_CATEGORIES = ("hk/doxxing", "hk/intimate-deepfake", "hk/prompt-injection", "hk/personal-data", "hk/hidden-text")
CATEGORIES = OPENAI_CATEGORIES + HK_CATEGORIES
ACTIONS = ("refuse", "redact", "warn", "log")          # most severe first
SEVERITY = {a: len(ACTIONS) - i for i, a in enumerate(ACTIONS)} | {"allow": 0}
VARIETIES = ("yue", "zh-hant", "zh-hans", "en")
DEFAULT_POLICY = "recipes/safety/guard_policy.yaml"
TIERS = ("rules", "classifier", "upstream")
LONG_TEXT = 300                 # characters; longer texts are classified per window of whole sentences
WINDOW = 200
MAX_WINDOWS = 64

# =============================================================================================
# 1. rules
# =============================================================================================

# Prompt injection, matched on the normalized view (lower case, HK Traditional forms).
INJECTION_PATTERNS: dict[str, str] = {
    "ignore-instructions-en": r"\b(?:ignore|disregard|forget|override|bypass)\b[^.\n]{0,30}?\b(?:previous|prior|above|"
                              r"earlier|preceding|all|your|the|system|developer|any)\b[^.\n]{0,25}?\b(?:instructions?|"
                              r"prompts?|rules|directions|guidelines|configuration|settings|restrictions|setup)\b",
    "reveal-prompt-en": r"\b(?:reveal|print|show|repeat|output|display|paste|leak|tell me|give me)\b[^.\n]{0,30}?"
                        r"\b(?:system prompt|hidden instructions?|initial instructions?|original instructions?|"
                        r"developer message|instruction and setting|instructions you were given)",
    "mode-switch-en": r"\b(?:developer|god|dan|jailbreak|jailbroken|unrestricted|uncensored|unfiltered)\s+mode\b",
    "dan-en": r"\bdo anything now\b|\byou are (?:now )?dan\b|\bpretend to be dan\b",
    "no-limits-en": r"\b(?:you have|with|has) no (?:restrictions|rules|limits|filters|censorship)\b|"
                    r"\brestrictions are (?:gone|lifted|removed)\b|\blift all (?:your |the )?(?:safety )?restrictions\b",
    "disable-safety-en": r"\b(?:disable|turn off|switch off|bypass)\b[^.\n]{0,12}\b(?:content|safety) (?:filter|filtering|"
                         r"filters|checks?)\b|\b(?:safety|content) (?:filters?|checks?|filtering) (?:are |is )?"
                         r"(?:now )?(?:disabled|off|removed)\b",
    "chat-markup": r"<\|?(?:im_start|im_end|system|endoftext|eot_id|start_header_id)\|?>|\[/?(?:system|inst)\]|"
                   r"(?:^|\n)#{2,}\s*(?:system|new instructions?)\b",
    "ignore-instructions-zh": r"(?:忽略|無視|忽視|唔好理|唔使理|唔理|不要理會|別理|忘記|忘掉)(?:晒|掉)?[^。！？\n]{0,12}?"
                              r"(?:指示|指令|規則|設定|提示|要求|限制|規定)",
    "reveal-prompt-zh": r"(?:顯示|透露|輸出|講|話俾我知|話我知|重複|列出|貼出|複述|打印)[^。！？\n]{0,12}?"
                        r"(?:系統提示|系統指令|system prompt|隱藏指令|初始指令|原始指令|設定原文|指示同設定原文|指示和設定原文)",
    "mode-switch-zh": r"(?:進入|開啟|啟動|切換到|切換至|開|入)(?:咗)?(?:開發者|開發人員|越獄|無限制|無審查|無過濾|上帝|dan)模式",
    "no-limits-zh": r"(?:冇|沒有|無|不受)(?:任何)?(?:限制|審查|規則|過濾)(?:嘅|的)?(?:ai|人工智能|助手|模式|黑客)|"
                    r"(?:失去|冇咗|沒有了)(?:所有|全部)(?:限制|規則)",
    "disable-safety-zh": r"(?:關閉|停用|解除|移除|取消)(?:所有|全部|晒)?(?:內容過濾|安全限制|安全檢查|審查|過濾)|"
                         r"安全檢查(?:已|已經)?(?:關閉|停用)",
}
_INJECTION = {name: re.compile(p) for name, p in INJECTION_PATTERNS.items()}
_QUOTE_PAIRS = [("“", "”"), ("「", "」"), ("『", "』"), ('"', '"'), ("‘", "’")]


_SINGLE_QUOTED = re.compile(r"(?:(?<=[\s(:：])|^)'[^'\n]{2,}'(?=[\s.,;:!?)]|$)")


def _quoted(text: str, start: int, end: int) -> bool:
    """Is text[start:end] inside a pair of quotation marks?"""
    if any(m.start() < start and end < m.end() for m in _SINGLE_QUOTED.finditer(text)):
        return True
    for left, right in _QUOTE_PAIRS:
        before = text.rfind(left, 0, start)
        if before < 0:
            continue
        if left == right:                               # straight quotes: an odd count before means "open"
            if text.count(left, 0, start) % 2 == 1 and right in text[end:]:
                return True
        elif text.rfind(right, before + 1, start) < 0 and text.find(right, end) >= 0:
            return True
    return False


@dataclass
class RuleHit:
    category: str
    rule: str
    score: float
    span: tuple[int, int] | None = None   # in the view


@dataclass
class RuleVerdict:
    scores: dict[str, float]
    hits: list[RuleHit]
    redactions: dict[str, int]


def run_rules(n: Normalized, extra: dict[str, list[re.Pattern]] | None = None, quoted_score: float = 0.5,
              direction: str = "request") -> RuleVerdict:
    """The rules tier over a normalized text: personal data, hidden text, injection, the policy's patterns."""
    import unicodedata

    from hkllm.text.redact import redact_with_counts

    hits: list[RuleHit] = []
    counts = redact_with_counts(unicodedata.normalize("NFKC", n.clean)).counts
    if counts:
        hits.append(RuleHit("hk/personal-data", "redact:" + ",".join(sorted(counts)), 1.0))
    if n.hidden:
        strong = n.hidden_kinds.get("tag", 0) + n.hidden_kinds.get("bidi", 0)
        hits.append(RuleHit("hk/hidden-text", "invisible:" + ",".join(sorted(n.hidden_kinds)),
                            1.0 if strong else min(1.0, 0.5 * n.hidden)))
    if direction == "request":
        for name, rx in _INJECTION.items():
            m = rx.search(n.view)
            if m:
                score = quoted_score if _quoted(n.view, m.start(), m.end()) else 1.0
                hits.append(RuleHit("hk/prompt-injection", "injection:" + name, score, m.span()))
    for category, patterns in (extra or {}).items():
        for i, rx in enumerate(patterns):
            m = rx.search(n.view)
            if m:
                hits.append(RuleHit(category, f"pattern:{category}[{i}]", 1.0, m.span()))
    scores: dict[str, float] = {}
    for h in hits:
        scores[h.category] = max(scores.get(h.category, 0.0), h.score)
    return RuleVerdict(scores, hits, dict(counts))


# =============================================================================================
# 2. the policy
# =============================================================================================

Action = Literal["refuse", "redact", "warn", "log"]


@dataclass
class CategoryPolicy:
    action: Action = "log"                     # what a flagged request gets
    response_action: Action | None = None      # what a flagged answer gets (default: `action`)
    threshold: float | None = None             # flagged at this score (default: classifier.threshold, or 0.5 for rules-only)
    message: str = "default"                   # which of `refusals` a refusal says
    flag: bool = True                          # sets OpenAI's `flagged` (personal data and hidden text do not)
    patterns: list[str] = field(default_factory=list)   # extra regular expressions (rules tier), on the normalized view


@dataclass
class ClassifierPolicy:
    enabled: bool = True
    threshold: float = 0.55                    # harmful from this score (5-fold CV on the training set: recall 0.91, 4.8% of harmless flagged)
    response_threshold: float = 0.8            # the same for answers (the classifier learnt from requests)
    model: str | None = None                   # a trained file; null: train on this checkout's data at first use (cached)


@dataclass
class RulesPolicy:
    enabled: bool = True
    quoted_score: float = 0.4                  # an injection pattern inside quotation marks scores this, not 1


@dataclass
class UpstreamPolicy:
    url: str                                   # the server's OpenAI-compatible base URL, e.g. http://gpu-node:8000/v1
    model: str                                 # e.g. Qwen/Qwen3Guard-Gen-0.6B, meta-llama/Llama-Guard-3-1B
    format: Literal["qwen3guard", "llama-guard"] = "qwen3guard"
    api_key_env: str | None = None             # environment variable holding its key
    timeout_s: float = 10.0
    controversial: float = 0.5                 # the score Qwen3Guard's "Controversial" gives its categories
    on_error: Literal["allow", "refuse"] = "allow"   # what an unreachable guard model means for the request
    responses: bool = False                    # also ask it about answers (once, when the answer ends)


@dataclass
class StreamPolicy:
    hold_chars: int = 200                      # release at a sentence end, or after this many characters at the latest
    context_chars: int = 300                   # already released text reviewed again with each new piece
    notice: dict[str, str] = field(default_factory=dict)   # per variety: what replaces a stopped answer


@dataclass
class Policy:
    categories: dict[str, CategoryPolicy] = field(default_factory=dict)
    refusals: dict[str, dict[str, str]] = field(default_factory=dict)
    classifier: ClassifierPolicy = field(default_factory=ClassifierPolicy)
    rules: RulesPolicy = field(default_factory=RulesPolicy)
    upstream: UpstreamPolicy | None = None
    stream: StreamPolicy = field(default_factory=StreamPolicy)
    source: str = field(default="policy", metadata={"internal": True})

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path | dict | Policy | None = None) -> Policy:
        """A policy from a YAML file or the same mapping; None: recipes/safety/guard_policy.yaml.
        Every error names the file and the field."""
        from hkllm import assets, config

        if isinstance(source, Policy):
            return source
        if source is None:
            source = assets.path(DEFAULT_POLICY)
        if isinstance(source, dict):
            where, data = "guard policy", source
        else:
            where = str(source)
            data = config.read_yaml(source, "guard policy")
            data = {} if data is None else data
        policy = config.build(cls, data, where, what="guard policy field")
        policy.source = where
        policy.validate()
        return policy

    def validate(self) -> None:
        where = self.source
        if "default" not in self.refusals:
            raise ConfigError(where, "refusals.default", "is required (the refusal every category says by default)")
        for name in self.categories:
            if name not in CATEGORIES:
                close = difflib.get_close_matches(name, CATEGORIES, n=1)
                hint = f"did you mean '{close[0]}'?" if close else "categories: " + ", ".join(CATEGORIES)
                raise ConfigError(where, f"categories.{name}", f"is not a category ({hint})")
        for name, c in self.categories.items():
            if c.threshold is not None and not 0 < c.threshold <= 1:
                raise ConfigError(where, f"categories.{name}.threshold", f"must be in (0, 1], got {c.threshold}")
            if c.message not in self.refusals:
                raise ConfigError(where, f"categories.{name}.message",
                                  f"names no message in `refusals` (known: {', '.join(self.refusals) or 'none'})")
            for i, p in enumerate(c.patterns):
                try:
                    re.compile(p)
                except re.error as e:
                    raise ConfigError(where, f"categories.{name}.patterns[{i}]", f"is not a regular expression ({e})") from None
        for key, messages in self.refusals.items():
            for variety in ("yue", "zh-hant", "en"):
                if not (messages.get(variety) or "").strip():
                    raise ConfigError(where, f"refusals.{key}.{variety}", "is required (a refusal in each variety)")
            unknown = set(messages) - set(VARIETIES)
            if unknown:
                raise ConfigError(where, f"refusals.{key}.{sorted(unknown)[0]}", f"is not a variety ({', '.join(VARIETIES)})")
        for key in ("threshold", "response_threshold"):
            v = getattr(self.classifier, key)
            if not 0 < v <= 1:
                raise ConfigError(where, f"classifier.{key}", f"must be in (0, 1], got {v}")
        if self.stream.hold_chars < 1 or self.stream.context_chars < 0:
            raise ConfigError(where, "stream.hold_chars", "must be at least 1 (and context_chars at least 0)")

    # -- reading -------------------------------------------------------------------------------
    def category(self, name: str) -> CategoryPolicy:
        return self.categories.get(name) or CategoryPolicy()

    def threshold(self, name: str, direction: str = "request") -> float:
        c = self.category(name)
        if c.threshold is not None:
            return c.threshold
        if name in CLASSIFIED and self.classifier.enabled:
            return self.classifier.response_threshold if direction == "response" else self.classifier.threshold
        return 0.5

    def action(self, name: str, direction: str = "request") -> str:
        c = self.category(name)
        return (c.response_action or c.action) if direction == "response" else c.action

    def message(self, key: str, variety: str) -> str:
        from hkllm.text import convert

        messages = self.refusals.get(key) or self.refusals["default"]
        if variety in messages:
            return messages[variety]
        if variety == "zh-hans":
            return convert(messages["zh-hant"], "hans")
        return messages["en"]

    def notice(self, variety: str) -> str:
        from hkllm.text import convert

        n = self.stream.notice
        if variety in n:
            return n[variety]
        if variety == "zh-hans" and "zh-hant" in n:
            return convert(n["zh-hant"], "hans")
        return n.get("en") or "[answer withdrawn by the content policy]"

    def fingerprint(self) -> str:
        described = {k: v for k, v in dataclasses.asdict(self).items() if k != "source"}
        return hashlib.sha256(json.dumps(described, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


# =============================================================================================
# 3. the guard: tiers → scores → flags → action
# =============================================================================================

@dataclass
class Moderation:
    """One text's verdict."""
    direction: str                              # "request" | "response"
    scores: dict[str, float]                    # every category, the highest score any tier gave
    categories: dict[str, bool]                 # every category: flagged?
    flagged: bool                               # any flagged category whose policy sets `flag`
    action: str                                 # "allow" | "log" | "warn" | "redact" | "refuse"
    variety: str                                # of the text (hkllm.text.detect)
    hits: list[str] = field(default_factory=list)          # rules that matched, "tier:category" for the others
    redactions: dict[str, int] = field(default_factory=dict)
    hidden: dict[str, int] = field(default_factory=dict)   # invisible characters by kind
    homoglyphs: int = 0
    message: str | None = None                  # the refusal, in the text's variety, when action is refuse
    redacted: str | None = None                 # the text to forward instead, when action is redact
    latency_ms: dict[str, float] = field(default_factory=dict)
    upstream: dict | None = None                # the guard model's label, own categories, error
    policy: str = ""                            # the policy's fingerprint

    def result(self) -> dict:
        """One entry of OpenAI's moderation `results`."""
        return {"flagged": self.flagged, "categories": dict(self.categories),
                "category_scores": {c: round(s, 6) for c, s in self.scores.items()},
                "category_applied_input_types": {c: ["text"] for c in self.categories}}

    def audit(self) -> dict:
        """What the audit log keeps: the verdict and its numbers, never the text."""
        record = {"direction": self.direction, "action": self.action, "flagged": self.flagged,
                  "categories": [c for c, f in self.categories.items() if f],
                  "scores": {c: round(s, 3) for c, s in self.scores.items() if s >= 0.01},
                  "variety": self.variety, "hits": self.hits, "latency_ms": self.latency_ms, "policy": self.policy}
        for key in ("redactions", "hidden", "homoglyphs", "upstream"):
            if getattr(self, key):
                record[key] = getattr(self, key)
        return record


class Guard:
    """The three tiers under one policy. `check_text(text)` → Moderation."""

    def __init__(self, policy: str | Path | dict | Policy | None = None, classifier: guard_model.Classifier | None = None):
        import os

        self.policy = Policy.load(policy)
        p = self.policy
        self.patterns = {name: [re.compile(x) for x in c.patterns] for name, c in p.categories.items() if c.patterns}
        self.classifier = classifier
        if self.classifier is None and p.classifier.enabled:
            self.classifier = guard_model.load_classifier(p.classifier.model)
        self.upstream = None
        if p.upstream is not None:
            u = p.upstream
            key = os.environ.get(u.api_key_env) if u.api_key_env else None
            self.upstream = guard_model.UpstreamGuard(u.url, u.model, u.format, key, u.timeout_s, u.controversial)
        parts = [p.fingerprint(), self.classifier.fingerprint if self.classifier else "-",
                 f"{p.upstream.url}|{p.upstream.model}" if p.upstream else "-"]
        self.fingerprint = hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]
        self.model = f"hkllm-guard-{self.fingerprint}"

    # -- the tiers -----------------------------------------------------------------------------
    def classify(self, view: str, direction: str = "request") -> dict[str, float]:
        """The classifier tier's category scores. How harmful the text is: the mean of the ANY head
        (ANY_RESPONSE for answers) and the top category head; each category gets that × (its head /
        the top head), so the top category carries it; a parent scores at least its children.
        A text longer than LONG_TEXT is scored per window of whole sentences (the highest counts):
        one harmful sentence in a long document is not diluted by the rest."""
        best: dict[str, float] = {}
        for w in windows(view):
            raw = self.classifier.scores(w)
            heads = {c: raw[c] for c in CLASSIFIED if c in raw}
            top = max(heads.values(), default=0.0)
            p_any = raw.get(ANY_RESPONSE if direction == "response" and ANY_RESPONSE in raw else ANY, 0.0)
            harm = (p_any + top) / 2
            for c, v in heads.items():
                best[c] = max(best.get(c, 0.0), harm * v / top if top else 0.0)
        for child, parent in PARENT.items():
            if child in best:
                best[parent] = max(best.get(parent, 0.0), best[child])
        return best

    def check_text(self, text: str, direction: str = "request", prompt: str | None = None,
                   variety: str | None = None, tiers: tuple[str, ...] = TIERS) -> Moderation:
        """Moderate one text: a request (or one of its messages), or an answer (`direction`
        "response", `prompt` the request it answers). `variety` overrides the detected one for the
        refusal (e.g. an answer's refusal in the asker's variety); `tiers` limits the tiers run."""
        from hkllm.text import detect, is_refusal

        p, latency, hits = self.policy, {}, []
        t0 = time.perf_counter()
        n = normalize(text)
        scores = {c: 0.0 for c in CATEGORIES}
        redactions: dict[str, int] = {}
        if p.rules.enabled and "rules" in tiers:
            rv = run_rules(n, self.patterns, p.rules.quoted_score, direction)
            for c, s in rv.scores.items():
                scores[c] = max(scores[c], s)
            hits += [h.rule for h in rv.hits]
            redactions = rv.redactions
        latency["rules"] = round((time.perf_counter() - t0) * 1000, 3)
        if self.classifier is not None and n.view and "classifier" in tiers:
            t1 = time.perf_counter()
            cs = self.classify(n.view, direction)
            # an answer that declines is not harmful, whatever it mentions
            if not (direction == "response" and is_refusal(text)):
                for c, s in cs.items():
                    scores[c] = max(scores[c], s)
                    if s >= p.threshold(c, direction):
                        hits.append(f"classifier:{c}")
            latency["classifier"] = round((time.perf_counter() - t1) * 1000, 3)
        upstream_record = None
        if self.upstream is not None and "upstream" in tiers and (direction == "request" or p.upstream.responses):
            uv = self.upstream.classify(text, direction, prompt)
            latency["upstream"] = uv.latency_ms
            upstream_record = {"label": uv.label, "labels": uv.labels, **({"error": uv.error} if uv.error else {}),
                               **({"refusal": uv.refusal} if uv.refusal is not None else {})}
            for c, s in uv.scores.items():
                if c in scores:
                    scores[c] = max(scores[c], s)
                    if s >= p.threshold(c, direction):
                        hits.append(f"upstream:{c}")
            if uv.error and p.upstream.on_error == "refuse":
                hits.append("upstream:error")
        flags = {c: scores[c] >= p.threshold(c, direction) for c in CATEGORIES}
        flagged = any(f and p.category(c).flag for c, f in flags.items())
        actions = [p.action(c, direction) for c, f in flags.items() if f]
        if "upstream:error" in hits:
            actions.append("refuse")
        action = max(actions, key=SEVERITY.get, default="allow")
        v = variety or detect(text).variety
        v = v if v in VARIETIES else "en"
        m = Moderation(direction, scores, flags, flagged, action, v, hits, redactions, dict(n.hidden_kinds),
                       n.homoglyphs, latency_ms=latency, upstream=upstream_record, policy=self.fingerprint)
        if action == "refuse":
            m.message = p.message(self._message_key(flags, scores, direction), v)
        elif action == "redact":
            m.redacted = self.redact(n, flags, direction)
        latency["total"] = round((time.perf_counter() - t0) * 1000, 3)
        return m

    def _message_key(self, flags: dict, scores: dict, direction: str) -> str:
        refused = [c for c, f in flags.items() if f and self.policy.action(c, direction) == "refuse"]
        special = [c for c in refused if self.policy.category(c).message != "default"]
        pick = max(special or refused or ["default"], key=lambda c: scores.get(c, 0.0))
        return self.policy.category(pick).message if pick in self.policy.categories else "default"

    def redact(self, n: Normalized, flags: dict, direction: str) -> str:
        """The text with what the redact categories found replaced: personal data by placeholders
        (`hkllm.text.redact`), invisible characters removed."""
        import unicodedata

        from hkllm.text.redact import redact_with_counts

        text = n.clean                                   # invisible characters are gone from it already
        if flags.get("hk/personal-data") and self.policy.action("hk/personal-data", direction) == "redact":
            plain = redact_with_counts(text)
            folded = redact_with_counts(unicodedata.normalize("NFKC", text))
            text = folded.text if sum(folded.counts.values()) > sum(plain.counts.values()) else plain.text
        return text

    # -- several texts ---------------------------------------------------------------------------
    def moderate(self, texts: list[str], direction: str = "request") -> dict:
        """OpenAI's moderation response for `texts`, plus each result's hkllm verdict under "hkllm"."""
        results = []
        for text in texts:
            m = self.check_text(text, direction)
            results.append({**m.result(), "hkllm": {"action": m.action, "variety": m.variety,
                                                    **({"message": m.message} if m.message else {}),
                                                    **({"redacted": m.redacted} if m.redacted is not None else {}),
                                                    "latency_ms": m.latency_ms}})
        return {"id": "modr-" + uuid.uuid4().hex[:24], "model": self.model, "results": results}


_SENTENCE = re.compile(r"[^。！？!?\n.；;]*(?:[。！？!?\n；;]+|\.(?=\s|$)|$)")


def windows(view: str, size: int = WINDOW) -> list[str]:
    """`view` itself when short, else windows of whole sentences of about `size` characters,
    each starting one sentence after the last (a sentence longer than `size` is cut)."""
    if len(view) <= LONG_TEXT:
        return [view]
    sentences = [s for s in _SENTENCE.findall(view) if s.strip()]
    pieces = [s[i:i + size] for s in sentences for i in range(0, len(s), size)]
    out, step = [], max(1, len(pieces) // MAX_WINDOWS + 1)
    for i in range(0, len(pieces), step):
        w, j = "", i
        while j < len(pieces) and len(w) + len(pieces[j]) <= size:
            w += pieces[j]
            j += 1
        out.append(w or pieces[i])
    return out


_GUARDS: dict[str, Guard] = {}


def guard_for(policy: str | Path | dict | Policy | None = None) -> Guard:
    """One Guard per policy file per process (dicts and Policy objects are not shared)."""
    if isinstance(policy, (dict, Policy)):
        return Guard(policy)
    key = str(Path(policy).resolve()) if policy else "<default>"
    if key not in _GUARDS:
        _GUARDS[key] = Guard(policy)
    return _GUARDS[key]


def moderate(texts: list[str] | str, policy: str | Path | dict | Policy | None = None) -> dict:
    """`POST /v1/moderations` for the gateway: {"id", "model", "results": [{flagged, categories,
    category_scores, category_applied_input_types, hkllm: {action, variety, ...}}]} for each text,
    in order. `texts` is what OpenAI's `input` may be: a string, a list of strings, or a list of
    {"type": "text", "text": ...} parts (an image part is a ValueError: the gateway's 400)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list):
        raise ValueError("input must be a string or a list of strings")
    plain = []
    for i, t in enumerate(texts):
        if isinstance(t, dict) and t.get("type") == "text" and isinstance(t.get("text"), str):
            t = t["text"]                     # OpenAI's multi-modal form: [{"type": "text", "text": ...}]
        elif isinstance(t, dict) and t.get("type") == "image_url":
            raise ValueError(f"input[{i}]: images are not moderated here; send text")
        if not isinstance(t, str):
            raise ValueError(f"input[{i}]: expected a string or {{\"type\": \"text\", \"text\": ...}}")
        plain.append(t)
    return guard_for(policy).moderate(plain)


# =============================================================================================
# 4. the gateway's guards
# =============================================================================================

class GuardRefusal(Exception):
    """A refused request. Shaped like hkllm.serve.protocol.ApiError (400, code "content_filter";
    this layer sits below serve and cannot raise that class itself): the gateway turns it into
    `refusal(message, param)` and writes `audit` to its log."""

    status, code = 400, "content_filter"

    def __init__(self, message: str, param: str | None = None, audit: list[dict] | None = None):
        super().__init__(message)
        self.message, self.param, self.audit = message, param, audit or []

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": self.code}}


class RequestModeration:
    """RequestGuard (hkllm/serve/guards.py): every request through the guard. The last user
    message (or the prompt) goes through every tier; the other messages that are not the
    assistant's through the rules (injection, hidden text, personal data). Refuse: raises
    GuardRefusal with the refusal in the asker's variety; redact: returns the request with
    personal data replaced and invisible characters removed; warn and log: passes. Token-id
    prompts carry no text and pass."""

    def __init__(self, policy: str | None = None):
        self.guard = guard_for(policy)
        self.version = "m1-" + self.guard.fingerprint
        self.settings = {"policy": policy}

    def moderate_request(self, request) -> tuple[list[tuple[int | None, Moderation]], list[dict]]:
        """[(message index or None for the prompt, Moderation)], audit records."""
        found: list[tuple[int | None, Moderation]] = []
        if request.messages is not None:
            last = max((i for i, m in enumerate(request.messages) if m.get("role") == "user"), default=None)
            for i, msg in enumerate(request.messages):
                content = msg.get("content")
                if msg.get("role") == "assistant" or not isinstance(content, str) or not content:
                    continue
                if i == last:
                    found.append((i, self.guard.check_text(content, "request")))
                else:
                    found.append((i, self._rules_only(content)))
        elif isinstance(request.prompt, str) and request.prompt:
            found.append((None, self.guard.check_text(request.prompt, "request")))
        records = [{"message": i, **m.audit()} if i is not None else m.audit() for i, m in found]
        return found, records

    def _rules_only(self, text: str) -> Moderation:
        return self.guard.check_text(text, "request", tiers=("rules",))

    def apply(self, request):
        """The request guard's decision, synchronously (check() runs it in a thread when a guard model is called)."""
        found, records = self.moderate_request(request)
        _record(records)
        param = "messages" if request.messages is not None else "prompt"
        refused = [m for _, m in found if m.action == "refuse"]
        if refused:
            raise GuardRefusal(refused[-1].message, param, records)
        redacted = [(i, m) for i, m in found if m.action == "redact" and m.redacted is not None]
        if not redacted:
            return None
        if request.messages is None:
            return dataclasses.replace(request, prompt=redacted[0][1].redacted)
        messages = [dict(m) for m in request.messages]
        for i, m in redacted:
            messages[i]["content"] = m.redacted
        return dataclasses.replace(request, messages=messages)

    async def check(self, request, key):
        if self.guard.upstream is not None:        # a network call: off the event loop (the context, audit list included, goes along)
            return await asyncio.to_thread(self.apply, request)
        return self.apply(request)


def _last_user_text(request) -> str:
    if getattr(request, "messages", None):
        for m in reversed(request.messages):
            if m.get("role") == "user" and isinstance(m.get("content"), str):
                return m["content"]
        return ""
    prompt = getattr(request, "prompt", None)
    return prompt if isinstance(prompt, str) else ""


@dataclass
class RailStep:
    text: str                    # to send now
    stop: bool = False           # end the answer here (finish_reason "content_filter"); `text` is the notice
    retract: bool = False        # ... and withdraw what was already sent
    moderation: Moderation | None = None


_SENTENCE_END = re.compile(r"[。！？!?\n]|[.;；](?=\s)")
_SOFT_BREAK = re.compile(r"[\s，、,：:]")
_PII_CHAR = re.compile(r"[\w@.+\-()（）]")


class OutputRail:
    """The streaming output rail for one answer: `feed(piece, final)` → RailStep.

    Text is held back until a sentence ends (or `hold_chars` pile up: then cut at a space or a
    comma that is not inside a digit run or an address, so a phone number or an e-mail split
    across pieces is redacted whole). Each released piece is reviewed with the last
    `context_chars` already sent. A piece that alone is to be refused stops the answer; a piece
    that is harmful only together with what was already sent stops it and retracts that too.
    Personal data is redacted; warn and log only record."""

    def __init__(self, guard: Guard, variety: str = "en", prompt: str | None = None):
        self.guard, self.variety, self.prompt = guard, variety, prompt
        self.released, self.pending = "", ""
        self.records: list[dict] = []
        self.stopped = False

    def _cut(self, text: str, final: bool) -> int:
        if final:
            return len(text)
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        if ends:
            return ends[-1]
        hold = self.guard.policy.stream.hold_chars
        if len(text) < hold:
            return 0
        for m in reversed(list(_SOFT_BREAK.finditer(text))):
            window = text[max(0, m.start() - 16):m.end() + 16]
            if not re.search(r"\d|@", window):
                return m.end()
        # no safe break (unpunctuated text): keep the last 32 characters back, unless they may be
        # part of a number or an address, then wait (at most 4 × hold_chars)
        cut = len(text) - 32
        if not re.search(r"\d|@", text[cut - 16:cut + 16]) or len(text) > 4 * hold:
            return cut
        return 0

    def feed(self, piece: str, final: bool = False) -> RailStep:
        if self.stopped:
            return RailStep("", stop=True)
        self.pending += piece
        cut = self._cut(self.pending, final)
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        if not ready:
            return RailStep("")
        context = self.released[-self.guard.policy.stream.context_chars:] if self.guard.policy.stream.context_chars else ""
        use_upstream = final and self.guard.policy.upstream is not None and self.guard.policy.upstream.responses
        tiers = TIERS if use_upstream else ("rules", "classifier")
        whole = self.guard.check_text(context + ready, "response", self.prompt, self.variety, tiers)
        step_record = {"rail": "window", **whole.audit()}
        if whole.action == "refuse":
            alone = (self.guard.check_text(ready, "response", self.prompt, self.variety, ("rules", "classifier"))
                     if context else whole)
            retract = bool(self.released) and alone.action != "refuse"
            self.stopped = True
            self.records.append({**step_record, "stopped": True, "retract": retract,
                                 "released_chars": len(self.released)})
            return RailStep(self.guard.policy.notice(self.variety), stop=True, retract=retract, moderation=whole)
        out = ready
        if whole.action == "redact" or whole.redactions:
            piece_m = self.guard.check_text(ready, "response", self.prompt, self.variety, ("rules", "classifier"))
            if piece_m.action == "redact" and piece_m.redacted is not None:
                out = piece_m.redacted
        if whole.action != "allow":
            self.records.append(step_record)
        self.released += out
        return RailStep(out, moderation=whole)


class ResponseRail:
    """ResponseGuard (hkllm/serve/guards.py): the streaming output rail over the answer's Events.
    A stop yields a last Event with finish_reason "content_filter" whose text is the notice in the
    asker's variety, with the attribute `retract` set to True when what was already sent must be
    withdrawn (the audit record says so too). An error event is passed on as it is."""

    def __init__(self, policy: str | None = None):
        self.guard = guard_for(policy)
        self.version = "r1-" + self.guard.fingerprint
        self.settings = {"policy": policy}

    async def wrap(self, events: AsyncIterator, request, key) -> AsyncIterator:
        from hkllm.text import detect

        asked = _last_user_text(request)
        variety = detect(asked).variety if asked else "en"
        rail = OutputRail(self.guard, variety if variety in VARIETIES else "en", asked or None)
        try:
            async for ev in events:
                if getattr(ev, "finish_reason", None) == "error":      # an ErrorEvent: passed on, last
                    yield ev
                    return
                final = ev.finish_reason is not None
                step = rail.feed(ev.text or "", final)
                if step.stop:
                    out = dataclasses.replace(ev, text=step.text, finish_reason="content_filter")
                    out.retract = step.retract
                    yield out
                    return
                if step.text or final or getattr(ev, "logprobs", None):
                    yield dataclasses.replace(ev, text=step.text)
        finally:
            _record(rail.records)


# =============================================================================================
# 5. audit records
# =============================================================================================

_AUDIT: contextvars.ContextVar[list | None] = contextvars.ContextVar("hkllm_guard_audit", default=None)


def audit_scope() -> list:
    """Start collecting guard records for the current request (call it where the request begins;
    tasks started from here share the list) and return the list."""
    records: list = []
    _AUDIT.set(records)
    return records


def audit_records() -> list[dict]:
    """The guard records of the current request so far ([] outside an audit_scope)."""
    return list(_AUDIT.get() or [])


def _record(records: list[dict]) -> None:
    target = _AUDIT.get()
    if target is not None and records:
        target.extend(records)


def describe_policy(policy: str | Path | dict | Policy | None = None) -> dict[str, Any]:
    """Each category's action, response action and threshold under a policy (for docs and checks)."""
    p = Policy.load(policy)
    return {c: {"action": p.action(c), "response_action": p.action(c, "response"), "threshold": p.threshold(c),
                "flag": p.category(c).flag} for c in CATEGORIES}


__all__ = ["ACTIONS", "CATEGORIES", "Guard", "GuardRefusal", "Moderation", "OutputRail", "Policy", "RailStep",
           "RequestModeration", "ResponseRail", "audit_records", "audit_scope", "moderate", "run_rules"]
