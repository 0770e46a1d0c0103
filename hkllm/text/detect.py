"""Which variety of text is this: written Cantonese, Standard Written Chinese, Simplified, English?

    from hkllm.text import detect
    detect("個 meeting 改咗去三點").variety        # -> "yue"
    detect("會議改於下午三時舉行。").variety         # -> "zh-hant"

Varieties: `yue` (written Cantonese, including Cantonese-English code-mixing), `zh-hant`
(Standard Written Chinese in Traditional characters), `zh-hans` (Simplified Chinese), `en`
(English) and `other`.

How: scripts are counted first (Han, Latin, kana, Hangul, other letters). Chinese text is then
scored with two hand-written lexicons: words only written Cantonese uses (嘅 咗 喺 冇 點解 而家 …)
and words only Standard Written Chinese uses (的 是 這 沒有 什麼 …). Compounds that put a
marker character to neutral use (關係 has 係, 的士 has 的) are masked first, which is what keeps
Standard Written Chinese from being called Cantonese. A bare classifier opening a clause (個 meeting
改咗) counts only next to other Cantonese evidence, since 個人、部分、條例、間中、對於 open clauses
in Standard Written Chinese too. Simplified vs Traditional is decided by characters that exist in
only one script (derived from OpenCC's tables), less the Hong Kong standard forms (温 台 秘) and the
characters written Cantonese uses in Traditional text (晒 吓 揾 响). English vs other Latin-script
languages is decided by English function words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

VARIETIES = ("yue", "zh-hant", "zh-hans", "en", "other")

# --- Cantonese markers ----------------------------------------------------------------------
# Characters that Standard Written Chinese does not use (outside the compounds masked below).
_YUE_CHARS = "嘅咗喺冇佢哋嘢啲嚟嗰咁噉乜咩攞畀俾睇唔諗瞓攰嬲啱嚿揾搵㗎嘞喎啩噃咋啫晒嗮哂冚揸撳㩒掟踎嘥喐癐嗌嚡餸孭黐唞躝冧𨋢靚嚫瀡攝揼抌凼氹𡃁嘢咧嗱咪嘛啦喇囉吖呀啊嘩吓哩囖嚹唧𡃉𠸏𡁵嘑脷"
_YUE_CHAR_WEIGHT = {c: 1.0 for c in _YUE_CHARS}
# Sentence particles that Mandarin writing also uses now and then: half a vote each.
_YUE_CHAR_WEIGHT.update({c: 0.5 for c in "咪嘛啦喇囉吖咧呀啊嘩吓哩"})
_YUE_WORDS = {
    # question words and demonstratives
    "點解": 1, "點樣": 1, "點算": 1, "點知": 1, "點先": 1, "點會": 1, "邊個": 1, "邊度": 1, "邊間": 1,
    "邊位": 1, "邊條": 1, "邊隻": 1, "邊處": 1, "邊一": 1, "邊啲": 1, "呢個": 1, "呢度": 1, "呢排": 1, "呢位": 1,
    "呢次": 1, "呢間": 1, "呢條": 1, "呢隻": 1, "呢種": 1, "呢樣": 1, "呢幾": 1, "呢一": 1, "幾多": 0.5, "幾耐": 1,
    # time words
    "而家": 1, "依家": 1, "宜家": 1, "琴日": 1, "尋日": 1, "噚日": 1, "聽日": 1, "後日": 0.5, "頭先": 1, "啱啱": 1,
    "遲啲": 1, "陣間": 1, "成日": 1, "不嬲": 1, "今朝": 0.5, "今晚黑": 1, "朝早": 1, "晏晝": 1, "夜晚黑": 1,
    # copula, negation and aspect with 係/仲/未
    "係咪": 1, "係唔係": 1, "唔係": 1, "即係": 1, "都係": 1, "就係": 1, "但係": 1, "梗係": 1, "真係": 1, "係咁": 1,
    "實係": 1, "定係": 1, "淨係": 1, "只係": 1, "又係": 1, "仲有": 1, "仲係": 1, "仲未": 1, "仲要": 1, "仲好": 1,
    "係": 1,
    # verbs and everyday words
    "返工": 1, "返學": 1, "返屋企": 1, "放工": 1, "收工": 1, "鍾意": 1, "中意": 0.5, "唔該": 1, "多謝晒": 1, "屋企": 1,
    "傾偈": 1, "傾計": 1, "行街": 1, "搞掂": 1, "揾食": 1, "食飯": 0.5, "飲嘢": 1, "咁樣": 1, "有冇": 1, "同埋": 1,
    "埋單": 1, "幫襯": 1, "隔籬": 1, "求其": 1, "老細": 1, "差佬": 1, "執嘢": 1, "冇問題": 1, "得閒": 1, "好彩": 0.5,
    "識得": 0.5, "緊要": 0.5, "嚟緊": 1, "食緊": 1, "做緊": 1, "講緊": 1, "睇緊": 1, "諗緊": 1, "講嘢": 1, "話俾": 1,
    "都幾": 1, "幾蚊": 1, "十蚊": 1, "百蚊": 1, "千蚊": 1, "萬蚊": 1, "先啦": 1, "先至": 1, "事頭": 1, "標青": 1,
    "寫字樓": 0.5, "寫字枱": 1, "禮拜": 0.5, "吖嗎": 1, "啊嘛": 1, "哩個": 1, "哩度": 1, "哩啲": 1, "哩條": 1,
    "咪住": 1, "等埋": 1, "帶埋": 1, "食埋": 1, "做埋": 1, "埋我": 1, "先得": 1, "部機": 1, "部車": 1, "我話": 1,
    "你話": 1, "話你知": 1, "又話": 1, "下晝": 1, "點搞": 1, "看更": 1, "落車": 1, "上車": 0.3,
    "話畀": 1, "點呀": 1, "乜嘢": 1, "做乜": 1, "做咩": 1, "搭車": 0.5, "搭地鐵": 1, "搭巴士": 1, "啲嘢": 1,
    "試下": 1, "試吓": 1, "夠晒": 1, "出便": 1, "入便": 1, "一便": 1,  # 一便…一便… "while"; 企埋一便 "one side"
    # Mandarin says 只剩半條命 too (and it is Half-Life's Chinese title); 做到半條命 is Cantonese.
    "半條命": 0.5, "到半條命": 1,
}
# Compounds where a Cantonese marker character is used the Standard Written Chinese way.
_YUE_NEUTRAL = [
    "關係", "聯係", "維係", "係數", "干係", "牽係", "仲裁", "仲介", "伯仲", "仲夏", "仲秋", "仲春", "杜仲",
    "呢喃", "呢絨", "咪高峰", "麥咪", "喇叭", "喇嘛", "啦啦隊", "嘛呢", "咔嚓", "吖嗪",
    "俾使", "睥睨", "攝影", "攝氏", "攝取", "攝入", "拍攝", "攝錄", "攝像", "氹仔", "靚麗",
    "嘩然", "喧嘩", "嘩眾", "哩啦", "嗎啡", "禮拜堂", "禮拜儀式",
    # 晒 is Simplified for 曬 "to sun" (晒太阳, 防晒) and mainland "to show off" (晒照). Not 晒出 or 晒網:
    # Cantonese has 搬晒出去, 擸晒網頂.
    "防晒", "暴晒", "曝晒", "晾晒", "日晒", "晒太陽", "晒太阳", "晒黑", "晒傷", "晒伤", "晒斑", "晒背", "晒乾", "晒干",
    "晒紅", "晒红", "晒晒", "晒圖", "晒图", "晒照", "晒單", "晒单", "晒娃", "晒衣", "晒被", "晒鹽", "晒盐", "晒穀",
    "晒谷", "晒后", "晒了", "晒过", "晒着", "晒得",
    # 試 ending a word before 下午, 下一 ... (考試下午舉行, 嘗試下一步, 測試下載)
    *("試" + w for w in ("下列", "下一", "下載", "下架", "下午", "下週", "下周", "下旬", "下次", "下屆", "下半", "下月",
                         "下星期", "下年", "下屬")),
    # 便 "then" after a verb ending in 出/入/一 (推出便大受歡迎, 加入便可), or 便 in a word (一便士, 進出便利)
    *(v + "便" for v in ("推出", "提出", "作出", "做出", "發出", "演出", "付出", "支出", "外出", "退出", "指出", "選出",
                         "查出", "找出", "交出", "送出", "寄出", "說出", "播出", "售出", "加入", "收入", "輸入",
                         "進入", "投入", "列入", "納入", "存入", "購入", "引入", "深入", "第一", "其一", "統一", "唯一",
                         "之一")),
    *(c + "便" + w for c in "出入一" for w in ("利", "士", "宜", "當", "條", "服", "衣", "捷", "飯", "箋", "於", "可", "會",
                                                "能", "要", "已", "是", "告", "成", "將", "把", "被", "再", "即")),
]

# --- Standard Written Chinese (Mandarin-grammar) markers ----------------------------------------
_SWC_WORDS = {
    "的": 1, "是": 1, "了": 0.5, "這": 1, "那": 1, "哪": 1, "什麼": 1, "甚麼": 1, "怎麼": 1, "怎樣": 1, "為什麼": 1,
    "他們": 1, "她們": 1, "它們": 1, "我們": 1, "你們": 1, "沒有": 1, "沒": 0.5, "很": 1, "嗎": 1, "吧": 1, "誰": 1,
    "吃": 1, "喝": 1, "看": 0.5, "說": 0.5, "説": 0.5, "給": 1, "東西": 1, "現在": 1, "今天": 1, "明天": 1, "昨天": 1,
    "不": 0.5, "在": 0.5, "就是": 1, "還": 0.5, "還是": 1, "一些": 1, "這樣": 1, "那樣": 1, "把": 0.5, "被": 0.5,
    "於": 0.5, "及": 0.5, "並": 0.5, "其": 0.5, "之": 0.5, "應": 0.5, "須": 0.5, "將": 0.3, "已": 0.3, "與": 0.5,
    "们": 1, "这": 1, "说": 0.5, "还": 0.5, "没有": 1, "么": 1, "给": 1, "吗": 1,
}
# Compounds that written Cantonese uses as freely as Standard Written Chinese does.
_SWC_NEUTRAL = [
    "的士", "目的", "的確", "的而且確", "是否", "但是", "於是", "可是", "凡是", "總是", "只是", "正是", "不過", "不如",
    "不同", "不斷", "不少", "不錯", "不但", "不論", "不得", "不理", "不停", "不知", "不好意思", "不管", "了解", "為了",
    "除了", "受不了", "大不了", "不得了", "存在", "實在", "自在", "所在", "在於", "現在", "看法", "看來", "看見",
    "小說", "說明", "說話", "解說", "報告", "之後", "之前", "之間", "之中", "之外", "總之", "其實", "其他", "其中",
    "尤其", "應該", "必須", "將來", "已經", "與其", "被迫", "被告", "把握", "還款", "歸還", "交還", "沒收",
    "淹沒", "埋沒", "那些", "剎那", "支那",
]

_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_HAN_RE = re.compile(f"[{_HAN}]")
_KANA_RE = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL_RE = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_LATIN_WORD_RE = re.compile(r"[A-Za-z\u00c0-\u024f]+(?:['’][A-Za-z]+)?")
_OTHER_LETTER_RE = re.compile(r"[\u0370-\u03ff\u0400-\u04ff\u0590-\u06ff\u0900-\u0dff\u0e00-\u0eff\u1000-\u109f]")

# The most frequent English words: their share of the words tells English from other
# Latin-script languages (French, Indonesian, Tagalog ...).
_EN_FUNCTION_WORDS = frozenset(
    """the a an and or but if of to in on at by for with from as is are was were be been being am do does did
    have has had will would can could should may might must shall not no yes this that these those it its i
    you he she we they me him her us them my your our their his what which who whom when where why how all
    any some more most other such only than then there here so very just also about into over after before
    up down out off again please thank thanks hello hi ok okay get got go going make take use new one two
    time day people year way need want know see like now today tomorrow yesterday will don't can't it's i'm""".split()
)


# Function words of other Latin-script languages met in Hong Kong (French, Spanish, Portuguese,
# Italian, German, Dutch, Indonesian/Malay, Tagalog, Vietnamese without diacritics).
_FOREIGN_FUNCTION_WORDS = frozenset(
    """le la les des du et est une un dans pour pas que qui sur avec je tu il nous vous ils el los las y es
    una por para con del al lo se su como pero muy o os um não uma com mais il di che è per non della sono
    der die das und ist nicht ein eine mit auf für ich sie wir den dem zu von het een en van niet yang dan
    di ini itu dengan untuk tidak ke dari saya kami ada akan ang ng mga sa ay na ako ka ikaw siya po ba
    hindi ano nasaan ng toi la cua va khong mot nhung""".split()
) - _EN_FUNCTION_WORDS
_NON_ENGLISH_LETTER_RE = re.compile(r"[\u00c0-\u00ff\u0100-\u024f\u1e00-\u1eff]")


def _trie_pattern(words) -> str:
    """A regex matching any of `words`, longest first, factored by prefix (係(?:咪|唔係)?|...)
    so that the engine dispatches on one character instead of trying hundreds of branches."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = True

    def render(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(ch) + render(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        single = [b for b in branches if len(b) == 1]
        multi = [b for b in branches if len(b) > 1]
        alts = multi + ([f"[{''.join(single)}]"] if len(single) > 1 else single)
        body = alts[0] if len(alts) == 1 and not ends else "(?:" + "|".join(alts) + ")"
        return body + ("?" if ends else "")

    return render(trie)


def _weighted(markers: dict[str, float], neutral: list[str]) -> tuple[re.Pattern, dict[str, float]]:
    """One regex over markers and neutral compounds (weight 0), longest match first, so that a
    single findall scores a text and a compound masks the marker characters inside it."""
    weights = {**markers, **{w: 0.0 for w in neutral}}
    # The leading class of first characters lets the engine skip non-candidates in C.
    first = re.escape("".join(sorted({w[0] for w in weights})))
    return re.compile(f"(?=[{first}])(?:{_trie_pattern(weights)})"), weights


_YUE_RE, _YUE_WEIGHTS = _weighted({**_YUE_CHAR_WEIGHT, **_YUE_WORDS}, _YUE_NEUTRAL)
_SWC_RE, _SWC_WEIGHTS = _weighted(_SWC_WORDS, _SWC_NEUTRAL + [w for w in _YUE_WORDS if w not in _SWC_WORDS])


@lru_cache(maxsize=1)
def _english_vocabulary() -> frozenset[str]:
    """English words seen at least twice in the English text that ships with Python (pydoc topics)."""
    from collections import Counter
    from pydoc_data.topics import topics

    counts = Counter(w.lower() for text in topics.values() for w in re.findall(r"[A-Za-z]{2,}", text))
    return frozenset(w for w, n in counts.items() if n >= 2) | _EN_FUNCTION_WORDS


# Simplified forms that written Cantonese uses in Traditional text: 晒 (completive, 食晒), 吓 (一吓, 試吓),
# 揾 (揾食), 响 (= 喺, 响度). Checked against OpenCC: 嘅 啲 咗 冇 嚟 嘢 噉 乜 佢 哋 畀 攞 睇 搵 are not Simplified.
_CANTONESE_NOT_SIMPLIFIED = "晒吓揾响"


@lru_cache(maxsize=1)
def _script_specific_chars() -> tuple[re.Pattern, re.Pattern]:
    """Characters that exist only in Simplified, and only in Traditional, per OpenCC's tables. A
    character OpenCC's Hong Kong standard keeps (温 台 秘 痴) is Traditional as Hong Kong writes it,
    not Simplified, and neither are the Cantonese characters above."""
    import opencc

    chars = [chr(c) for c in range(0x4E00, 0xA000)]
    joined = "\n".join(chars)
    to_trad = opencc.OpenCC("s2t").convert(joined).split("\n")
    to_simp = opencc.OpenCC("t2s").convert(joined).split("\n")
    to_hk = opencc.OpenCC("s2hk").convert(joined).split("\n")
    simplified_only = "".join(
        c for c, t, s, hk in zip(chars, to_trad, to_simp, to_hk)
        if t != c and s == c and hk != c and c not in _CANTONESE_NOT_SIMPLIFIED
    )
    traditional_only = "".join(c for c, t, s in zip(chars, to_trad, to_simp) if s != c and t == c)
    return re.compile(f"[{simplified_only}]"), re.compile(f"[{traditional_only}]")


@dataclass(frozen=True)
class Detection:
    variety: str
    scores: dict[str, float]


# A bare classifier opening a clause ("個 meeting 改咗", "部機壞咗") is Cantonese grammar: Standard
# Written Chinese needs a demonstrative or numeral before it. But Standard Written Chinese opens
# clauses with words that start with the same characters (個人資料, 部分市民, 條例草案, 間中有驟雨,
# 對於, 對不起, 張先生): those are not counted, and a classifier opening counts only where the text
# has other Cantonese evidence.
_CLASSIFIER_COMPOUNDS = [
    "個人", "個別", "個案", "個體", "個性", "個位", "個中", "部分", "部份", "部門", "部長", "部署", "部隊", "部落",
    "部位", "條例", "條件", "條款", "條文", "條約", "條目", "間中", "間接", "間斷", "間或", "間隔", "間歇", "間諜",
    "對於", "對不起", "對方", "對象", "對話", "對比", "對照", "對手", "對策", "對外", "對內", "對應", "對立", "對此",
    "對待", "張貼", "張開", "張先生", "張小姐", "架構", "架設", "隻身", "隻字",
]
_CLASSIFIER_OPENING_RE = re.compile(
    r"(?:^|[。！？，；\n])\s*(?!" + "|".join(_CLASSIFIER_COMPOUNDS) + r")[個隻條部間架對件張啲]\s*(?=[A-Za-z]|[\u4e00-\u9fff])"
)
# Everyday English words dropped into Chinese ("幫我 mark 低", "去 trip") mark Hong Kong code-mixing;
# acronyms and capitalised names (MTR, iAM Smart) appear in Standard Written Chinese too.
_LOWERCASE_WORD_RE = re.compile(r"(?<![A-Za-z])[a-z]{3,}(?![A-Za-z])")
_URL_OR_EMAIL_RE = re.compile(r"(?:https?://|www\.)[!-~]+|[\w.+-]+@[\w.-]+|\b[\w-]+(?:\.[\w-]+)+\b", re.ASCII)


def cantonese_score(text: str) -> float:
    """Weighted count of written-Cantonese markers (each word or character counted once per use)."""
    score = sum(_YUE_WEIGHTS[m] for m in _YUE_RE.findall(text))
    if _LOWERCASE_WORD_RE.search(text):
        embedded = _LOWERCASE_WORD_RE.findall(_URL_OR_EMAIL_RE.sub(" ", text))
        score += min(1.0, 0.5 * len(embedded))
    if score > 0:  # a bare classifier alone is not evidence (see _CLASSIFIER_OPENING_RE)
        score += 1.0 * len(_CLASSIFIER_OPENING_RE.findall(text))
    return score


def swc_score(text: str) -> float:
    """Weighted count of Standard Written Chinese (Mandarin-grammar) markers."""
    return sum(_SWC_WEIGHTS[m] for m in _SWC_RE.findall(text))


# A document's variety shows in its opening; reading further only costs time.
MAX_CHARS = 1500


def detect(text: str) -> Detection:
    """Classify one line or document (its first MAX_CHARS characters); see the module docstring."""
    text = text[:MAX_CHARS]
    han = len(_HAN_RE.findall(text))
    kana = len(_KANA_RE.findall(text))
    hangul = len(_HANGUL_RE.findall(text))
    latin_words = _LATIN_WORD_RE.findall(text)
    other = len(_OTHER_LETTER_RE.findall(text))
    units = han + kana + hangul + len(latin_words) + other
    scores: dict[str, float] = {
        "han": round(han / units, 3) if units else 0.0,
        "latin": round(len(latin_words) / units, 3) if units else 0.0,
    }
    if units == 0:
        return Detection("other", scores)
    if kana + hangul + other > 0.2 * units or kana > 0.1 * (han + kana):
        return Detection("other", scores)

    if han >= 2 and han >= 0.4 * units:
        yue, swc = cantonese_score(text), swc_score(text)
        simplified_re, traditional_re = _script_specific_chars()
        simp, trad = len(simplified_re.findall(text)), len(traditional_re.findall(text))
        scores.update(yue=round(yue, 2), swc=round(swc, 2), simplified=round(simp / (simp + trad), 3) if simp + trad else 0.0)
        # Long documents need a density of markers, so that one quoted Cantonese phrase in a
        # Standard Written Chinese article does not flip it.
        dense_enough = han < 60 or yue * 100 / han >= 1.5
        if yue >= 1 and yue >= swc and dense_enough:
            return Detection("yue", scores)
        return Detection("zh-hans" if simp > trad else "zh-hant", scores)

    words = [w.lower() for w in latin_words if len(w) > 1]
    english = sum(w in _EN_FUNCTION_WORDS for w in words)
    foreign = sum(w in _FOREIGN_FUNCTION_WORDS for w in words)
    known = sum(w in _english_vocabulary() for w in words)
    n = max(len(words), 1)
    scores.update(english_function_words=round(english / n, 3), foreign_function_words=round(foreign / n, 3),
                  english_vocabulary=round(known / n, 3))
    accented = bool(_NON_ENGLISH_LETTER_RE.search(text))
    # English if its function words outnumber other languages' and either some are present or,
    # in a short line without any, most words are known English words.
    if words and not accented and english >= foreign and (english or known >= 0.5 * n):
        return Detection("en", scores)
    if han and han >= len(words) * 0.25 and cantonese_score(text) >= 1:
        return Detection("yue", scores)  # English-heavy code-mixing still counts as Cantonese
    return Detection("other", scores)
