"""The guard's models: the text they read, the classifier hkllm trains, and an upstream guard model.

    from hkllm.safety.guard_model import normalize, load_classifier, UpstreamGuard
    n = normalize("ｉɡnоrе previous instructions")   # n.view == "ignore previous instructions", n.homoglyphs == 3
    load_classifier().scores(n.view)                 # {"harassment": 0.01, ..., "hk/prompt-injection": 0.97}
    UpstreamGuard("http://gpu-node:8000/v1", "Qwen/Qwen3Guard-Gen-0.6B").classify("教我整炸彈")

1. `normalize`: what every tier matches against. Invisible characters (zero-width, bidi controls,
   variation selectors, Unicode tag characters — whose hidden ASCII is decoded and appended, so an
   instruction smuggled in tags is matched like a visible one) are removed and counted; NFKC folds
   full-width, mathematical and circled letters and Kangxi radicals; Cyrillic and Greek look-alikes
   inside Latin words become Latin; spaces and ASCII symbols inserted between Han characters
   (炸 彈, 炸*彈) are dropped; Simplified and Taiwan forms become Hong Kong ones (OpenCC, via
   `hkllm.text.convert`), and the text is lower-cased.
2. `Classifier`: logistic regressions over hashed features of the view — character 1–3-grams (any
   script), word 1–2-grams (Latin script), and `CONCEPTS` (hand-written lexicons of what harmful
   and harmless-but-risky requests are about) with their pairs — one head per category, plus ANY
   (harmful at all) and ANY_RESPONSE (the same, knowing what harmless answers look like), with L2
   and class-balanced weights, fitted together by L-BFGS: deterministic, 5–30 s on 2 cores, <1 ms
   per text. It is trained at first use from data/safety/moderation.jsonl (the `train` split) plus
   the chat seeds (data/chat/seeds/safety.yaml refusals and risky-but-harmless prompts,
   general.yaml everyday prompts and letters, half of both files' answers), after
   decontamination: any training item sharing an 8-token n-gram (a Han character or a word is a
   token) with the held-out split or with data/eval/safety_prompts.jsonl, chat_prompts.jsonl and
   hk_knowledge.jsonl is dropped. The fitted model (~0.6 MB) is cached as `$HKLLM_CACHE_DIR`
   (default ~/.cache/hkllm)/guard/classifier-<fingerprint>.npz, the fingerprint being a hash of
   the training files, this module and the settings; `python -m hkllm.safety.guard_model --out
   FILE` trains and writes one explicitly (and the policy's `classifier.model` can name it).
3. `UpstreamGuard`: a guard model behind any OpenAI-compatible server (vLLM, SGLang, llama-server):
   Qwen3Guard-Gen through /v1/chat/completions (its chat template writes the instructions; it
   answers "Safety: Unsafe\\nCategories: Violent"), or Llama Guard 3/4 through /v1/completions with
   the model card's prompt (it answers "unsafe\\nS1,S9"). Verdicts map to this guard's categories.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import time
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from hkllm.errors import UserError

# The categories the classifier learns (the rules tier adds hk/personal-data and hk/hidden-text).
OPENAI_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
HK_CLASSIFIED = ("hk/doxxing", "hk/intimate-deepfake", "hk/prompt-injection")
CLASSIFIED = OPENAI_CATEGORIES + HK_CLASSIFIED
ANY = "any"     # the classifier's extra head: is the text harmful at all (trained on every category's items)
ANY_RESPONSE = "any:response"   # the same for answers: also trained on harmless answers, which ANY never sees
# A sub-category implies its parent (an item about self-harm/intent is about self-harm).
PARENT = {"harassment/threatening": "harassment", "hate/threatening": "hate", "illicit/violent": "illicit",
          "self-harm/intent": "self-harm", "self-harm/instructions": "self-harm", "sexual/minors": "sexual",
          "violence/graphic": "violence"}

# =============================================================================================
# 1. the text every tier reads
# =============================================================================================

# Invisible characters: removed from what is matched and from what is forwarded.
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0x1D173, 0x1D17A),
    (0xE0000, 0xE007F), (0xE0100, 0xE01EF),
)
_INVISIBLE = re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in _INVISIBLE_RANGES) + "]")
_BIDI = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
_TAGS = range(0xE0000, 0xE0080)
# Joiners and presentation selectors that belong to emoji sequences (👨‍👩‍👧, ❤️) are not hidden text.
_EMOJI_GLUE = frozenset([0x200D, 0xFE0E, 0xFE0F])

# Cyrillic and Greek letters that look like Latin ones (Unicode confusables, the common subset).
_CONFUSABLES = dict(pair for pair in (
    "аa Аa Вb еe Еe ёe Ёe һh Нh іi Іi ӏl јj Јj кk Кk Мm оo Оo рp Рp сc Сc Тt уy Уy хx Хx ѕs Ѕs ԁd ԛq ԝw Ԝw "  # Cyrillic
    "αa Αa Βb Εe Ηh ιi Ιi κk Κk Μm νv Νn οo Οo ρp Ρp Τt υu Υy χx Χx Ζz "                                  # Greek
    "ɡg ɑa ıi"                                                                                     # Latin look-alikes
).split() if len(pair) == 2 and pair[1].isascii() for pair in [tuple(pair)])
_CONFUSABLE_SET = frozenset(_CONFUSABLES)
_WORD = re.compile(r"[^\W\d_]+")
_LATIN = re.compile(r"[a-zA-Z]")
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# Spaces, zero-width leftovers and ASCII symbols inserted between Han characters to split a word.
_HAN_GAP = re.compile(rf"(?<=[{_HAN}])[\s*_.·•\-~|/\\+^'\"`]{{1,3}}(?=[{_HAN}])")
_SPACES = re.compile(r"\s+")


@dataclass
class Normalized:
    """A text as the tiers read it."""
    view: str                   # what rules and the classifier match: folded, de-obfuscated, HK forms, lower case
    clean: str                  # the original with invisible characters removed (forwarded when redacting)
    hidden: int = 0             # invisible characters found (emoji joiners not counted)
    hidden_kinds: Counter = field(default_factory=Counter)   # "tag", "bidi", "zero-width"
    homoglyphs: int = 0         # look-alike letters mapped to Latin
    smuggled: str = ""          # ASCII hidden in Unicode tag characters


def _is_emoji_glue(text: str, i: int) -> bool:
    def symbol(j: int) -> bool:
        return 0 <= j < len(text) and (unicodedata.category(text[j]) in ("So", "Sk") or 0x1F000 <= ord(text[j]) <= 0x1FAFF)
    return ord(text[i]) in _EMOJI_GLUE and (symbol(i - 1) or symbol(i + 1))


def _unconfuse(word: str) -> str:
    letters = [c for c in word if c in _CONFUSABLE_SET]
    if not letters:
        return word
    if _LATIN.search(word) or len(letters) == len(word):   # mixed-script word, or one made only of look-alikes
        return "".join(_CONFUSABLES.get(c, c) for c in word)
    return word


def normalize(text: str) -> Normalized:
    """The view every tier matches against, and what was hidden in `text` (see the module's 1.)."""
    from hkllm.text import convert

    hidden, kinds, smuggled = 0, Counter(), []
    if _INVISIBLE.search(text):
        for m in _INVISIBLE.finditer(text):
            cp = ord(m.group())
            if cp in _TAGS:
                kinds["tag"] += 1
                if 0xE0020 <= cp <= 0xE007E:
                    smuggled.append(chr(cp - 0xE0000))
            elif cp in _BIDI:
                kinds["bidi"] += 1
            elif cp == 0xFEFF and m.start() == 0 or _is_emoji_glue(text, m.start()):
                continue
            else:
                kinds["zero-width"] += 1
        hidden = sum(kinds.values())
        clean = _INVISIBLE.sub("", text)
    else:
        clean = text
    view = unicodedata.normalize("NFKC", clean)
    homoglyphs = 0
    if any(c in _CONFUSABLE_SET for c in view):
        def fix(m: re.Match) -> str:
            nonlocal homoglyphs
            out = _unconfuse(m.group())
            homoglyphs += sum(a != b for a, b in zip(out, m.group()))
            return out
        view = _WORD.sub(fix, view)
    if smuggled:
        view += "\n" + "".join(smuggled)
    view = _HAN_GAP.sub("", convert(view, "hk"))
    return Normalized(_SPACES.sub(" ", view.lower()).strip(), clean, hidden, kinds, homoglyphs, "".join(smuggled))


# =============================================================================================
# 2. the classifier
# =============================================================================================

L2 = 3e-5                      # the regularisation every released model uses (see benchmarks/guard.py)
FEATURE_VERSION = "1"          # change when featurize() or CONCEPTS change: cached models are then retrained
DIM = 1 << 18
CONCEPT_WEIGHT = 2.0           # the concept features' share of a text's (L2-normalised) feature vector
_LATIN_WORD = re.compile(r"[a-z0-9']+")
_CJK_TOKEN = re.compile(rf"[{_HAN}\u3040-\u30ff\uac00-\ud7af]|[^\W_]+")

# Concepts: hand-written lexicons (HK forms, lower case, matched on the view) of what harmful
# requests are about and of what harmless ones that look risky are about. Each present concept,
# and each pair of present concepts (sexual+minor, selfharm+method), is a feature, so unseen
# wording that names a known concept still counts. Every term occurs in the training set
# (tests/safety/test_guard.py checks it): the lexicons add no vocabulary the held-out split or
# the evaluation sets could leak into.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "weapon": (r"槍", r"子彈", r"炸彈", r"炸藥", r"爆炸品", r"消音器", r"弩", r"電槍", r"胡椒噴霧", r"長刀", r"\bguns?\b",
        r"firearm", r"rifle", r"pistol", r"bullets?", r"\bbombs?\b", r"explosive", r"detonator", r"silencer",
        r"crossbow"),
    "poison": (r"毒藥", r"落毒", r"毒死", r"\bpoison"),
    "attack": (r"襲擊", r"伏擊", r"斬人", r"斬佢", r"砍", r"打死", r"打斷", r"打到", r"毆打", r"圍毆", r"綁架", r"放火", r"縱火", r"殺光",
        r"殺死", r"殺人", r"\battack", r"ambush", r"\bstab", r"kidnap", r"beat (?:up|him|her|them)", r"\bhurt\b",
        r"傷害", r"傷人"),
    "threat": (r"恐嚇", r"揚言", r"嚇", r"小心啲", r"不得安寧", r"對付", r"伏佢", r"\bthreat", r"scare", r"intimidat",
        r"be careful", r"deal with him"),
    "insult": (r"侮辱", r"羞辱", r"辱罵", r"難聽", r"嘲笑", r"取笑", r"花名", r"綽號", r"下賤", r"又肥又蠢", r"又蠢", r"又臭", r"冇用",
        r"insult", r"humiliat", r"\bmock", r"nasty", r"hurtful", r"worthless", r"disgusting", r"stupid"),
    "harass": (r"滋擾", r"騷擾", r"轟炸", r"日日", r"每日", r"每天", r"崩潰", r"harass", r"every day"),
    "group": (r"南亞", r"菲律賓", r"菲傭", r"外傭", r"家傭", r"家庭傭工", r"黑人", r"清真寺", r"同性戀", r"新移民", r"殘疾", r"傷殘", r"輪椅",
        r"女人天生", r"女性天生", r"信徒", r"少數族裔", r"south asian", r"filipino", r"domestic helper", r"\bblack\b",
        r"muslim", r"mosque", r"\bgay\b", r"immigrant", r"disab", r"wheelchair", r"\bwomen\b", r"ethnic"),
    "selfharm": (r"自殺", r"自殘", r"傷害自己", r"割手", r"割腕", r"割傷自己", r"割自己", r"了結", r"結束自己", r"跳落", r"跳下", r"燒炭",
        r"安眠藥", r"止痛藥", r"遺書", r"唔想再活", r"不想再活", r"想死", r"會死", r"致命", r"suicide",
        r"kill (?:myself|herself|himself)", r"self-harm", r"cut myself", r"hurt myself", r"end (?:my life|it)",
        r"overdose", r"sleeping (?:pills|tablets)", r"painkillers", r"\bjump\b", r"\bdie\b", r"deadly",
        r"lethal", r"bleed out", r"starv", r"節食", r"絕食", r"催吐", r"purg"),
    "intent": (r"我(?:今晚|今日|今天|聽日|明天|已經|決定|打算|諗住|準備|真係|真的|好想|很想)",
        r"i(?:'m| am) (?:going|planning|standing|ending|taking)", r"i've (?:decided|written|saved|got)",
        r"\btonight\b"),
    "method": (r"幾多粒", r"幾多", r"邊度", r"邊種", r"哪個", r"哪種", r"哪些", r"多少", r"how many", r"how much", r"how high",
        r"which (?:pills|floor|medicine)", r"fastest", r"painless", r"where should i"),
    "sexual": (r"色情", r"露骨", r"性愛", r"性關係", r"性行為", r"裸照", r"鹹濕", r"淫", r"情色", r"自慰", r"挑逗", r"過夜", r"性幻想",
        r"porn", r"explicit", r"\bsex", r"nude", r"naked", r"erotic", r"dirty", r"get off", r"spend the night"),
    "minor": (r"未成年", r"細路", r"小朋友", r"兒童", r"小學", r"中學生", r"中二", r"學生", r"[十一二三四五六七八九]{1,3}歲", r"少女",
        r"\bkids?\b", r"child", r"minor", r"year-old", r"pupil", r"\bteen", r"thirteen", r"fourteen"),
    "image_abuse": (r"換臉", r"改成裸照", r"深偽", r"換落", r"偷影", r"偷拍", r"裙底", r"私密相", r"私密照", r"私密影像", r"假性愛片",
        r"虛假性愛", r"put .{0,20}face", r"undress", r"upskirt", r"intimate", r"fake nudes?", r"fake sex video",
        r"deepfake"),
    "personal_info": (r"起底", r"住址", r"地址", r"住邊", r"住喺邊", r"住在哪", r"邊座", r"哪座", r"電話", r"身份證號碼", r"車牌", r"反查",
        r"真名", r"真實身份", r"個人資料", r"放上網", r"公開", r"上門", r"邊間學校", r"放學", r"返工", r"\bdox", r"home address",
        r"address", r"where (?:she|he|they|my ex) (?:lives?|works)", r"real name", r"phone number",
        r"plate number", r"publish"),
    "fraud": (r"呃", r"騙", r"扮", r"冒充", r"假", r"偽造", r"洗黑錢", r"黑錢", r"詐騙", r"分拆", r"找換店", r"偷嘢", r"偷竊", r"非法",
        r"phish", r"\bscam", r"fake", r"forge", r"launder", r"pretend", r"pose as", r"posing as", r"shoplift",
        r"\bsteal"),
    "drugs": (r"冰毒", r"大麻", r"毒品", r"煮冰", r"\bmeth", r"cannabis", r"drugs?\b", r"heroin"),
    "hacking": (r"入侵", r"破解", r"偷取", r"keylogger", r"勒索軟件", r"hack", r"crack", r"\bspy", r"secretly cop",
        r"wi-?fi password", r"password"),
    "evasion": (r"唔俾", r"不被", r"避過", r"避開", r"唔會俾人", r"不會被", r"又唔", r"而不", r"追查唔到", r"唔留", r"不留",
        r"without (?:being |getting |leaving |anyone |the )", r"never notices",
        r"without .{0,20}(?:caught|traced|noticing|noticed)"),
    "injection": (r"忽略", r"無視", r"唔好理", r"忘記(?:你|之前|先前)", r"系統提示", r"開發者模式", r"\bdan\b", r"冇任何限制", r"沒有任何限制",
        r"冇任何審查", r"沒有任何審查", r"關閉內容過濾", r"新指令", r"新規則", r"system prompt", r"developer mode",
        r"no restrictions", r"no censorship", r"\bignore (?:all|the|your|previous)", r"new instructions",
        r"new rules", r"disable content", r"authoris", r"do anything now"),
    "gore": (r"血腥", r"血淋淋", r"血肉模糊", r"肢離破碎", r"內臟", r"殘肢", r"腐爛", r"核突", r"噁心", r"骨頭", r"剝皮", r"gore",
        r"gory", r"bloody", r"blood", r"severed", r"rotting", r"corpse", r"torn apart", r"organs", r"skinned",
        r"bones shatter"),
    "glorify": (r"讚揚", r"歌頌", r"頌揚", r"讚美", r"美化", r"慶祝", r"英雄", r"好玩", r"做得啱", r"做得對", r"glorif", r"prais",
        r"celebrat", r"hero", r"tribute", r"romanticis", r"\bfun\b"),
    "graphic": (r"詳細描寫", r"詳細形容", r"詳細描述", r"描寫", r"形容", r"描述", r"describe", r"in detail", r"every detail",
        r"vivid"),
    "write": (r"幫我寫", r"寫一", r"寫段", r"寫篇", r"寫首", r"寫封", r"寫個", r"寫張", r"撰寫", r"撰文", r"草擬", r"擬一", r"構思",
        r"創作", r"諗幾句", r"作幾", r"\bwrite\b", r"draft", r"compose", r"come up with",
        r"give me .{0,20}(?:lines|slogans|reasons)"),
    "fiction_game": (r"遊戲", r"劇情", r"電影", r"武俠", r"殭屍", r"偵探", r"推理", r"角色", r"boss", r"頭目", r"minecraft",
        r"elden ring", r"pubg", r"食雞", r"英雄聯盟", r"薩爾達", r"novel", r"\bfilm", r"\bgame", r"mystery", r"heist"),
    "tech": (r"\bapp\b", r"process", r"程式", r"container", r"docker", r"linux", r"kill -9", r"強制結束", r"command",
        r"git", r"iphone", r"mac\b", r"frozen", r"冇反應", r"沒有回應"),
    "pest": (r"曱甴", r"老鼠", r"螞蟻", r"白蟻", r"cockroach", r"\brats?\b", r"\bants?\b"),
    "protect": (r"防止", r"防範", r"保護", r"舉報", r"投訴", r"報警", r"求助", r"分辨", r"辨別", r"識別", r"提醒", r"處理", r"應對",
        r"點幫", r"點樣幫", r"幫佢", r"察覺", r"保存證據", r"report", r"protect", r"tell if", r"defend",
        r"help (?:her|him|my|a colleague|them)", r"what should i do", r"what can i do", r"who can help",
        r"should i go to the police"),
    "law": (r"法例", r"條例", r"罰則", r"判幾耐", r"刑罰", r"刑事", r"犯咩法", r"犯法", r"違法", r"觸犯", r"penalty", r"ordinance",
        r"is .{0,30}(?:a crime|illegal|legal)", r"pdpo"),
    "history": (r"歷史", r"戰爭", r"暴動", r"佔領", r"鴉片", r"二次大戰", r"二戰", r"\d{4} 年", r"\bwar\b", r"riots",
        r"occupation", r"opium", r"battle of"),
    "food": (r"煮", r"炸雞", r"雞翼", r"蟹", r"劏", r"宰殺", r"豬扒", r"老火湯", r"cook", r"lobster", r"chicken", r"crispy",
        r"fried", r"recipe", r"dim sum"),
    "sport": (r"羽毛球", r"殺波", r"泰拳", r"拳擊", r"劍擊", r"射箭", r"badminton", r"boxing", r"smash", r"\bjab\b"),
    "support": (r"朋友", r"同事", r"家人", r"屋企人", r"熱線", r"輔導", r"傾", r"支援", r"friend", r"colleague", r"counsell",
        r"teenager", r"parents", r"support"),
    "hyperbole": (r"熱到死", r"笑死", r"逼瘋", r"kill me if", r"dying to"),
}
_CONCEPT_RE = {name: re.compile("|".join(terms)) for name, terms in CONCEPTS.items()}


def concepts(view: str) -> list[str]:
    """The concepts a normalized view mentions, in CONCEPTS order."""
    return [name for name, rx in _CONCEPT_RE.items() if rx.search(view)]


def featurize(view: str) -> tuple[list[int], list[float]]:
    """Hashed features of a normalized view: character 1–3-grams, Latin word 1–2-grams (log-scaled
    counts) and concepts and concept pairs (together weighing CONCEPT_WEIGHT), L2-normalised.
    Returns (indices, values)."""
    counts: Counter = Counter()
    s = f" {view} "
    for n in (1, 2, 3):
        for i in range(len(s) - n + 1):
            g = s[i:i + n]
            if g.strip():
                counts[g] += 1
    words = _LATIN_WORD.findall(view)
    for i, w in enumerate(words):
        counts["w:" + w] += 1
        if i:
            counts["b:" + words[i - 1] + " " + w] += 1
    merged: dict[int, float] = {}
    for g, c in counts.items():
        h = zlib.crc32(g.encode("utf-8")) & (DIM - 1)
        merged[h] = merged.get(h, 0.0) + 1.0 + math.log(c)
    found = concepts(view)
    extra = ["lex:" + a for a in found] + ["lex:" + a + "+" + b for a, b in itertools.combinations(found, 2)]
    for g in extra:
        h = zlib.crc32(g.encode("utf-8")) & (DIM - 1)
        merged[h] = merged.get(h, 0.0) + CONCEPT_WEIGHT / math.sqrt(len(extra))
    norm = math.sqrt(sum(v * v for v in merged.values())) or 1.0
    return list(merged), [v / norm for v in merged.values()]


@dataclass
class TrainItem:
    text: str
    positive: frozenset            # categories it belongs to
    ignore: frozenset = frozenset()  # categories its label says nothing about (a seed's sub-categories)
    source: str = ""


class Classifier:
    """Per-category logistic regressions over `featurize` features; `scores(view)` → {category: p}."""

    def __init__(self, categories: tuple[str, ...], rows, weights, bias, fingerprint: str, report: dict | None = None):
        import numpy as np

        self.categories, self.fingerprint, self.report = tuple(categories), fingerprint, report or {}
        self.rows = np.asarray(rows, dtype=np.int64)                # the hashed features that have weights
        self.weights = np.asarray(weights, dtype=np.float32)        # (len(rows), K)
        self.bias = np.asarray(bias, dtype=np.float32)              # (K,)
        self._slot = {int(r): i for i, r in enumerate(self.rows)}

    # -- inference -----------------------------------------------------------------------------
    def logits(self, view: str):
        import numpy as np

        idx, val = featurize(view)
        pairs = [(self._slot[i], v) for i, v in zip(idx, val) if i in self._slot]
        if not pairs:
            return self.bias.astype(np.float64)
        slots, values = zip(*pairs)
        return self.bias + np.asarray(values, dtype=np.float32) @ self.weights[list(slots)]

    def scores(self, view: str) -> dict[str, float]:
        import numpy as np

        z = np.clip(self.logits(view), -30, 30)
        p = 1.0 / (1.0 + np.exp(-z))
        return {c: float(round(v, 4)) for c, v in zip(self.categories, p)}

    # -- training ------------------------------------------------------------------------------
    @classmethod
    def train(cls, items: list[TrainItem], categories: tuple[str, ...] = CLASSIFIED + (ANY, ANY_RESPONSE), l2: float = L2,
              min_df: int = 2, iterations: int = 120, fingerprint: str = "", report: dict | None = None) -> Classifier:
        """One L2-regularised, class-balanced logistic regression per category, one for ANY
        (harmful at all: the union of every category's items) and one for ANY_RESPONSE (the same,
        with harmless answers among the negatives), fitted together by L-BFGS."""
        import numpy as np
        import scipy.sparse

        indptr, indices, data = [0], [], []
        for it in items:
            idx, val = featurize(normalize(it.text).view)
            indices += idx
            data += val
            indptr.append(len(indices))
        X = scipy.sparse.csr_matrix((np.asarray(data), np.asarray(indices), np.asarray(indptr)),
                                    shape=(len(items), DIM), dtype=np.float64)
        # Features seen in fewer than `min_df` training texts keep weight 0 (they cannot generalise):
        # only the rest are fitted and stored.
        df = np.bincount(X.indices, minlength=DIM)
        used = np.flatnonzero(df >= min_df)
        X = X[:, used].tocsr()
        Xt = X.T.tocsr()
        K = len(categories)
        Y = np.array([[(bool(it.positive) if c in (ANY, ANY_RESPONSE) else c in it.positive) for c in categories]
                      for it in items], dtype=np.float64)
        keep = np.array([[c not in it.ignore for c in categories] for it in items], dtype=np.float64)
        n_pos, n_neg = (Y * keep).sum(0), ((1 - Y) * keep).sum(0)
        n = np.maximum(n_pos + n_neg, 1.0)
        # class-balanced: positives and negatives of each category weigh the same in its loss
        SW = keep * np.where(Y == 1, n / (2 * np.maximum(n_pos, 1.0)), n / (2 * np.maximum(n_neg, 1.0))) / n
        F = len(used)

        def loss(theta):                 # all categories at once: one sparse product per step
            W, c = theta[:F * K].reshape(F, K), theta[F * K:]
            Z = X @ W + c
            f = float((SW * (np.logaddexp(0.0, Z) - Y * Z)).sum() + 0.5 * l2 * (W * W).sum())
            G = SW * (1.0 / (1.0 + np.exp(-Z)) - Y)
            return f, np.concatenate([(Xt @ G + l2 * W).ravel(), G.sum(0)])

        theta = _lbfgs(loss, np.zeros(F * K + K), iterations=iterations)
        W, b = theta[:F * K].reshape(F, K).astype(np.float32), theta[F * K:].astype(np.float32)
        for k in np.flatnonzero((n_pos == 0) | (n_neg == 0)):      # nothing to learn: always / never
            W[:, k], b[k] = 0.0, (-10.0 if n_pos[k] == 0 else 10.0)
        return cls(categories, used, W, b, fingerprint, report)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        import numpy as np

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, rows=self.rows, weights=self.weights.astype(np.float16), bias=self.bias,
                                meta=np.array(json.dumps({"categories": self.categories, "fingerprint": self.fingerprint,
                                                          "feature_version": FEATURE_VERSION, "dim": DIM,
                                                          "report": self.report}, ensure_ascii=False)))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("feature_version") != FEATURE_VERSION or meta.get("dim") != DIM:
                    raise UserError(f"{path}: a guard classifier made with other features; retrain it "
                                    "(python -m hkllm.safety.guard_model --out FILE)")
                return cls(tuple(meta["categories"]), z["rows"], z["weights"].astype(np.float32), z["bias"],
                           meta["fingerprint"], meta.get("report"))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: not a guard classifier file ({e})") from e


def _lbfgs(fun, x, iterations: int = 300, memory: int = 10, tol: float = 1e-6):
    """Minimise a smooth convex `fun(x) -> (f, gradient)`: L-BFGS (two-loop recursion) with a
    backtracking Armijo line search. Plain numpy, so deterministic and fast for a million
    parameters (scipy's L-BFGS-B spends ~0.1 s per step on its bounds bookkeeping)."""
    import numpy as np

    f, g = fun(x)
    S, Y, R = [], [], []
    for _ in range(iterations):
        q = g.copy()
        alphas = []
        for s, y, r in zip(reversed(S), reversed(Y), reversed(R)):
            a = r * (s @ q)
            alphas.append(a)
            q -= a * y
        if S:
            q *= (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1])
        for (s, y, r), a in zip(zip(S, Y, R), reversed(alphas)):
            q += s * (a - r * (y @ q))
        d = -q
        slope = g @ d
        if slope >= 0:                       # not a descent direction: restart from the gradient
            S, Y, R, d, slope = [], [], [], -g, -(g @ g)
        step = 1.0 if S else min(1.0, 1.0 / max(np.sqrt(g @ g), 1e-12))
        while True:
            x_new = x + step * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, y = x_new - x, g_new - g
        if s @ y > 1e-12:
            S.append(s), Y.append(y), R.append(1.0 / (s @ y))
            if len(S) > memory:
                S.pop(0), Y.pop(0), R.pop(0)
        done = abs(f - f_new) <= tol * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if done:
            break
    return x


# -- the training set --------------------------------------------------------------------------

DATA = "data/safety/moderation.jsonl"
SEEDS = ("data/chat/seeds/safety.yaml", "data/chat/seeds/general.yaml")
# Evaluation sets: never trained on, nor on anything sharing wording with them.
PROTECTED = ("data/eval/safety_prompts.jsonl", "data/eval/chat_prompts.jsonl", "data/eval/hk_knowledge.jsonl")
DECONTAMINATION_N = 8

# The seeds' (and data/eval/safety_prompts.jsonl's) categories in this guard's terms: what an item
# is (positive) and which sub-categories its label does not decide (ignored in those heads).
SEED_CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "weapons": (("illicit", "illicit/violent"), ("violence",)),
    "explosives": (("illicit", "illicit/violent"), ("violence",)),
    "doxxing": (("hk/doxxing",), ("harassment",)),
    "phishing": (("illicit",), ()),
    "forgery": (("illicit",), ()),
    "evading_police": (("illicit",), ()),
    "self_harm": (("self-harm",), ("self-harm/intent", "self-harm/instructions")),
    "hate_speech": (("hate",), ("hate/threatening", "harassment")),
    "drugs": (("illicit",), ()),
    "malware": (("illicit",), ()),
    "fraud": (("illicit",), ()),
    "hacking": (("illicit",), ()),
}


def read_moderation(path: str | Path) -> list[dict]:
    """data/safety/moderation.jsonl: {id, split, lang, label, categories, text}, each line checked."""
    rows, path = [], Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read the moderation set ({e})") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not JSON ({e})") from e
        if not isinstance(r, dict):
            raise UserError(f"{path}:{n}: each line is an object")
        for key, ok in (("text", lambda v: isinstance(v, str) and v.strip()),
                        ("split", lambda v: v in ("train", "test")),
                        ("lang", lambda v: v in ("yue", "zh-hant", "en")),
                        ("label", lambda v: v in ("harmful", "risky", "ordinary")),
                        ("categories", lambda v: isinstance(v, list) and all(c in CLASSIFIED for c in v))):
            if not ok(r.get(key)):
                raise UserError(f"{path}:{n}: field '{key}' is missing or invalid ({r.get(key)!r})")
        if (r["label"] == "harmful") != bool(r["categories"]):
            raise UserError(f"{path}:{n}: a harmful item has categories, other items none")
        missing = {PARENT[c] for c in r["categories"] if c in PARENT} - set(r["categories"])
        if missing:
            raise UserError(f"{path}:{n}: category {sorted(missing)[0]!r} must be listed with its sub-category")
        rows.append(r)
    return rows


def _seed_items(path: Path) -> list[TrainItem]:
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    items = []
    for entry in doc.get("refuse", []) or []:
        positive, ignore = SEED_CATEGORIES.get(entry["category"], ((), ()))
        if not positive:
            continue
        for lang in ("yue", "zh-hant", "en"):
            items += [TrainItem(t, frozenset(positive), frozenset(ignore), f"{path.name}:{entry['category']}")
                      for t in entry.get(lang, [])]
    for entry in doc.get("answer", []) or []:
        for lang in ("yue", "zh-hant", "en"):
            items += [TrainItem(x["prompt"], frozenset(), frozenset(), f"{path.name}:{entry['category']}")
                      for x in entry.get(lang, [])]
    for section in ("qa", "letters"):
        for lang, entries in (doc.get(section) or {}).items():
            items += [TrainItem(x["prompt"], frozenset(), frozenset(), f"{path.name}:{section}") for x in entries]
    # Half of the seeds' answers (harmless answers to risky and everyday prompts) teach the
    # classifier what an answer looks like; the other half is what benchmarks/guard.py streams
    # through the output rail.
    answer_only = frozenset(CLASSIFIED + (ANY,))        # answers train ANY_RESPONSE only
    items += [TrainItem(a, frozenset(), answer_only, "answers:" + path.name)
              for a in seed_answers(doc) if answer_split(a) == "train"]
    return items


def seed_answers(doc: dict) -> list[str]:
    """The answers in a seed file: to its risky-but-harmless prompts, everyday questions and letters."""
    answers = []
    for entry in doc.get("answer", []) or []:
        for lang in ("yue", "zh-hant", "en"):
            answers += [x["answer"] for x in entry.get(lang, [])]
    for section in ("qa", "letters"):
        for entries in (doc.get(section) or {}).values():
            answers += [x["answer"] for x in entries]
    return answers


def answer_split(answer: str) -> str:
    """"train" or "test", by a stable hash of the answer."""
    from hkllm.files import stable_hash

    return "train" if stable_hash("guard-answers:" + answer) % 2 == 0 else "test"


def ngrams(text: str, n: int = DECONTAMINATION_N) -> set[tuple]:
    tokens = _CJK_TOKEN.findall(normalize(text).view)
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def protected_texts(root: Path, data: str | Path = DATA, protected: Iterable[str] = PROTECTED) -> list[str]:
    """The texts training must not share wording with: the held-out split and the evaluation sets."""
    texts = [r["text"] for r in read_moderation(root / data) if r["split"] == "test"]
    for p in protected:
        path = root / p
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    r = json.loads(line)
                    texts.append(r.get("prompt") or r.get("question") or "")
    return texts


def training_items(root: Path | None = None, data: str | Path = DATA, seeds: Iterable[str] = SEEDS,
                   protected: Iterable[str] = PROTECTED) -> tuple[list[TrainItem], dict]:
    """The classifier's training set, decontaminated, and a report of what went in and was dropped."""
    from hkllm import assets

    root = Path(root) if root else assets.ROOT
    items = [TrainItem(r["text"], frozenset(r["categories"]), frozenset(), f"moderation:{r['label']}")
             for r in read_moderation(root / data) if r["split"] == "train"]
    for s in seeds:
        if (root / s).exists():
            items += _seed_items(root / s)
    banned: set[tuple] = set()
    for t in protected_texts(root, data, protected):
        banned |= ngrams(t)
    kept, dropped = [], Counter()
    seen = set()
    for it in items:
        key = normalize(it.text).view
        if key in seen:
            dropped["duplicate"] += 1
        elif ngrams(it.text) & banned:
            dropped[it.source.split(":")[0]] += 1
        else:
            seen.add(key)
            kept.append(it)
    by_source = Counter(it.source.split(":")[0] for it in kept)
    report = {"items": len(kept), "by_source": dict(by_source), "dropped_by_decontamination": dict(dropped),
              "positives": {c: sum(c in it.positive for it in kept) for c in CLASSIFIED}}
    return kept, report


def fingerprint(root: Path, data: str | Path = DATA, seeds: Iterable[str] = SEEDS,
                protected: Iterable[str] = PROTECTED, l2: float = L2) -> str:
    h = hashlib.sha256(f"features={FEATURE_VERSION} dim={DIM} l2={l2} n={DECONTAMINATION_N} "
                       f"concepts={json.dumps(CONCEPTS, ensure_ascii=False)} w={CONCEPT_WEIGHT}".encode())
    h.update(Path(__file__).read_bytes())        # this module: features, lexicons, training
    for p in (data, *seeds, *protected):
        path = root / p
        h.update(p.encode() + b"\0" + (path.read_bytes() if path.exists() else b"-") + b"\0")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("HKLLM_CACHE_DIR") or Path.home() / ".cache" / "hkllm") / "guard"


@lru_cache(maxsize=4)
def load_classifier(model: str | None = None, root: str | None = None, l2: float = L2) -> Classifier:
    """The classifier: from `model` (a file) if given, else the cached one trained on this
    checkout's data, trained now (and cached) if there is none. Cached per process too."""
    from hkllm import assets

    if model:
        return Classifier.load(model)
    base = Path(root) if root else assets.ROOT
    fp = fingerprint(base, l2=l2)
    path = cache_dir() / f"classifier-{fp}.npz"
    if path.exists():
        try:
            return Classifier.load(path)
        except UserError:
            pass                       # a damaged cache file: retrain over it
    items, report = training_items(base)
    t0 = time.perf_counter()
    clf = Classifier.train(items, l2=l2, fingerprint=fp, report=report)
    clf.report["train_seconds"] = round(time.perf_counter() - t0, 2)
    try:
        clf.save(path)
    except OSError:
        pass                           # a read-only home: the model lives in this process only
    return clf


# =============================================================================================
# 3. an upstream guard model
# =============================================================================================

# Llama Guard 3 (MLCommons hazards) → this guard's categories.
LLAMA_GUARD_CATEGORIES = {
    "S1": ("Violent Crimes", ("illicit/violent", "illicit", "violence")),
    "S2": ("Non-Violent Crimes", ("illicit",)),
    "S3": ("Sex-Related Crimes", ("sexual", "illicit")),
    "S4": ("Child Sexual Exploitation", ("sexual/minors", "sexual")),
    "S5": ("Defamation", ("harassment",)),
    "S6": ("Specialized Advice", ()),
    "S7": ("Privacy", ("hk/doxxing",)),
    "S8": ("Intellectual Property", ()),
    "S9": ("Indiscriminate Weapons", ("illicit/violent", "illicit")),
    "S10": ("Hate", ("hate",)),
    "S11": ("Suicide & Self-Harm", ("self-harm",)),
    "S12": ("Sexual Content", ("sexual",)),
    "S13": ("Elections", ()),
    "S14": ("Code Interpreter Abuse", ("hk/prompt-injection",)),
}
# Qwen3Guard-Gen's categories → this guard's. Unmapped ones (Politically Sensitive Topics,
# Copyright Violation) are kept in the verdict's `labels` for the audit log, not scored.
QWEN3GUARD_CATEGORIES = {
    "Violent": ("violence", "illicit/violent", "illicit"),
    "Non-violent Illegal Acts": ("illicit",),
    "Sexual Content or Sexual Acts": ("sexual",),
    "PII": ("hk/doxxing",),
    "Suicide & Self-Harm": ("self-harm",),
    "Unethical Acts": ("harassment",),
    "Politically Sensitive Topics": (),
    "Copyright Violation": (),
    "Jailbreak": ("hk/prompt-injection",),
}
_QWEN_SAFETY = re.compile(r"Safety:\s*(Safe|Unsafe|Controversial)", re.I)
_QWEN_CATEGORY = re.compile("|".join(re.escape(c) for c in sorted(QWEN3GUARD_CATEGORIES, key=len, reverse=True)))
_QWEN_REFUSAL = re.compile(r"Refusal:\s*(Yes|No)", re.I)

LLAMA_GUARD_PROMPT = """<|start_header_id|>user<|end_header_id|>

Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy with the below categories.

<BEGIN UNSAFE CONTENT CATEGORIES>
{categories}
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>

{conversation}

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:
 - First line must read 'safe' or 'unsafe'.
 - If unsafe, a second line must include a comma-separated list of violated categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>

"""


@dataclass
class UpstreamVerdict:
    scores: dict[str, float]       # this guard's categories the upstream model flagged → score
    label: str                     # "safe" | "unsafe" | "controversial" | "error"
    labels: list[str] = field(default_factory=list)   # the model's own category names/codes
    refusal: bool | None = None    # Qwen3Guard on a response: did the answer refuse?
    raw: str = ""
    latency_ms: float = 0.0
    error: str | None = None


class UpstreamGuard:
    """A guard model behind an OpenAI-compatible URL. `format`: "qwen3guard" (chat endpoint; the
    model's chat template writes the instructions) or "llama-guard" (completions endpoint with
    Llama Guard 3's prompt; the server's tokenizer adds <|begin_of_text|>)."""

    FORMATS = ("qwen3guard", "llama-guard")

    def __init__(self, url: str, model: str, format: str = "qwen3guard", api_key: str | None = None,
                 timeout_s: float = 10.0, controversial: float = 0.5, unsafe: float = 1.0):
        if format not in self.FORMATS:
            raise UserError(f"unknown upstream guard format {format!r}; choose one of {', '.join(self.FORMATS)}")
        self.url, self.model, self.format = url.rstrip("/"), model, format
        self.api_key, self.timeout_s = api_key, timeout_s
        self.controversial, self.unsafe = controversial, unsafe

    # -- the request ---------------------------------------------------------------------------
    def request(self, text: str, direction: str = "request", prompt: str | None = None) -> tuple[str, dict]:
        """(endpoint path, JSON body) asking the model about `text`: a user request, or an answer
        (direction "response", with the `prompt` it answered when known)."""
        if self.format == "qwen3guard":
            if direction == "response":
                messages = [{"role": "user", "content": prompt or ""}, {"role": "assistant", "content": text}]
            else:
                messages = [{"role": "user", "content": text}]
            return "/chat/completions", {"model": self.model, "messages": messages, "temperature": 0,
                                         "max_tokens": 64}
        role = "Agent" if direction == "response" else "User"
        turns = [f"User: {prompt or ''}", f"Agent: {text}"] if direction == "response" else [f"User: {text}"]
        categories = "\n".join(f"{code}: {name}." for code, (name, _) in LLAMA_GUARD_CATEGORIES.items())
        body = LLAMA_GUARD_PROMPT.format(role=role, categories=categories, conversation="\n\n".join(turns))
        return "/completions", {"model": self.model, "prompt": body, "temperature": 0, "max_tokens": 24}

    # -- the answer ----------------------------------------------------------------------------
    def parse(self, content: str) -> UpstreamVerdict:
        """The model's answer → scores in this guard's categories."""
        scores: dict[str, float] = {}
        if self.format == "qwen3guard":
            m = _QWEN_SAFETY.search(content)
            label = m.group(1).lower() if m else "error"
            labels = [c for c in _QWEN_CATEGORY.findall(content) if c != "None"]
            value = {"unsafe": self.unsafe, "controversial": self.controversial}.get(label, 0.0)
            if value:
                for name in labels:
                    for cat in QWEN3GUARD_CATEGORIES.get(name, ()):
                        scores[cat] = max(scores.get(cat, 0.0), value)
            r = _QWEN_REFUSAL.search(content)
            return UpstreamVerdict(scores, label, labels, (r.group(1).lower() == "yes") if r else None, content,
                                   error=None if m else "no 'Safety:' line in the guard model's answer")
        lines = [ln.strip() for ln in content.strip().splitlines() if ln.strip()]
        first = lines[0].lower() if lines else ""
        if first not in ("safe", "unsafe"):
            return UpstreamVerdict({}, "error", [], None, content, error="the guard model answered neither safe nor unsafe")
        codes = re.findall(r"S\d+", lines[1]) if first == "unsafe" and len(lines) > 1 else []
        for code in codes:
            for cat in LLAMA_GUARD_CATEGORIES.get(code, ("", ()))[1]:
                scores[cat] = self.unsafe
        return UpstreamVerdict(scores, first, codes, None, content)

    def classify(self, text: str, direction: str = "request", prompt: str | None = None) -> UpstreamVerdict:
        """Ask the upstream model; a network or server failure is a verdict with `error` set
        (label "error", no scores): the policy's `upstream.on_error` decides what that means."""
        import urllib.error
        import urllib.request

        path, body = self.request(text, direction, prompt)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                                     headers=headers, method="POST")
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                answer = json.loads(resp.read().decode("utf-8"))
            choice = answer["choices"][0]
            content = choice["message"]["content"] if self.format == "qwen3guard" else choice["text"]
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
            return UpstreamVerdict({}, "error", raw="", latency_ms=round((time.perf_counter() - t0) * 1000, 2),
                                   error=f"upstream guard {self.url}: {type(e).__name__}: {e}")
        verdict = self.parse(content or "")
        verdict.latency_ms = round((time.perf_counter() - t0) * 1000, 2)
        return verdict


def main(argv: list[str] | None = None) -> int:
    """python -m hkllm.safety.guard_model [--out FILE]: train the classifier and write it."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m hkllm.safety.guard_model",
                                 description="Train the guard's classifier on data/safety/moderation.jsonl and the "
                                             "chat seeds (decontaminated) and write it.")
    ap.add_argument("--out", help="file to write (default: the cache, " + str(cache_dir()) + ")")
    args = ap.parse_args(argv)
    from hkllm import assets

    fp = fingerprint(assets.ROOT)
    items, report = training_items(assets.ROOT)
    t0 = time.perf_counter()
    clf = Classifier.train(items, fingerprint=fp, report=report)
    report["train_seconds"] = round(time.perf_counter() - t0, 2)
    path = clf.save(args.out or cache_dir() / f"classifier-{fp}.npz")
    print(json.dumps({"model": str(path), "fingerprint": fp, **report}, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
