"""Keyed watermarks for generated answers, and their detection on any machine.

    from hkllm.safety.watermark import WatermarkConfig, load_or_create_key, watermark_processor, detect
    key = load_or_create_key("hkllm-serve")                      # made on first start, mode 0600
    proc = watermark_processor(WatermarkConfig(), key, temperature=0.0)   # one per request (row)
    params = SamplingParams(max_tokens=256, logits_processors=(proc,))    # hkllm/serve/contract.py
    detect(answer_text, tokenizer, key, WatermarkConfig())       # {"verdict", "p_value", ...}

Two schemes, both seeded by the previous h *generated* tokens (the prompt never enters a
context; the first positions of an answer are padded with -1, so a detector that sees only the
answer recomputes the same contexts):

- **green** — a keyed green-list bias (Kirchenbauer et al., "KGW", lefthash over h tokens): each
  token is green under a context with probability γ, and green tokens get +δ on the raw logits
  (before temperature, so the effective bias at temperature T is δ/T). It marks greedy decoding,
  which Gumbel cannot, and stays deterministic, so consistency mode (greedy, cached) keeps working.
  Detection counts green tokens: z = (G − γn)/√(nγ(1−γ)), p = the exact binomial tail.
- **gumbel** — keyed Gumbel-max sampling (Aaronson): the token is argmax(logits/T + g) with
  g = −log(−log u), u from the key and the context, which is an exact sample of softmax(logits/T)
  (distortion-free per token). It cannot mark greedy decoding. A context already seen in this
  answer is sampled normally (the engine's own generator): reusing one keyed noise vector
  invites repetition loops and adds no evidence. Detection: S = Σ −log(1−u) over scored tokens;
  p = P(Gamma(n, 1) ≥ S).

`scheme="auto"` (the default) uses green below `green_below_temperature` (greedy and low
temperature) and Gumbel above. Detection tries both and corrects for the tries.

**Pseudo-random function.** Philox4x32-10 (Salmon et al., SC'11) in integer arithmetic (numba
kernels over uint64), with the context/token layout of vLLM's `philox4x32-10-v1` PRF: nothing comes from a
device's random generator, so text marked on a GPU is detected on a CPU and the other way round,
and a fresh process with the same key gives the same green lists. Gumbel uses stream 0 and is
bit-for-bit vLLM's `--watermark-config '{"algorithm": "gumbel", "key": K}'` (context width 4,
de-duplication `single_turn`): tests check vLLM's published PRF vectors and its golden generations
and detection scores (tests/watermarking/ in vllm-project/vllm; read, not copied). So `hkllm
watermark detect` also detects an upstream vLLM's Gumbel output, given vLLM's key (the key file
holds one decimal integer, the form vLLM's config takes). The green list uses stream 1 and is
hkllm's own: vLLM's `sbw` green list (minhash "selfhash" PRF, γ=0.5) is a different function
and is not detected here.

**Why not transformers' watermark classes** (checked in 5.24, shared/FIELD_NOTES.md §10): its
green-list processor seeds with key × last token in `lefthash` mode, so `context_width` is
ignored; its green lists come from `torch.Generator(device)`, so GPU-marked text is not
detectable on CPU; and its SynthID processor keeps state sized to the first batch, which breaks
under continuous batching (rows join and leave between steps). The processors here keep state
per row only, and derive everything from the key and the token ids.

**The key** is 64 random bits in `<state dir>/watermark.key` (one decimal integer, mode 0600,
written atomically and never overwritten). `WatermarkKey` never shows its value: repr and JSON
carry only `key_id`, a one-way hash, which also enters `config_id`.

**Wiring into the engine** (embedded engine only; an upstream engine refuses logits processors,
and a gateway cannot mark text afterwards — it can only detect, with the upstream's key):

    key = load_or_create_key(settings.state_dir)                       # once, at start-up
    proc = watermark_processor(config, key, params.temperature, top_p=params.top_p)
    params = dataclasses.replace(params, logits_processors=(*params.logits_processors, proc))

A fresh processor per request, and last in the chain (a Gumbel processor returns logits that
allow one token). `proc.scheme` and `config.config_id(key)` are what an audit record names.

**Behaviour to know.** Gumbel sampling is a deterministic function of the logits, the key and the
last h answer tokens, so the same prompt gets the same answer at a given temperature whatever
`seed` says (the key acts as the seed; only repeated contexts use the row's generator). The
logprobs the engine reports for a Gumbel-marked token are 0 (its alternatives −inf). The argmax
is computed in float32 on the CPU as vLLM's reference does; vLLM's GPU kernel can differ only at
exact float ties. vLLM's `deduplicate_contexts="all"`, `dual_key_gumbel` and `sbw` are not
implemented here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numba
import numpy as np

from hkllm.errors import UserError

if TYPE_CHECKING:
    import torch

# The shape of hkllm.serve.contract.LogitsProcessor (safety sits below serve and cannot import it):
# (token ids so far, the prompt's and those generated; raw next-token logits before temperature) -> logits.
LogitsProcessor = Callable[[list[int], "torch.Tensor"], "torch.Tensor"]

KEY_FILE = "watermark.key"
DEFAULT_STATE_DIR = "hkllm-serve"   # = hkllm serve's Settings.state_dir default (a test checks they agree)
PRF_VERSION = "philox4x32-10-v1"
SCHEMES = ("green", "gumbel")
VARIANTS = ("raw", "s2hk", "t2hk")  # the text as given, and converted back to Hong Kong forms (OpenCC)
GREEDY_BELOW = 1e-5                 # as the engine: a smaller temperature is greedy
GREEN_STREAM, GUMBEL_STREAM = 1, 0
WINDOW_SIZES = (32, 64, 128, 256, 512)
GREEN_REACH_T = 20.0                # green list: logits beyond δ + 20·T below the best are left alone


# ----------------------------------------------------------------------------------------- the key

class WatermarkKey:
    """The secret. Its value is used only by the PRF here; repr, str and JSON show `key_id` only."""

    __slots__ = ("_value",)

    def __init__(self, value: int):
        if not isinstance(value, int) or not 0 <= value < 2**64:
            raise ValueError("a watermark key is an integer in [0, 2**64)")
        self._value = value

    @property
    def key_id(self) -> str:
        """A one-way fingerprint (names the key in config ids and audit logs; reveals nothing)."""
        return hashlib.sha256(b"hkllm-watermark-key-id\0" + self._value.to_bytes(8, "little")).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"WatermarkKey(key_id={self.key_id})"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, WatermarkKey) and secrets.compare_digest(
            self._value.to_bytes(8, "little"), other._value.to_bytes(8, "little"))

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __reduce__(self):
        raise TypeError("a WatermarkKey is not pickled (it would travel in clear)")


def key_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / KEY_FILE


def load_key(state_dir: str | os.PathLike) -> WatermarkKey:
    """The key in `state_dir` (never creates one: detection must not invent a key)."""
    path = key_path(state_dir)
    if not path.exists():
        raise UserError(f"{path}: no watermark key here; `hkllm serve --state-dir {state_dir}` makes it on "
                        "first start / 此資料夾沒有浮水印金鑰")
    return _read_key(path)


def load_or_create_key(state_dir: str | os.PathLike) -> WatermarkKey:
    """The key in `state_dir`, made on first call: 64 bits from `secrets`, written to a private
    temporary file (mode 0600, fsynced) and linked into place, so a reader never sees half a key
    and two servers starting at once end up with the same one (the first link wins)."""
    path = key_path(state_dir)
    if path.exists():
        return _read_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{secrets.randbits(64)}\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)                     # fails if another process got there first: keep theirs
        except FileExistsError:
            pass
        except OSError:                            # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return _read_key(path)


def _read_key(path: Path) -> WatermarkKey:
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)                      # a copied key file: make it private again
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if not re.fullmatch(r"[0-9]{1,20}", text) or int(text) >= 2**64:
        raise UserError(f"{path}: not a watermark key (one decimal integer below 2**64 expected); text marked "
                        "with the old key cannot be detected without it / 浮水印金鑰檔案無效")
    return WatermarkKey(int(text))


# ------------------------------------------------------------------------------------------ the PRF
#
# Philox4x32-10 as numba kernels: the engine marks every row at every decoding step, and the keyed
# words of a step's candidates are ~2 x 10 rounds of a dozen integer operations each. In numpy every
# operation is a call of ~1-2 µs on a small array: the vectorised version cost 0.4 ms of a 2.3 ms
# eight-row step (19% of the engine's time; dev/LOG.md, issue 14). Compiled, a step's words take a
# few µs. 32-bit words are held in uint64 so that a 32×32-bit product fits; every constant is a
# uint64, since numba, like numpy, turns uint64 mixed with int64 into a float.

_MASK = np.uint64(0xFFFFFFFF)
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)       # Philox4x32 multipliers (Random123)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)       # Weyl key increments
_CONTEXT_DOMAIN, _TOKEN_DOMAIN = np.uint64(0x574D4358), np.uint64(0x574D544B)  # "WMCX", "WMTK"
_2, _3, _32 = np.uint64(2), np.uint64(3), np.uint64(32)


@numba.njit(cache=True, inline="always")
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    for r in range(10):
        p0, p1 = c0 * _M0, c2 * _M1
        c0, c1, c2, c3 = (p1 >> _32) ^ c1 ^ k0, p1 & _MASK, (p0 >> _32) ^ c3 ^ k1, p0 & _MASK
        if r < 9:
            k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    return c0, c1, c2, c3


@numba.njit(cache=True, inline="always")
def _absorb(k0, k1, context):
    """Philox state after absorbing one context (int64, -1 = padding), 4 tokens per block, as
    vLLM's v1 layout; a block's missing tokens are 0xFFFFFFFF, 0xFFFFFFFE, ..."""
    h = context.shape[0]
    s0, s1, s2, s3 = _CONTEXT_DOMAIN, np.uint64(h), np.uint64(0), np.uint64(0)
    for offset in range(0, h, 4):
        b = np.empty(4, np.uint64)
        for i in range(4):
            b[i] = (np.uint64(context[offset + i]) & _MASK) if offset + i < h else _MASK - np.uint64(i)
        s0, s1, s2, s3 = _philox4x32_10(s0 ^ b[0], s1 ^ b[1], s2 ^ b[2], s3 ^ b[3], k0 ^ np.uint64(offset), k1)
    return s0, s1, s2, s3


@numba.njit(cache=True, inline="always")
def _word(state, k0, k1, stream, token):
    """The 32-bit word of `token` under an absorbed context, in keyed stream `stream`."""
    s0, s1, s2, s3 = state
    t = np.uint64(token) & _MASK
    out = _philox4x32_10(t >> _2, s0, s1, s2, k0 ^ s3 ^ (stream >> _32), k1 ^ _TOKEN_DOMAIN ^ (stream & _MASK))
    lane = t & _3
    return out[0] if lane == 0 else out[1] if lane == 1 else out[2] if lane == 2 else out[3]


@numba.njit(cache=True)
def _pair_words(k0, k1, stream, contexts, tokens):
    out = np.empty(tokens.shape[0], np.uint64)
    for i in range(tokens.shape[0]):
        out[i] = _word(_absorb(k0, k1, contexts[i]), k0, k1, stream, tokens[i])
    return out


@numba.njit(cache=True)
def _context_words(k0, k1, stream, context, tokens):
    state = _absorb(k0, k1, context)
    out = np.empty(tokens.shape[0], np.uint64)
    for i in range(tokens.shape[0]):
        out[i] = _word(state, k0, k1, stream, tokens[i])
    return out


@numba.njit(cache=True)
def _green_bias(values, rows, contexts, reach, k0, k1, stream, threshold, delta):
    """+delta on the green tokens of `values[rows[i]]` within `reach[i]` of the row's best logit
    (in place, float32). A row with a quarter of its vocabulary within reach gets the bias on every
    green token instead: the whole-vocabulary mask, which is what the shortcut must agree with.
    Plain loops: numba's array expressions (max, compare, nonzero) allocate: ~7 µs a row, not ~3."""
    vocab = values.shape[1]
    near = np.empty(vocab, np.int64)
    for i in range(rows.shape[0]):
        row = values[rows[i]]
        best = row[0]
        for t in range(1, vocab):
            best = max(best, row[t])
        floor = best - reach[i]
        n = 0
        for t in range(vocab):
            if row[t] >= floor:
                near[n] = t
                n += 1
        state = _absorb(k0, k1, contexts[i])
        if 4 * n >= vocab:
            for t in range(vocab):
                if _word(state, k0, k1, stream, t) < threshold:
                    row[t] += delta
        else:
            for j in range(n):
                if _word(state, k0, k1, stream, near[j]) < threshold:
                    row[near[j]] += delta


def _key_words(key: int | WatermarkKey) -> tuple[np.uint64, np.uint64]:
    key = key._value if isinstance(key, WatermarkKey) else int(key)
    return np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32)


def philox_uint32(key: int | WatermarkKey, contexts, tokens, stream: int = 0) -> np.ndarray:
    """32-bit keyed words, one per (context row, token): contexts (n, h) with tokens (n,) pairs them;
    one context row (1, h) with tokens (V,) gives that context's word for every token."""
    contexts = np.atleast_2d(np.asarray(contexts, dtype=np.int64))
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    k0, k1 = _key_words(key)
    if contexts.shape[0] == 1 and tokens.shape[0] != 1:
        return _context_words(k0, k1, np.uint64(stream), contexts[0], tokens)
    return _pair_words(k0, k1, np.uint64(stream), contexts, tokens)


def compile_kernels() -> None:
    """Compile the PRF kernels now (or load them from numba's cache beside this file): the first
    call costs 0.3 s cached, ~3 s not, which a server pays at start rather than in a request."""
    one = np.full((1, 2), -1, dtype=np.int64)
    philox_uint32(0, one, [0]), philox_uint32(0, one, [0, 1])
    _green_bias(np.zeros((1, 4), np.float32), np.zeros(1, np.int64), one, np.zeros(1, np.float32),
                np.uint64(0), np.uint64(0), np.uint64(GREEN_STREAM), np.uint64(0), np.float32(0))


def _token_words(key: int, context: tuple[int, ...], tokens, stream: int) -> np.ndarray:
    """The words of some tokens under one context."""
    return philox_uint32(key, [context], np.asarray(tokens, dtype=np.int64).reshape(-1), stream)


def words_to_uniform(words: np.ndarray) -> np.ndarray:
    """(0, 1) float32 from the top 24 bits: ((w >> 8) + 1) / (2**24 + 1), as vLLM."""
    return (((words >> np.uint64(8)).astype(np.float64) + 1.0) / (2**24 + 1)).astype(np.float32)


def _green_mask(key: int, threshold: int, context: tuple[int, ...], vocab_size: int) -> np.ndarray:
    """Which tokens of the vocabulary are green under `context` (the definition `_green_bias` keeps to)."""
    return _token_words(key, context, np.arange(vocab_size), GREEN_STREAM) < np.uint64(threshold)


# --------------------------------------------------------------------------------------- the config

@dataclass(frozen=True)
class WatermarkConfig:
    """What generation does; detection needs the same values (they are all public but the key)."""
    scheme: str = "auto"                 # auto | green | gumbel | off
    gamma: float = 0.25                  # green: share of the vocabulary that is green under a context
    delta: float = 2.0                   # green: bias added to green logits (before temperature)
    green_context_width: int = 2         # green: h; small h survives edits and script conversion best
    # green: the first answer tokens are left alone (and not scored). Their context is padding, the
    # same for every answer, so one fixed green list would steer every opening; and an answer's
    # first words decide the rest: SmolLM2 greedy "The capital of France is Paris." became
    # "L'Étoile - la France…" with even δ = 1 at position 0. Gumbel is distortion-free: not needed.
    green_skip_first: int = 2
    gumbel_context_width: int = 4        # gumbel: h; 4 = vLLM's default, so its output is detected too
    green_below_temperature: float = 0.5  # auto: green below this temperature (greedy included), Gumbel above

    def __post_init__(self):
        if self.scheme not in ("auto", *SCHEMES, "off"):
            raise ValueError(f"scheme: expected auto, green, gumbel or off, got {self.scheme!r}")
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma: expected a number in (0, 1), got {self.gamma}")
        if self.delta < 0:
            raise ValueError(f"delta: expected a number >= 0, got {self.delta}")
        if not isinstance(self.green_skip_first, int) or not 0 <= self.green_skip_first <= 64:
            raise ValueError(f"green_skip_first: expected an integer from 0 to 64, got {self.green_skip_first!r}")
        for name in ("green_context_width", "gumbel_context_width"):
            if not isinstance(getattr(self, name), int) or not 1 <= getattr(self, name) <= 16:
                raise ValueError(f"{name}: expected an integer from 1 to 16, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict) -> WatermarkConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown watermark setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @property
    def threshold(self) -> int:
        """A token is green when its stream-1 word is below this (probability γ)."""
        return int(round(self.gamma * 2**32))

    def context_width(self, scheme: str) -> int:
        return self.green_context_width if scheme == "green" else self.gumbel_context_width

    def scheme_for(self, temperature: float) -> str:
        """The scheme a request at this temperature gets: green, gumbel, or none (not marked)."""
        if self.scheme == "off":
            return "none"
        if self.scheme == "auto":
            return "green" if temperature < max(self.green_below_temperature, GREEDY_BELOW) else "gumbel"
        if self.scheme == "gumbel" and temperature < GREEDY_BELOW:
            return "none"                # Gumbel-max cannot mark greedy decoding
        return self.scheme

    def config_id(self, key: WatermarkKey) -> str:
        """Names this config and key (never the key): for detection output and audit logs."""
        public = {**asdict(self), "prf": PRF_VERSION, "key_id": key.key_id}
        return "wm-" + hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------- generation

def _context(generated: Sequence[int], h: int, position: int | None = None) -> tuple[int, ...]:
    """The h generated tokens before `position` (default: the next one), -1 before the answer's start."""
    end = len(generated) if position is None else position
    ctx = list(generated[max(0, end - h):end])
    return (-1,) * (h - len(ctx)) + tuple(ctx)


class _Row:
    """Per-row state: where the prompt ends (the length of the first call, which is prefill)."""

    scheme = "none"

    def __init__(self):
        self._prompt_len: int | None = None
        self._last = -1

    def _made(self, ids: list[int]) -> int:
        """How many of `ids` this row generated (the rest is the prompt)."""
        if self._prompt_len is None or len(ids) != self._last + 1:   # first call, or reused for a new request
            self._prompt_len = len(ids)
            self._reset()
        self._last = len(ids)
        return len(ids) - self._prompt_len

    def _generated(self, ids: list[int]) -> list[int]:
        return list(ids[len(ids) - self._made(ids):])

    def _reset(self):
        pass

    def __call__(self, ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        return logits


class _GreenRow(_Row):
    scheme = "green"

    def __init__(self, config: WatermarkConfig, key: WatermarkKey, temperature: float = 0.0):
        super().__init__()
        self._key, self._h, self._delta, self._threshold = key._value, config.green_context_width, \
            config.delta, config.threshold
        self._skip = config.green_skip_first
        # Only tokens within reach of the best logit can be chosen: greedy picks among those within
        # δ of it; sampling at temperature T gives a token GREEN_REACH_T·T further down a weight
        # below e^-GREEN_REACH_T (2e-9) of the best's even after its +δ. Their keyed words are the
        # only ones computed (the whole vocabulary's cost 35% of a batch-8 decoding step per row).
        self._reach = config.delta + GREEN_REACH_T * max(float(temperature), 0.0)

    @property
    def batch_kind(self) -> tuple:
        """Rows whose green processors share this are marked in one `apply_batch` call."""
        return ("green", self._key, self._h, self._delta, self._threshold, self._skip)

    def _row_context(self, ids) -> tuple[int, ...] | None:
        """The context of the next token, or None while inside the first `green_skip_first` tokens.
        Reads only the tail of `ids` (the engine's list grows by a token per step)."""
        made = self._made(ids)
        if made < self._skip:
            return None
        return _context(ids[len(ids) - min(made, self._h):], self._h)

    @classmethod
    def apply_batch(cls, procs: list[_GreenRow], ids_per_row: list, logits: torch.Tensor, rows: list[int]) -> None:
        """What `__call__` does to each row, for many rows at once: one compiled pass over the
        rows (`_green_bias`) on a numpy view of the engine's float32 logits (shared memory)."""
        live = [(row, p, ctx) for row, p, ids in zip(rows, procs, ids_per_row)
                if (ctx := p._row_context(ids)) is not None]
        if not live:
            return
        first = live[0][1]
        k0, k1 = _key_words(first._key)
        _green_bias(logits.numpy(), np.array([row for row, _, _ in live], dtype=np.int64),
                    np.array([ctx for _, _, ctx in live], dtype=np.int64),
                    np.array([p._reach for _, p, _ in live], dtype=np.float32), k0, k1,
                    np.uint64(GREEN_STREAM), np.uint64(first._threshold), np.float32(first._delta))

    def __call__(self, ids, logits):
        x = logits.detach().float().cpu().reshape(1, -1)    # a view when the logits are already float32 on the CPU
        self.apply_batch([self], [ids], x, [0])
        if x.data_ptr() != logits.data_ptr():
            logits.copy_(x.reshape(logits.shape))
        return logits


class _GumbelRow(_Row):
    scheme = "gumbel"

    def __init__(self, config: WatermarkConfig, key: WatermarkKey, temperature: float, top_p: float):
        super().__init__()
        self._key, self._h, self._temperature, self._top_p = key._value, config.gumbel_context_width, \
            float(temperature), float(top_p)
        self._reset()

    def _reset(self):
        self._seen: set[tuple[int, ...]] = set()
        self._indexed = 0                 # positions whose context is in _seen

    def __call__(self, ids, logits):
        import torch

        gen = self._generated(ids)
        for pos in range(self._indexed, len(gen)):
            self._seen.add(_context(gen, self._h, pos))
        self._indexed = len(gen)
        ctx = _context(gen, self._h)
        if ctx in self._seen:             # a repeated context: the engine samples as usual, unmarked
            return logits
        x = logits.detach().float().cpu() / self._temperature
        if self._top_p < 1.0:             # nucleus first, as the engine's `sample` and vLLM do
            probs = torch.softmax(x, dim=-1)
            sorted_p, order = probs.sort(descending=True)
            x[order[sorted_p.cumsum(-1) - sorted_p > self._top_p]] = -math.inf
        token = gumbel_argmax(x, self._key, ctx)
        out = torch.full_like(logits, -math.inf)
        out[token] = 0.0                  # the engine's softmax + sampling then yields this token
        return out


# u lies in [1/(2**24+1), 1 − 2**−24], so the noise −log(−log u) lies in [−2.82, 16.64]: a token more
# than 19.46 below the best scaled logit can never win, and its keyed word need not be computed.
_GUMBEL_REACH = 20.0


def gumbel_argmax(scaled_logits: torch.Tensor, key: int | WatermarkKey, context: tuple[int, ...]) -> int:
    """argmax(logits/T + Gumbel noise) with the noise keyed by the context (float32, as vLLM).
    Only the tokens within reach of the best logit are scored (the same argmax, less work)."""
    import torch

    key = key._value if isinstance(key, WatermarkKey) else key
    x = scaled_logits.float()
    candidates = torch.nonzero(x >= x.max() - _GUMBEL_REACH).flatten()
    if 4 * len(candidates) < x.shape[-1]:
        words = _token_words(key, context, candidates.numpy(), GUMBEL_STREAM)
        x, pick = x[candidates], candidates
    else:
        words, pick = _token_words(key, context, np.arange(x.shape[-1]), GUMBEL_STREAM), None
    u = torch.from_numpy(words_to_uniform(words)).clamp_min(torch.finfo(torch.float32).tiny)
    best = int(torch.argmax(x + -torch.log(-torch.log(u))))
    return best if pick is None else int(pick[best])


def watermark_processor(config: WatermarkConfig, key: WatermarkKey, temperature: float, *,
                        top_p: float = 1.0) -> LogitsProcessor:
    """A fresh per-row logits processor for one request at this temperature (and top-p).

    Put it in that request's `SamplingParams.logits_processors`; make one per request (it keeps the
    row's prompt length and, for Gumbel, the contexts it has seen). `.scheme` says what it does:
    "green" (biases green logits; the engine's sampling or argmax follows), "gumbel" (returns
    logits that allow only the Gumbel-max token, or leaves them alone on a repeated context), or
    "none" (greedy under scheme=gumbel, or scheme=off: logits returned untouched). The returned
    logprobs of a Gumbel-marked token are then 0 (its alternatives -inf).
    """
    scheme = config.scheme_for(temperature)
    if scheme == "green":
        return _GreenRow(config, key, temperature)
    if scheme == "gumbel":
        return _GumbelRow(config, key, temperature, top_p)
    return _Row()


# ------------------------------------------------------------------------------------------ detection

@dataclass
class Score:
    """One scheme's evidence in one token sequence."""
    scheme: str
    scored: int                           # tokens scored (first occurrence of each context)
    statistic: float                      # green: green count; gumbel: Σ −log(1−u)
    z: float
    log10_p: float
    per_token: np.ndarray                 # green: 0/1; gumbel: −log(1−u), for the scored tokens in order
    positions: np.ndarray                 # index in the sequence of each scored token


def score_ids(ids: Sequence[int], key: WatermarkKey, config: WatermarkConfig, scheme: str,
              scorable: Sequence[bool] | None = None) -> Score:
    """Score a sequence of answer token ids under one scheme (no tokenizer, no conversion)."""
    h = config.context_width(scheme)
    skip = config.green_skip_first if scheme == "green" else 0
    ids = [int(t) for t in ids]
    seen: set[tuple[int, ...]] = set()
    contexts, targets, positions = [], [], []
    padded = [-1] * h + ids
    for i, tok in enumerate(ids):
        if i < skip or (scorable is not None and not scorable[i]):
            continue
        ctx = tuple(padded[i:i + h])
        if ctx in seen:                    # a repeated context gives no new evidence: scored once
            continue
        seen.add(ctx)
        contexts.append(ctx)
        targets.append(tok)
        positions.append(i)
    n = len(targets)
    if not n:
        return Score(scheme, 0, 0.0, 0.0, 0.0, np.zeros(0), np.zeros(0, dtype=np.int64))
    stream = GREEN_STREAM if scheme == "green" else GUMBEL_STREAM
    words = philox_uint32(key, np.asarray(contexts, dtype=np.int64).reshape(n, h), targets, stream)
    if scheme == "green":
        per = (words < np.uint64(config.threshold)).astype(np.float64)
        g = float(per.sum())
        z = (g - config.gamma * n) / math.sqrt(n * config.gamma * (1 - config.gamma))
        log10_p = float(_binom_log10_sf(np.asarray([g]), n, config.gamma)[0])
        return Score(scheme, n, g, z, log10_p, per, np.asarray(positions))
    u = words_to_uniform(words).astype(np.float64)
    per = -np.log1p(-u)
    s = float(per.sum())
    return Score(scheme, n, s, (s - n) / math.sqrt(n), gamma_log10_sf(s, n), per, np.asarray(positions))


_LN10 = math.log(10)


def _log_factorials(n: int) -> np.ndarray:
    """log k! for k = 0..n."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def gamma_log10_sf(score: float, n: int) -> float:
    """log10 P(Gamma(n, 1) ≥ score) for integer n: e^−s Σ_{k<n} s^k/k!, summed in log space."""
    return float(_gamma_log10_sf_many(np.asarray([score], dtype=np.float64), n)[0])


def _gamma_log10_sf_many(scores: np.ndarray, n: int) -> np.ndarray:
    if n <= 0:
        return np.zeros(len(scores))
    s = np.maximum(np.asarray(scores, dtype=np.float64), 1e-300)
    terms = np.arange(n) * np.log(s)[:, None] - _log_factorials(n - 1)[None, :]
    top = terms.max(axis=1)
    log_sf = -s + top + np.log(np.exp(terms - top[:, None]).sum(axis=1))
    return np.where(np.asarray(scores) <= 0, 0.0, np.minimum(0.0, log_sf / _LN10))


@lru_cache(maxsize=64)
def _binom_log10_tail_table(n: int, gamma: float) -> np.ndarray:
    """log10 P(Binomial(n, γ) ≥ g) for g = 0..n, exact (log-space sums of the pmf)."""
    lf = _log_factorials(n)
    k = np.arange(n + 1)
    log_pmf = lf[n] - lf[k] - lf[n - k] + k * math.log(gamma) + (n - k) * math.log1p(-gamma)
    tail = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
    return np.minimum(0.0, tail / _LN10)


def _binom_log10_sf(greens: np.ndarray, n: int, gamma: float) -> np.ndarray:
    """log10 P(X ≥ greens), X ~ Binomial(n, γ)."""
    return _binom_log10_tail_table(int(n), float(gamma))[np.asarray(greens).round().astype(np.int64)]


def _window_scan(score: Score, config: WatermarkConfig, sizes: Iterable[int] = WINDOW_SIZES):
    """The most significant window of scored tokens, its log10 p corrected for the windows tried
    (Bonferroni), and how many were tried. Windows: each size below the scored count, stride size/4."""
    n = score.scored
    csum = np.concatenate([[0.0], np.cumsum(score.per_token)])
    best, tried = None, 0
    for w in sizes:
        if w >= n:
            break
        starts = np.unique(np.concatenate([np.arange(0, n - w + 1, max(1, w // 4)), [n - w]]))
        sums = csum[starts + w] - csum[starts]
        if score.scheme == "green":
            logp = _binom_log10_sf(sums, w, config.gamma)
        else:
            logp = _gamma_log10_sf_many(sums, w)
        tried += len(starts)
        i = int(np.argmin(logp))
        if best is None or logp[i] < best[0]:
            best = (float(logp[i]), int(starts[i]), w)
    if best is None:
        return None
    logp, start, w = best
    return {"log10_p": min(0.0, logp + math.log10(tried)), "start": start, "size": w, "windows": tried}


@lru_cache(maxsize=4)
def _opencc(config: str):
    import opencc

    return opencc.OpenCC(config)


def variant_text(text: str, variant: str) -> str:
    """The text as given (raw), or converted back to Hong Kong forms with OpenCC s2hk / t2hk."""
    return text if variant == "raw" else _opencc(variant).convert(text)


def _tokenize(text: str, tokenizer) -> tuple[list[int], list[bool], list[tuple[int, int]] | None]:
    """Token ids of the text, which of them may be scored (not special tokens, not U+FFFD
    fragments of a character cut in two), and character offsets where the tokenizer gives them."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        ids, offsets = list(tokenizer.encode(text, add_special_tokens=False)), None
    scorable = [t not in special for t in ids]
    if offsets is not None and "\ufffd" in text:
        scorable = [ok and "\ufffd" not in text[a:b] for ok, (a, b) in zip(scorable, offsets)]
    return ids, scorable, offsets


def _p(log10_p: float) -> float:
    return float(10.0 ** log10_p) if log10_p > -320 else 0.0


@dataclass
class Prepared:
    """One distinct tokenization of a document (as given, or converted back to HK forms)."""
    variant: str
    ids: list[int]
    scorable: list[bool]
    offsets: list[tuple[int, int]] | None


def prepare(text: str, tokenizer, variants: Sequence[str] = VARIANTS) -> list[Prepared]:
    """The key-independent half of detection: each variant of the text tokenized, identical token
    sequences kept once (a conversion that changed nothing is not a second test)."""
    out, seen = [], set()
    for variant in variants:
        ids, scorable, offsets = _tokenize(variant_text(text, variant), tokenizer)
        if variant == "raw" or tuple(ids) not in seen:
            seen.add(tuple(ids))
            out.append(Prepared(variant, ids, scorable, offsets))
    return out


def detect(text: str, tokenizer, key: WatermarkKey, config: WatermarkConfig | None = None, *,
           alpha: float = 0.01, schemes: Sequence[str] = SCHEMES, variants: Sequence[str] = VARIANTS,
           windows: bool = True, min_scored_tokens: int = 16) -> dict[str, Any]:
    """Is `text` watermarked with `key`? A JSON-ready dict (what `hkllm watermark detect` prints
    per document and what the gateway's POST /v1/watermark/detect will answer):

    - `verdict`: "watermarked" (p ≤ alpha), "not_watermarked", or "too_short" (fewer than
      `min_scored_tokens` scored tokens in every try: no guess is made, `p_value` is null);
    - `p_value` / `log10_p`: the best try's p-value, multiplied by the number of tries (Bonferroni:
      each scheme on each distinct variant of the text — as given, s2hk, t2hk) and, when the
      document is long enough for a window scan (≥ 2×32 scored tokens), by 2 for the two families
      (whole document, best window), the window's own p already corrected for the windows tried;
    - `z`: the best whole-document try's z (green: (G − γn)/√(nγ(1−γ)); gumbel: (S − n)/√n);
    - `scheme`, `variant`, `scored_tokens` (of that try), `tokens`, `tries`, `config_id`;
    - `window`: the most significant window (to find a marked passage pasted into human text):
      its corrected p-value, scheme, variant, token and character span; null when not scanned.
    The key never appears in the result.
    """
    return detect_prepared(prepare(text, tokenizer, variants), key, config, alpha=alpha, schemes=schemes,
                           windows=windows, min_scored_tokens=min_scored_tokens)


def detect_prepared(prepared: Sequence[Prepared], key: WatermarkKey, config: WatermarkConfig | None = None, *,
                    alpha: float = 0.01, schemes: Sequence[str] = SCHEMES, windows: bool = True,
                    min_scored_tokens: int = 16) -> dict[str, Any]:
    """`detect` on `prepare`'s output (score one tokenized document under many keys)."""
    config = config or WatermarkConfig()
    result: dict[str, Any] = {"verdict": "too_short", "watermarked": None, "p_value": None, "log10_p": None,
                              "z": None, "scheme": None, "variant": None, "scored_tokens": 0,
                              "tokens": len(prepared[0].ids) if prepared else 0, "tries": 0, "alpha": alpha,
                              "min_scored_tokens": min_scored_tokens, "config_id": config.config_id(key),
                              "window": None}
    tries = []                                    # (variant, offsets, Score)
    for p in prepared:
        for scheme in schemes:
            s = score_ids(p.ids, key, config, scheme, p.scorable)
            result["scored_tokens"] = max(result["scored_tokens"], s.scored)
            if s.scored >= min_scored_tokens:
                tries.append((p.variant, p.offsets, s))
    if not tries:
        return result
    m = len(tries)
    variant, _, best = min(tries, key=lambda t: t[2].log10_p)
    doc_log10 = float(min(0.0, best.log10_p + math.log10(m)))
    final = doc_log10
    result.update(scheme=best.scheme, variant=variant, scored_tokens=best.scored, z=round(float(best.z), 4), tries=m)
    if windows:
        scans = [(v, off, s, _window_scan(s, config)) for v, off, s in tries if s.scored >= 2 * WINDOW_SIZES[0]]
        scans = [x for x in scans if x[3] is not None]
        if scans:
            v, offsets, s, w = min(scans, key=lambda x: x[3]["log10_p"])
            win_log10 = float(min(0.0, w["log10_p"] + math.log10(m)))
            first, last = int(s.positions[w["start"]]), int(s.positions[w["start"] + w["size"] - 1])
            result["window"] = {"p_value": _p(win_log10), "log10_p": round(win_log10, 4), "scheme": s.scheme,
                                "variant": v, "start_token": first, "end_token": last + 1,
                                "scored_tokens": w["size"], "windows": w["windows"]}
            if offsets is not None:
                result["window"].update(start_char=int(offsets[first][0]), end_char=int(offsets[last][1]))
            final = min(0.0, min(doc_log10, win_log10) + math.log10(2))
    result.update(p_value=_p(final), log10_p=round(final, 4), watermarked=bool(_p(final) <= alpha))
    result["verdict"] = "watermarked" if result["watermarked"] else "not_watermarked"
    return result
