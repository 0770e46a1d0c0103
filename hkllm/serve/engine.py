"""The embedded engine: a Hugging Face causal LM on this machine, serving many requests at once.

    engine = LocalEngine("runs/quickstart/dpo")
    async for event in engine.generate(engine.encode_chat(messages), SamplingParams(max_tokens=64)):
        print(event.text, end="")

One worker thread owns the model. Between two decoding steps it takes
waiting requests (up to `max_batch` rows in all), prefills them together and adds them to the
running batch: continuous batching at step granularity. The forward passes and the KV cache are a
decoder's (decoders.py: Llama-family models written out over per-row cache slots, anything else
through transformers' forward); the torch thread count for small and large batches is timed at
start, and `compile=True` (what `hkllm serve` passes unless `--eager`) then compiles the decoding
step for those counts in a thread of its own while the eager step serves. Every row has its own
temperature, top-p, seed, stop strings, token budget and logits processors, and streams its text
back to the asyncio loop as it goes; rows that finish (or whose client went away) leave the batch
at once. benchmarks/serve_capacity.py measures this against llama.cpp's llama-server and
transformers' own continuous batching (`transformers serve --continuous-batching`).

The gateway (gateway.py) talks to this engine only through the Engine contract (contract.py):
`chat`, `complete`, `stats`, `ready`, `aclose` and eight attributes, so UpstreamEngine (upstream.py)
can take its place. `generate`, `prompt_logprobs` and the tokenizer helpers are for in-process
callers (hkllm eval's LocalBackend, tests).

Reading order: `sample` (one row's next token) → `LocalEngine._advance_all` (logits processors,
then sampling, at prefill and at every step) → `_advance` (stop strings, budget, streaming).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import torch

# The contract's types, re-exported: callers have always imported them from here.
from hkllm.serve.contract import ErrorEvent, Event, Generation, SamplingParams, longest_stop_prefix  # noqa: F401
from hkllm.serve.openmp import release_idle_threads

log = logging.getLogger("hkllm.serve")

GREEDY_BELOW = 1e-5       # a temperature this small is greedy (dividing by it would overflow), as in vLLM


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One row's next token from its (processed) logits: greedy at temperature 0, else
    temperature + top-p (nucleus) sampling with the row's own generator."""
    if params.temperature < GREEDY_BELOW:
        return int(logits.argmax())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > params.top_p
        probs[order[drop]] = 0.0
    return int(torch.multinomial(probs, 1, generator=generator)[0])


@dataclass
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    queue: asyncio.Queue               # where the request's Events go, on the asyncio loop `loop`
    loop: asyncio.AbstractEventLoop
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    sent: int = 0                      # characters of decoded text already streamed
    cancelled: bool = False
    finished: bool = False
    ids: list[int] = field(default_factory=list)    # prompt + generated, what logits processors read
    text: str = ""                     # the decoded answer up to token `read` (see LocalEngine._decoded)
    prefix: int = 0
    read: int = 0
    read_text: str = ""                # generated[prefix:read] decoded: the same until they move

    def __post_init__(self):
        self.ids = list(self.prompt_ids)


@dataclass
class _Batch:
    """The requests being decoded together, in the decoder's row order, and the token each feeds next
    (their KV cache is the decoder's: decoders.py)."""
    next_ids: torch.Tensor
    live: list[_Sequence]


def model_fingerprint(model_dir: Path) -> str:
    """A short id that changes when the weights or config change (cache keys, audit log).

    Hashing hundreds of GB of weights at start-up is too slow at real scale, so we hash the
    config plus each weight file's name, size and first and last MiB.
    """
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:12]


def _put_all(items: list[tuple[asyncio.Queue, Event]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)


# Above this many parameters both precisions are not loaded to be timed: decoding a model that size
# is memory-bound, and bf16 halves the bytes each step reads.
TIME_BOTH_MAX_PARAMS = 500_000_000


def load_for_serving(model_dir: Path, requested: str, max_batch: int, pad_id: int, decoder_choice: str):
    """(model, decoder, Precision): the model in the precision it serves fastest in on this machine.

    `auto` picks bf16 where the hardware computes it natively (hkllm/precision.py), but on a CPU that
    says nothing about a given model's steps: oneDNN/MKL's bf16 kernels gain at many rows and lose at
    few (a decoding step of the quickstart model on an AVX512_BF16 EPYC: 4.8 ms in bf16, 0.8 in fp32 at
    one row; dev/LOG.md, issue 14). So on such a CPU both are loaded and a step of each is timed at
    one row and at a batch, in turn, on every core; bf16 is kept only if it is clearly faster (by 20%,
    both sizes' mean). Every core: a model heavy enough for the precision to matter gets them all
    (calibrate_threads), and bf16's kernels gain more from the second one (SmolLM2's matmuls at one row,
    1 → 2 threads: fp32 50 → 49 ms, bf16 63 → 37). Timed on one thread, SmolLM2 read 0.78 one start
    and 0.83 the next: bf16, then fp32, and other greedy answers."""
    import math
    import statistics

    from transformers import AutoModelForCausalLM

    from hkllm.precision import Precision, choose
    from hkllm.serve.decoders import make_decoder, step_seconds

    chosen = choose(requested, "serving")

    def build(p: Precision):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=p.torch_dtype).eval()
        return model, make_decoder(model, max_batch, pad_id, decoder_choice)

    model, decoder = build(chosen)
    measure = (requested == "auto" and not os.environ.get("HKLLM_PRECISION") and chosen.device == "cpu"
               and chosen.name == "bf16" and sum(p.numel() for p in model.parameters()) <= TIME_BOTH_MAX_PARAMS)
    if not measure:
        return model, decoder, chosen
    model32, decoder32 = build(Precision("fp32", "", "cpu"))
    rows = min(8, max_batch)
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    times = {"bf16": {1: [], rows: []}, "fp32": {1: [], rows: []}}
    try:
        for _ in range(3):                       # in turn, medians: this machine's speed drifts (calibrate_threads)
            for name, d in (("bf16", decoder), ("fp32", decoder32)):
                for r in (1, rows):
                    times[name][r].append(step_seconds(d, r, steps=5))
    finally:
        torch.set_num_threads(before)
    ms = {name: {r: 1e3 * statistics.median(v) for r, v in by_rows.items()} for name, by_rows in times.items()}
    ratio = math.sqrt(ms["bf16"][1] / ms["fp32"][1] * ms["bf16"][rows] / ms["fp32"][rows])
    detail = (f"a step on {cores} thread(s) at 1 · {rows} rows took {ms['bf16'][1]:.2f} · {ms['bf16'][rows]:.2f} ms in bf16, "
              f"{ms['fp32'][1]:.2f} · {ms['fp32'][rows]:.2f} in fp32")
    # bf16 must win clearly: the two precisions give different greedy answers, and a near tie would
    # pick one or the other from one start to the next (SmolLM2 here: 0.88 one time, 1.01 the next).
    if ratio < 0.8:
        return model, decoder, Precision("bf16", f"{chosen.reason}; {detail}", "cpu")
    return model32, decoder32, Precision("fp32", f"{chosen.reason}, but {detail}", "cpu")


class LocalEngine:
    kind = "embedded"

    def __init__(self, model_dir: str | Path, max_batch: int = 32, served_name: str | None = None,
                 threads: int | None = None, precision: str = "auto", decoder: str = "auto",
                 compile: bool = False):
        from transformers import AutoTokenizer, GenerationConfig

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            from hkllm.errors import UserError
            raise UserError(f"{self.model_dir}: no config.json — not a model folder (train one with `hkllm quickstart`)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.max_batch = max_batch
        self.name = served_name or self.model_dir.resolve().name
        self.version = model_fingerprint(self.model_dir)
        template = self.tokenizer.chat_template or ""
        self.template_version = hashlib.sha256(template.encode()).hexdigest()[:12]
        try:
            gen = GenerationConfig.from_pretrained(self.model_dir)
        except OSError:
            gen = GenerationConfig()
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.default_temperature = float(gen.temperature or 1.0) if gen.do_sample else 0.0
        self.default_top_p = float(gen.top_p or 1.0)

        from hkllm.serve.decoders import calibrate_threads

        self.model, self.decoder, self.precision = load_for_serving(self.model_dir, precision, max_batch,
                                                                    self.pad_id, decoder)
        self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        cores = len(os.sched_getaffinity(0))
        self._threads = ({"small": threads, "large": threads} if threads
                         else calibrate_threads(self.decoder, cores, max_batch))
        # What the start-up banner and logs say this engine chose, and why.
        self.runtime = (f"{self.decoder.name} forward pass · {self.precision.name} ({self.precision.reason}) · "
                        f"torch threads {self._threads['small']} for 1-2 rows, {self._threads['large']} for more "
                        f"({'--threads' if threads else 'timed at start'}; {cores} cores)")
        log.info("embedded engine: %s", self.runtime)
        if compile and hasattr(self.decoder, "compile"):
            # In a thread of its own: the first compile takes from ~30 s to minutes (decoders.py), and
            # the eager step serves meanwhile; the compiled one takes over when it is built and checked.
            self.runtime += " · decoding step compiling in the background (see the log)"
            threading.Thread(target=self._compile, name="hkllm-compile", daemon=True).start()

        self._waiting: list[_Sequence] = []
        self._outbox: list[tuple[_Sequence, Event]] = []
        self._scoring: list[tuple] = []
        self._running = 0
        self._cond = threading.Condition()
        self._closed = False
        # This thread loaded and timed the model; from here the worker runs torch (openmp.py).
        release_idle_threads()
        self._worker = threading.Thread(target=self._loop, name="hkllm-engine", daemon=True)
        self._worker.start()

    # -- what the gateway uses -------------------------------------------------------------

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if not self.tokenizer.chat_template:
            raise ValueError(f"{self.model_dir} has no chat template; use /v1/completions")
        try:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as e:     # a template's raise_exception ("roles must alternate", ...): the client's to fix
            from jinja2 import TemplateError

            if not isinstance(e, TemplateError):
                raise
            raise ValueError(f"messages: the model's chat template refused them: {e}") from e
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    async def chat(self, messages: list[dict], params: SamplingParams, stream: bool = True) -> Generation:
        # `stream` matters to engines behind a network hop (upstream.py); this one always streams.
        ids = self.encode_chat(messages)
        return Generation(len(ids), self.generate(ids, params))

    async def complete(self, prompt: str | list[int], params: SamplingParams, echo: bool = False,
                       stream: bool = True) -> Generation:
        ids = list(prompt) if isinstance(prompt, list) else self.encode_text(prompt)
        if not ids:
            raise ValueError("prompt has no tokens once tokenized")
        if any(not 0 <= i < len(self.tokenizer) for i in ids):
            raise ValueError(f"prompt token ids must be in [0, {len(self.tokenizer)})")
        gen = Generation(len(ids), self.generate(ids, params))
        if echo:
            gen.echo_text = self.tokenizer.decode(ids)
            if params.logprobs is not None:
                gen.echo_logprobs = await self.prompt_logprobs(ids, params.logprobs)
        return gen

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def stats(self) -> dict:
        with self._cond:
            return {"waiting": len(self._waiting), "running": self._running}

    async def ready(self) -> bool:
        return self._worker.is_alive()

    async def aclose(self) -> None:
        """Nothing to release per server: the worker is a daemon thread, stopped by `close()`,
        which the engine's owner calls (the same engine may serve several apps in turn)."""

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Event]:
        """Stream Events for one request; leaving the loop early (client gone) cancels it."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        gen = None
        if params.temperature >= GREEDY_BELOW:
            gen = torch.Generator()
            gen.manual_seed(params.seed) if params.seed is not None else gen.seed()
        seq = _Sequence(list(prompt_ids), params, queue, loop, gen)
        with self._cond:
            self._waiting.append(seq)
            self._cond.notify()
        try:
            while True:
                event = await queue.get()
                # Events that piled up while the consumer was busy go out as one: under load the
                # HTTP layer, not the engine, is the slower side, and every chunk costs it a write.
                while not event.finish_reason and not isinstance(event, ErrorEvent) and not queue.empty():
                    more = queue.get_nowait()
                    if isinstance(more, ErrorEvent):
                        yield event
                        event = more
                        break
                    event = Event(text=event.text + more.text, finish_reason=more.finish_reason,
                                  completion_tokens=more.completion_tokens, logprobs=event.logprobs + more.logprobs,
                                  prompt_tokens=more.prompt_tokens)
                yield event
                if event.finish_reason:
                    return
        finally:
            seq.cancelled = True       # no-op when finished; frees the batch row otherwise
            with self._cond:
                if seq in self._waiting:
                    self._waiting.remove(seq)

    async def prompt_logprobs(self, prompt_ids: list[int], top: int = 1) -> list[dict]:
        """Log-probability of every prompt token given the ones before it (None for the first).

        This is what lm-evaluation-harness's `local-completions` scores multiple choice with.
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cond:
            self._scoring.append((list(prompt_ids), top, loop, fut))
            self._cond.notify()
        return await fut

    def _compile(self) -> None:
        # Exporting the step patches math.pow for the whole process while it traces, and numba, when it
        # first compiles the watermark's kernels in the gateway's thread meanwhile, reads it and fails
        # (the server aborted): those kernels are compiled (or loaded from numba's cache) first.
        from hkllm.safety.watermark import compile_kernels

        compile_kernels()
        try:
            why = self.decoder.compile(self._threads)
        finally:
            release_idle_threads()               # this thread's OpenMP team, now idle (openmp.py)
        if why:
            log.warning("embedded engine: decode step not compiled (%s); eager steps", why)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    # -- the worker thread -----------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():           # this thread only ever runs inference
            self._serve_forever()

    def _serve_forever(self) -> None:
        batch: _Batch | None = None
        while True:
            with self._cond:
                while not (self._waiting or self._scoring or self._closed or batch):
                    self._cond.wait()
                if self._closed:
                    return
                scoring, self._scoring = self._scoring, []
                room = self.max_batch - (len(batch.live) if batch else 0)
                joining = [s for s in self._waiting[:room] if not s.cancelled]
                del self._waiting[:room]
            if scoring:
                self._flush()                    # the last step's tokens do not wait for the scoring
            for ids, top, loop, fut in scoring:
                try:
                    result = self._score(ids, top)
                    loop.call_soon_threadsafe(lambda f=fut, r=result: f.done() or f.set_result(r))
                except Exception as e:  # reported to the request, never kills the worker
                    loop.call_soon_threadsafe(lambda f=fut, e=e: f.done() or f.set_exception(e))
            try:
                if joining:
                    self._flush()
                    batch = self._prefill(batch, joining)
                if batch:
                    want = self._threads["small" if len(batch.live) <= 2 else "large"]
                    if torch.get_num_threads() != want:
                        torch.set_num_threads(want)
                    # The last step's Events go out just before this step's forward pass, which lets the
                    # GIL go (aoti.py), so that the HTTP thread, woken by them, does its work meanwhile.
                    # Flushed after the step instead, they woke it while this thread was still in Python,
                    # and every eager op here let it in, after which this thread waited for it: the two
                    # threads took turns (py-spy at one user, dev/LOG.md issue 14, stop 26).
                    self._flush()
                    batch = self._step(batch)
            except Exception as e:
                for seq in (batch.live if batch else []) + joining:
                    if not seq.finished:
                        seq.finished = True
                        self._send(seq, ErrorEvent(message=f"engine error: {type(e).__name__}: {e}",
                                                   completion_tokens=len(seq.generated)))
                batch = None
                self.decoder.reset()
            if batch is None:             # no step follows to flush them
                self._flush()
            with self._cond:
                self._running = len(batch.live) if batch else 0

    def _score(self, ids: list[int], top: int) -> list[dict]:
        logits = self.model(torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        out = [{"token": self.token_text(ids[0]), "logprob": None, "top": None, "offset": 0}]
        for pos, tok in enumerate(ids[1:], start=1):
            # Offsets from decoding each prefix: a token may hold part of a character's UTF-8 bytes.
            out.append({**self._token_logprobs(logp[pos - 1], tok, top),
                        "offset": len(self.tokenizer.decode(ids[:pos]).rstrip("\ufffd"))})
        return out

    def _token_logprobs(self, logp_row: torch.Tensor, token: int, top: int) -> dict:
        values, indices = torch.topk(logp_row, max(1, top))
        return {"token": self.token_text(token), "logprob": float(logp_row[token]),
                "top": {self.token_text(int(i)): float(v) for v, i in zip(values, indices)}}

    def _prefill(self, batch: _Batch | None, seqs: list[_Sequence]) -> _Batch | None:
        """Run the new requests' prompts (their rows follow the running ones) and pick each one's first token."""
        chosen = self._advance_all(seqs, self.decoder.prefill([s.prompt_ids for s in seqs]))
        if batch is None:
            batch = _Batch(chosen, list(seqs))
        else:
            batch.next_ids, batch.live = torch.cat([batch.next_ids, chosen]), batch.live + list(seqs)
        return self._drop_finished(batch)

    def _step(self, b: _Batch) -> _Batch | None:
        """One decoding step for every row of the running batch."""
        b.next_ids = self._advance_all(b.live, self.decoder.step(b.next_ids))
        return self._drop_finished(b)

    def _advance_all(self, rows: list[_Sequence], logits: torch.Tensor) -> torch.Tensor:
        """Run each row's logits processors, choose its next token and stream it. Prefill and
        every decoding step come through here: the one sampling seam."""
        self._process(rows, logits)
        chosen = self._choose(logits, rows)
        for row, (s, token) in enumerate(zip(rows, chosen.tolist())):
            self._advance(s, token, logits[row] if s.params.logprobs is not None else None)   # a view costs µs
        return chosen

    def _process(self, rows: list[_Sequence], logits: torch.Tensor) -> None:
        """Each row's logits processors, in its own order. Processors at the same place in their
        rows' lists that declare the same `batch_kind` run once for all those rows (contract.py)."""
        def failed(s: _Sequence, e: Exception) -> None:   # this row ends, the batch goes on
            s.cancelled = True
            self._send(s, ErrorEvent(message=f"logits processor failed: {type(e).__name__}: {e}",
                                     completion_tokens=len(s.generated)))

        depth = max((len(s.params.logits_processors) for s in rows), default=0)
        for place in range(depth):
            groups: dict = {}
            for row, s in enumerate(rows):
                if place >= len(s.params.logits_processors) or s.cancelled:
                    continue
                process = s.params.logits_processors[place]
                kind = getattr(process, "batch_kind", None)
                if kind is not None:
                    groups.setdefault((type(process), kind), []).append(row)
                    continue
                try:
                    logits[row] = process(s.ids, logits[row])
                except Exception as e:
                    failed(s, e)
            for (cls, _), members in groups.items():
                try:
                    cls.apply_batch([rows[r].params.logits_processors[place] for r in members],
                                    [rows[r].ids for r in members], logits, members)
                except Exception as e:
                    for r in members:
                        failed(rows[r], e)

    def _drop_finished(self, b: _Batch) -> _Batch | None:
        """Rows that finished (or whose client went away) leave the batch at once."""
        keep = [row for row, s in enumerate(b.live) if not s.finished]
        if len(keep) == len(b.live):
            return b
        order = self.decoder.keep(keep)          # the decoder may move rows: follow its order
        if not order:
            return None
        b.live, b.next_ids = [b.live[row] for row in order], b.next_ids[torch.tensor(order)]
        return b

    def _send(self, s: _Sequence, event: Event) -> None:
        self._outbox.append((s, event))

    def _flush(self) -> None:
        """Hand this step's Events to the asyncio loops: one wake-up per loop per step, not per token."""
        by_loop: dict = {}
        for s, event in self._outbox:
            by_loop.setdefault(s.loop, []).append((s.queue, event))
        self._outbox.clear()
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:    # that loop has closed: nobody is waiting for these
                pass

    @staticmethod
    def _choose(logits: torch.Tensor, live: list[_Sequence]) -> torch.Tensor:
        """Every row's next token: one argmax for the batch, then `sample` for the rows that sample."""
        chosen = logits.argmax(dim=-1)
        for row, s in enumerate(live):
            if s.params.temperature >= GREEDY_BELOW:
                chosen[row] = sample(logits[row], s.params, s.generator)
        return chosen

    def _decoded(self, s: _Sequence, end: int) -> str:
        """The text of s.generated[:end], decoding only the last few tokens (vLLM's incremental
        detokenizer: what tokens[prefix:] decode to beyond tokens[prefix:read] is what the new
        tokens add). Decoding the whole answer at every step costs O(length) per token. Text that
        ends in an unfinished UTF-8 character ("\ufffd") stays pending until a later token ends it."""
        after = self.tokenizer.decode(s.generated[s.prefix:end], skip_special_tokens=True)
        added = after[len(s.read_text):]
        if added and not added.endswith("\ufffd"):
            s.text += added
            s.prefix, s.read = s.read, end
            s.read_text = self.tokenizer.decode(s.generated[s.prefix:s.read], skip_special_tokens=True)
            return s.text
        return s.text + added

    def _advance(self, s: _Sequence, tok: int, logits: torch.Tensor | None) -> bool:
        """Append one token to a row and stream what became final; True when the row is done."""
        if s.cancelled:
            s.finished = True
            return True
        s.generated.append(tok)
        s.ids.append(tok)
        logprobs = []
        if s.params.logprobs is not None:
            logprobs = [self._token_logprobs(torch.log_softmax(logits, -1), tok, s.params.logprobs)]
        finish = None
        if tok in self.eos_ids and not s.params.ignore_eos:
            finish, text = "stop", self._decoded(s, len(s.generated) - 1)
        else:
            text = self._decoded(s, len(s.generated))
            if len(s.generated) >= s.params.max_tokens or len(s.prompt_ids) + len(s.generated) >= self.max_model_len:
                finish = "length"
        for stop in s.params.stop:
            at = text.find(stop, max(0, s.sent - len(stop)))
            if at >= 0:
                finish, text = "stop", text[:at]
        if finish:
            new = text[s.sent:]
        else:
            # Hold back an unfinished UTF-8 character and anything that may become a stop string.
            end = len(text.rstrip("\ufffd"))
            end -= longest_stop_prefix(text[:end], s.params.stop)
            new = text[s.sent:end] if end > s.sent else ""
        s.sent += len(new)
        if new or finish or logprobs:
            self._send(s, Event(text=new, finish_reason=finish, completion_tokens=len(s.generated), logprobs=logprobs))
        s.finished = finish is not None
        return s.finished
