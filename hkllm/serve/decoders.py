"""The embedded engine's forward passes: the rows being decoded, their KV cache, one step at a time.

    decoder = make_decoder(model, max_batch=32, pad_id=0)   # SlotDecoder where it applies, else PaddedDecoder
    logits = decoder.prefill([[1, 2, 3], [4, 5]])      # two new rows join; their next-token logits
    logits = decoder.step(torch.tensor([7, 8]))        # one token for every row
    order = decoder.keep([1])                          # row 0 finished; row i is now the old row order[i]

The engine (engine.py) owns the requests; a decoder owns only tensors. Two of them:

- `SlotDecoder` — Llama-family models (Llama, Qwen2, Mistral without a sliding window, SmolLM2):
  the forward pass written out over the module's own weights, with a KV cache allocated once per
  row slot and grown by doubling. A decoding step allocates nothing but the activations, with
  no attention mask to rebuild and no left padding: each row keeps its own length and rows that
  finish are replaced by the last rows (`keep`). On the quickstart model (4 layers of width 128)
  transformers' forward costs 3.1-3.7 ms per step at batch 1 on this 2-core machine, almost all
  of it Python and dispatch; this one 1.6-2.2 ms (dev/LOG.md, issue 14). At start it checks
  itself against transformers' logits on a short prompt and steps aside if they disagree.
- `PaddedDecoder` — any other causal LM through transformers' own forward: rows left-padded in a
  `DynamicCache` whose layers grow in place (kv_cache.py), joined by padding the shorter side.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger("hkllm.serve")

# Rope variants whose cos/sin depend only on the position (a table computed once is exact).
STATIC_ROPE = {"default", "linear", "llama3", "yarn", None}
SLOT_MODEL_TYPES = {"llama", "qwen2", "mistral"}


class PaddedDecoder:
    """transformers' forward with left-padded rows: works for every architecture it supports."""

    name = "transformers"

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        embeddings, output = model.get_input_embeddings(), model.get_output_embeddings()
        tied = output is not None and output.weight is embeddings.weight
        for module in model.modules():     # every matrix stored [in, out]: see _Layer for why
            if isinstance(module, torch.nn.Linear) and module.weight.is_contiguous():
                _fuse_transposed([module])
        if tied:                           # still one tensor: the embedding reads rows of the view
            embeddings.weight = output.weight
        self.reset()

    def reset(self) -> None:
        self.cache = self.mask = self.positions = None
        self.rows = 0

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        from hkllm.serve.kv_cache import new_cache

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(self.model.config)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                            logits_to_keep=1).logits[:, -1].float()
        self._join(cache, mask, positions[:, -1:])
        return logits

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones((self.rows, 1), dtype=torch.long)], dim=1)
        self.positions = self.positions + 1
        return self.model(input_ids=next_ids[:, None], attention_mask=self.mask, position_ids=self.positions,
                          cache=self.cache, use_cache=True).logits[:, -1].float()

    def keep(self, rows: list[int]) -> list[int]:
        if not rows:
            self.reset()
            return []
        index = torch.tensor(rows)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.rows = len(rows)
        # Columns that are padding in every remaining row are dead weight: cut them.
        dead = int((self.mask.cumsum(-1) == 0).sum(-1).min())
        if dead:
            self.mask = self.mask[:, dead:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, dead:], layer.values[:, :, dead:]
        return rows

    def _join(self, cache, mask: torch.Tensor, positions: torch.Tensor) -> None:
        """Stack newly prefilled rows under the running ones: the shorter side's KV cache and
        attention mask are padded on the left."""
        from hkllm.serve.kv_cache import GrowableLayer, stack_left_aligned

        if self.cache is None:
            self.cache, self.mask, self.positions, self.rows = cache, mask, positions, mask.shape[0]
            return
        width = max(self.mask.shape[1], mask.shape[1])

        def pad(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.new_zeros((x.shape[0], width - x.shape[1])), x], dim=1)

        for a, b in zip(self.cache.layers, cache.layers):
            keys = stack_left_aligned([a.keys, b.keys], width, spare=64)
            values = stack_left_aligned([a.values, b.values], width, spare=64)
            if isinstance(a, GrowableLayer):
                a.adopt(keys, values, width)
            else:
                a.keys, a.values = keys[:, :, :width], values[:, :, :width]
        self.mask = torch.cat([pad(self.mask), pad(mask)])
        self.positions = torch.cat([self.positions, positions])
        self.rows = self.mask.shape[0]


class _Layer:
    """One decoder layer's weights: q/k/v fused, gate/up fused, every matrix stored [in, out].

    Why [in, out]: transformers keeps [out, in] and multiplies by its transpose, and on this
    kind of CPU MKL's single-row product reads that layout up to 3x slower once the weights are
    out of cache (a 128 x 4000 output layer: 470 µs against 150 µs, at one row; the gap shrinks
    with more rows). The module's parameters become transposed views of the new tensors, so
    transformers' own forward (prompt scoring) still works and nothing is held twice.
    """

    def __init__(self, layer):
        a, mlp = layer.self_attn, layer.mlp
        self.qkv_w, self.qkv_b = _fuse_transposed([a.q_proj, a.k_proj, a.v_proj])
        self.o_w, self.o_b = _fuse_transposed([a.o_proj])
        self.gate_up_w, self.gate_up_b = _fuse_transposed([mlp.gate_proj, mlp.up_proj])
        self.down_w, self.down_b = _fuse_transposed([mlp.down_proj])
        self.norm1, self.norm2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight


def _fuse_transposed(linears: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[in, sum of outs] and the fused bias (None when no part has one); each module's weight
    and bias become views of them."""
    weight = torch.cat([m.weight.detach().t() for m in linears], dim=1).contiguous()
    has_bias = any(m.bias is not None for m in linears)
    bias = torch.cat([m.bias.detach() if m.bias is not None else weight.new_zeros(m.out_features)
                      for m in linears]) if has_bias else None
    start = 0
    for m in linears:
        end = start + m.out_features
        m.weight = torch.nn.Parameter(weight[:, start:end].t(), requires_grad=False)
        if m.bias is not None:
            m.bias = torch.nn.Parameter(bias[start:end], requires_grad=False)
        start = end
    return weight, bias


# bf16 weights are also held reordered for oneDNN's kernels up to this many parameters (a second
# copy: the [in, out] one stays, for the compiled step and transformers' forward).
PACK_MAX_PARAMS = 500_000_000


def _onednn_packed(decoder: SlotDecoder) -> dict[int, torch.Tensor]:
    """id(weight [in, out]) -> the same matrix reordered for oneDNN's bf16 matmul (`_linear`), on a
    CPU where oneDNN computes bf16; {} where it does not, or for fp32. SmolLM2's matrices at 1 · 8
    rows, two threads, weights streamed from memory: 31 · 36 ms a step as `x @ W`, 22 · 17 reordered
    (dev/LOG.md, issue 14, stop 27). fp32's reordered MKL weights ran no faster than the [in, out]
    product used here (48 against 49 ms at one row), so fp32 stays as it is."""
    weights = [decoder.lm_head] + [w for layer in decoder.layers
                                   for w in (layer.qkv_w, layer.o_w, layer.gate_up_w, layer.down_w)]
    if (decoder.dtype != torch.bfloat16 or weights[0].device.type != "cpu"
            or sum(w.numel() for w in weights) > PACK_MAX_PARAMS
            or not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return {}
    try:
        return {id(w): torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), 1) for w in weights}
    except RuntimeError as e:               # an oneDNN build without these kernels: the plain product
        log.info("embedded engine: bf16 weights not reordered for oneDNN (%s)", e)
        return {}


def slot_decoder_unfit(model) -> str | None:
    """Why SlotDecoder cannot run this model (None: it can)."""
    cfg = model.config
    if cfg.model_type not in SLOT_MODEL_TYPES:
        return f"model_type {cfg.model_type!r} (written out for {', '.join(sorted(SLOT_MODEL_TYPES))})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type", rope.get("type")) not in STATIC_ROPE:
        return f"rope_type {rope.get('rope_type')!r} depends on the sequence length"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) is not False:
        return "sliding-window attention"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    return None


class SlotDecoder:
    """A Llama-family forward pass over per-row KV slots (see the module docstring)."""

    name = "slots"

    def __init__(self, model, max_batch: int):
        cfg = model.config
        self.model, self.max_batch = model, max_batch
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.max_len = int(getattr(cfg, "max_position_embeddings", 2048))
        self.eps = cfg.rms_norm_eps
        attn = model.model.layers[0].self_attn
        self.scale = float(getattr(attn, "scaling", self.head_dim ** -0.5))
        self.layers = [_Layer(layer) for layer in model.model.layers]
        self.final_norm = model.model.norm.weight
        # The output layer [hidden, vocab] (see _Layer); tied embeddings read rows of its transpose.
        tied = model.lm_head.weight is model.model.embed_tokens.weight
        self.lm_head = model.lm_head.weight.detach().t().contiguous()
        model.lm_head.weight = torch.nn.Parameter(self.lm_head.t(), requires_grad=False)
        if tied:
            model.model.embed_tokens.weight = model.lm_head.weight
        self.embed = model.model.embed_tokens.weight
        p = self.embed
        with torch.inference_mode():
            positions = torch.arange(self.max_len)[None]
            cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=p.dtype), positions)
        self.cos, self.sin = cos[0].to(p.dtype), sin[0].to(p.dtype)     # [max_len, head_dim]
        self.positions = torch.arange(self.max_len + 1)                 # a step's span is a slice of it
        self.dtype = p.dtype
        self._decode = self._decode_step              # `compile` swaps in a compiled one
        self._packed = _onednn_packed(self)
        if self._packed:
            self.name = "slots, oneDNN bf16 matmuls"
        self.reset()

    def reset(self) -> None:
        self.rows = 0
        self.lengths = torch.zeros(0, dtype=torch.long)
        # The longest row's length as a Python int, so that a step reads no tensor before its program
        # runs (every eager op lets the GIL go, and the HTTP thread, just woken, takes it: engine.py).
        self.longest = 0
        # Every layer's keys and values in one tensor: [layers, 2 (k, v), row capacity, kv heads,
        # length capacity, head dim]. One tensor, not one per layer and kind, because a compiled step
        # is called with each tensor's varying sizes as arguments that its C++ wrapper turns into
        # tensors one by one: 8 tables meant 16 such sizes, ~0.1 ms of a 1.3 ms token at one row.
        self.kv = None

    # -- the cache ---------------------------------------------------------------------------

    def _reserve(self, rows: int, length: int) -> None:
        """Make room for `rows` rows of `length` positions (doubling, so growth is rare)."""
        have_rows = self.kv.shape[2] if self.kv is not None else 0
        have_len = self.kv.shape[4] if self.kv is not None else 0
        if rows <= have_rows and length <= have_len:
            return
        new_rows = min(self.max_batch + 1, max(rows, 2 * have_rows, 2)) if rows > have_rows else have_rows
        new_len = min(self.max_len + 1, max(length, 2 * have_len, 64)) if length > have_len else have_len
        # Zeros, not empty: attention multiplies masked positions' values by 0, and 0 * NaN garbage is NaN.
        kv = torch.zeros((len(self.layers), 2, new_rows, self.kv_heads, new_len, self.head_dim), dtype=self.dtype)
        if self.kv is not None and self.rows:
            kv[:, :, :self.rows, :, :have_len] = self.kv[:, :, :self.rows]
        self.kv = kv

    def keep(self, rows: list[int]) -> list[int]:
        """Keep these rows (ascending): the rows past the new end move into the holes, so only
        they are copied. Returns the new order: row i now holds what row order[i] held."""
        n = len(rows)
        order = list(range(n))
        kept = set(rows)
        holes = [r for r in range(n) if r not in kept]
        movers = [r for r in rows if r >= n]
        if holes:
            T = int(self.lengths[movers].max())
            src, dst = torch.tensor(movers), torch.tensor(holes)
            self.kv[:, :, dst, :, :T] = self.kv[:, :, src, :, :T]
            self.lengths[dst] = self.lengths[src]
            for h, m in zip(holes, movers):
                order[h] = m
        self.rows = n
        self.lengths = self.lengths[:n].clone()
        self.longest = int(self.lengths.max()) if n else 0
        if not n:
            self.reset()
        return order

    # -- the forward pass --------------------------------------------------------------------

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # What LlamaRMSNorm computes (in float32, then back), in four operations.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x @ weight (+ bias), weight [in, out]; through its oneDNN copy where there is one."""
        packed = self._packed.get(id(weight))
        if packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        out = x @ weight
        return out if bias is None else out + bias

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        gate, up = self._linear(self._norm(x, layer.norm2), layer.gate_up_w, layer.gate_up_b).chunk(2, dim=-1)
        return x + self._linear(F.silu(gate) * up, layer.down_w, layer.down_b)

    def _qkv(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q [rows, heads, seq, dim] and k, v [rows, kv heads, seq, dim] for x [rows, seq, hidden]."""
        rows, seq = x.shape[:2]
        qkv = self._linear(self._norm(x, layer.norm1), layer.qkv_w, layer.qkv_b)
        q, k, v = qkv.split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                             self.kv_heads * self.head_dim], dim=-1)
        q = q.view(rows, seq, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(rows, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(rows, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin), v

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(self._norm(x, self.final_norm), self.lm_head, None).float()

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """New rows after the running ones; right-padded, causal attention over their own prompts
        (a row's padding comes after its tokens, so no real token sees it)."""
        first, count = self.rows, len(prompts)
        width = max(len(p) for p in prompts)
        self._reserve(first + count, width + 1)
        ids = torch.zeros((count, width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, :len(p)] = torch.tensor(p)
        lengths = torch.tensor([len(p) for p in prompts])
        cos, sin = self.cos[:width], self.sin[:width]
        x = F.embedding(ids, self.embed)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, cos, sin)
            self.kv[i, 0, first:first + count, :, :width] = k
            self.kv[i, 1, first:first + count, :, :width] = v
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                               enable_gqa=self.heads != self.kv_heads)
            x = x + self._linear(o.transpose(1, 2).reshape(count, width, -1), layer.o_w, layer.o_b)
            x = self._mlp(layer, x)
        last = x[torch.arange(count), lengths - 1]
        self.lengths = torch.cat([self.lengths, lengths])
        self.longest = max(self.longest, width)
        self.rows = first + count
        return self._logits(last)

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """One token per row at its own position: write its k/v into the row's slot, attend over
        the row's filled length (a mask hides the rest of the slot)."""
        pos = self.lengths
        span = self.longest + 1
        # One spare row and position: the compiled program was exported over a table longer than its live
        # rows and span, and is kept to that case.
        self._reserve(self.rows + 1, span + 1)
        logits = self._decode(next_ids, pos, self.positions[:span], self.kv)
        self.lengths = pos + 1
        self.longest += 1
        return logits

    def _decode_step(self, next_ids: torch.Tensor, pos: torch.Tensor, span_positions: torch.Tensor,
                     kv: torch.Tensor) -> torch.Tensor:
        """The step's tensor work, and nothing else: what `compile` exports and compiles."""
        n, span = pos.shape[0], span_positions.shape[0]
        # Which of the span's positions each row has not reached: built here, where it is one fused loop,
        # not by four tensor operations of a Python step (3-5% of a one-row token).
        hidden = span_positions[None] > pos[:, None]                                  # [rows, span]
        cos, sin = self.cos[pos][:, None, None], self.sin[pos][:, None, None]     # [rows, 1, 1, dim]
        hidden = hidden[:, None, None]                                                # [rows, 1, 1, span]
        rows = torch.arange(n)
        group = self.heads // self.kv_heads
        x = F.embedding(next_ids[:, None], self.embed)                                # [rows, 1, hidden]
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, cos, sin)
            # One write of k and v into the table itself, every index a tensor: a write through a
            # view of the table (kv[i, 0][rows, :, pos] = …) compiles to a copy of the whole table.
            kv[torch.full_like(pos, i), :, rows, :, pos] = torch.stack((k[:, :, 0], v[:, :, 0]), dim=1)
            keys, values = kv[i, 0, :n, :, :span], kv[i, 1, :n, :, :span]            # views, no copy
            # q grouped by the kv head it shares: [rows, kv heads, group, dim] @ [rows, kv heads, dim, span]
            scores = torch.matmul(q.view(n, self.kv_heads, group, self.head_dim), keys.transpose(-1, -2))
            scores = scores.mul_(self.scale).masked_fill_(hidden, float("-inf"))
            o = torch.matmul(torch.softmax(scores, dim=-1), values)                   # [rows, kv heads, group, dim]
            x = x + self._linear(o.reshape(n, 1, -1), layer.o_w, layer.o_b)
            x = self._mlp(layer, x)
        return self._logits(x[:, 0])

    def compile(self, threads: dict[str, int], cache: bool = True, where_faster: bool = True) -> str | None:
        """Swap the eager step for one compiled ahead of time by AOTInductor (torch.export, then
        inductor's C++), one program for every row count and length, checked against the eager step;
        None when that worked, else why not (the eager step stays). `threads`: calibrate_threads'
        answer, which the engine follows. It never touches the decoder's own rows, so the engine
        runs it in a thread of its own and serves with the eager step meanwhile. The program embeds
        the weights, and is kept on disk under HKLLM_CACHE_DIR (~/.cache/hkllm/aoti) by a hash of
        them, so that the next start with the same weights only loads it (`cache=False`: not kept).
        It is then timed against the eager step at one row and at eight, and used only for the batch
        sizes where it is faster (`where_faster=False`: everywhere).

        Why: at these sizes a step is mostly PyTorch's per-operation dispatch, which inductor's
        generated C++ removes, and ahead of time there is no torch.compile wrapper around the call
        (its guards over 30-odd input tensors and the sizes it passes one by one): the quickstart
        model's one-row step 0.9 ms eager, 0.34-0.45 under torch.compile, 0.23 here; 8 rows 2.3,
        1.6-1.7, 0.9-1.6 (dev/LOG.md, issue 14). The cost: ~20-35 s of compiling for the quickstart
        model and minutes for SmolLM2's 30 layers, once per model, precision and thread count.
        """
        import shutil
        import time

        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "no C++ compiler (g++/clang++) for inductor"
        start = time.perf_counter()
        # The thread count is baked into the generated loops: a program per count the engine sets.
        # The count is process-wide: while this runs beside the engine's worker, a step of the worker's
        # may run with the other count when the two differ (slower, never wrong).
        before = torch.get_num_threads()
        runners, why = {}, None
        try:
            for count in sorted(set(threads.values())):
                torch.set_num_threads(count)
                runners[count] = self._compiled_program(count, cache)
                for rows in (1, 2, 3):
                    if rows > self.max_batch:
                        break
                    # One scratch table for both: each step writes its row's k and v at `pos` before it
                    # reads them, so the second step sees what it would over a fresh table.
                    with torch.inference_mode():     # every tensor made so, as the engine's worker makes them
                        inputs = self._trial_inputs(rows)
                        want, got = self._decode_step(*inputs), runners[count](*inputs)
                    err = float((got - want).abs().max())
                    if err > _tolerance(self.dtype, want):
                        why = f"compiled step differs from the eager one by {err:.3g} at {rows} row(s)"
                        break
                if why:
                    break
        except Exception as e:                      # no headers, an export or inductor limit: serve eagerly
            why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        finally:
            torch.set_num_threads(before)
        if why:
            return why
        # Kept only where it is faster: at 8 rows SmolLM2's program took 145 ms a step against 123 eager.
        self._runners, speed, use = runners, [], {"small": True, "large": True}
        for size, rows in (("small", 1), ("large", min(8, self.max_batch))) if where_faster else ():
            torch.set_num_threads(threads[size])
            try:
                eager, compiled = self._trial_seconds(self._decode_step, rows), self._trial_seconds(runners[threads[size]], rows)
            finally:
                torch.set_num_threads(before)
            use[size] = compiled < eager
            speed.append(f"{rows} row(s) {1e3 * compiled:.2f} ms against {1e3 * eager:.2f} eager")
        if not any(use.values()):
            return f"the compiled step is no faster ({'; '.join(speed)})"
        self._use_compiled = use
        self._decode = self._compiled_step
        self.name = "slots, compiled" + ("" if all(use.values()) else f" for {'1-2' if use['small'] else '3+'} rows")
        log.info("embedded engine: decode step compiled in %.1f s (%s)", time.perf_counter() - start, "; ".join(speed))
        return None

    def _trial_seconds(self, decode, rows: int, steps: int = 5) -> float:
        """Median seconds of `decode` over scratch inputs (never the live rows: see `compile`)."""
        import statistics
        import time

        with torch.inference_mode():
            inputs = self._trial_inputs(rows)
            decode(*inputs)
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                decode(*inputs)
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    def _weights(self) -> list[torch.Tensor]:
        """Every tensor the step reads besides its inputs (what a compiled program embeds)."""
        out = [self.embed, self.lm_head, self.final_norm, self.cos, self.sin]
        for layer in self.layers:
            out += [w for w in vars(layer).values() if isinstance(w, torch.Tensor)]
        return out

    def _compiled_step(self, next_ids, pos, span_positions, kv) -> torch.Tensor:
        if not self._use_compiled["small" if len(next_ids) <= 2 else "large"]:
            return self._decode_step(next_ids, pos, span_positions, kv)
        runner = self._runners.get(torch.get_num_threads()) or next(iter(self._runners.values()))
        return runner(next_ids, pos, span_positions, kv)

    def _compiled_program(self, threads: int, cache: bool):
        """The AOTInductor program of `_decode_step` for this thread count: from the disk cache when
        one was compiled from this code for these very weights (their bytes are hashed: the program
        embeds them), else exported, compiled and, with `cache`, kept there."""
        import hashlib
        import os
        import tempfile
        from pathlib import Path

        from torch.export import Dim

        from hkllm.serve.aoti import load_program

        # bf16: inductor's freezing folds the weights into the program as constants and, on a CPU,
        # swaps each matmul for oneDNN's over a reordered copy (what `_onednn_packed` does eagerly):
        # without it the program's own bf16 matrix-vector loops made SmolLM2's step slower than eager
        # (82 ms against 47 at one row); with it 22-27 ms against 40-46. fp32 stays unfrozen: MKL's
        # packed fp32 matmuls made the quickstart model's step 0.3 -> 0.8 ms (dev/LOG.md, issue 14).
        freeze = self.dtype == torch.bfloat16
        path = None
        if cache:
            shape = (self.heads, self.kv_heads, self.head_dim, self.eps, self.scale, self.max_len, self.max_batch)
            h = hashlib.blake2b(f"{shape}|{self.dtype}|{threads}|{freeze}|{torch.__version__}".encode())
            h.update(Path(__file__).read_bytes())   # the step's code: an edited step is another program
            for t in self._weights():
                h.update(str((tuple(t.shape), t.stride())).encode())
                h.update(t.contiguous().view(torch.uint8).numpy())
            folder = Path(os.environ.get("HKLLM_CACHE_DIR") or Path.home() / ".cache" / "hkllm") / "aoti"
            path = folder / f"step-{h.hexdigest()[:24]}.pt2"
            if path.exists():
                try:
                    return load_program(path)
                except Exception as e:              # a damaged or foreign file: compile over it
                    log.warning("embedded engine: cached decode step %s unusable (%s); compiling again", path, e)
        rows, span = Dim("rows", min=1, max=self.max_batch), Dim("span", min=1, max=self.max_len)
        table_rows, table_len = Dim("table_rows", min=2, max=self.max_batch + 1), Dim("table_len", min=2, max=self.max_len + 1)
        # Under inference_mode, as the worker steps (no autograd anywhere): compiling runs the program.
        # Non-strict export patches math.pow process-wide while it traces (torch/_export/non_strict_utils.py):
        # a thread that first compiles numba kernels meanwhile fails (LocalEngine._compile).
        with torch.inference_mode(), torch._inductor.config.patch(freezing=freeze):
            program = torch.export.export(_Step(self), self._trial_inputs(3), dynamic_shapes=(
                {0: rows}, {0: rows}, {0: span}, {2: table_rows, 4: table_len}))
            if path is None:
                return load_program(torch._inductor.aoti_compile_and_package(program))
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".pt2")
            os.close(fd)
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=tmp)
                os.replace(tmp, path)               # whole or not at all: another server may be reading it
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return load_program(path)

    def _trial_inputs(self, rows: int) -> tuple:
        """A step's inputs over a scratch slot table, filled by an eager prefill of fixed prompts
        (rows at different lengths), never the live rows. Not random keys and values: over those the
        activations leave the range the weights were trained for, and bf16 rounding, however the sums
        are ordered, grows to logits several apart: SmolLM2's compiled and eager bf16 steps differed
        by 2.65 (and each from fp32 as much), which refused the program; over a prefilled table, 0.25."""
        scratch = copy.copy(self)        # the same weights, a slot table of its own
        scratch.reset()
        vocab = self.embed.shape[0]
        with torch.inference_mode():
            scratch.prefill([[(7919 * (i + 1) * (r + 3)) % vocab for i in range(9 + rows - r % 3)]
                             for r in range(rows)])
            scratch._reserve(rows + 1, scratch.longest + 2)      # as `step` does: a spare row and position
            ids = torch.tensor([(7 * r + 3) % vocab for r in range(rows)])
            return ids, scratch.lengths, self.positions[:scratch.longest + 1], scratch.kv

class _Step(torch.nn.Module):
    """`SlotDecoder._decode_step` as a module, which torch.export takes (the weights become constants)."""

    def __init__(self, decoder: SlotDecoder):
        super().__init__()
        # A copy without oneDNN's reordered weights: opaque tensors that export cannot trace (in bf16
        # the program's freezing reorders its own, `SlotDecoder._compiled_program`).
        self.decoder = copy.copy(decoder)
        self.decoder._packed = {}

    def forward(self, next_ids, pos, span_positions, kv):
        return self.decoder._decode_step(next_ids, pos, span_positions, kv)


def make_decoder(model, max_batch: int, pad_id: int, choice: str = "auto"):
    """SlotDecoder where it applies and agrees with transformers, else PaddedDecoder (logged).
    choice "transformers" forces PaddedDecoder."""
    if choice not in ("auto", "transformers"):
        raise ValueError(f"decoder must be 'auto' or 'transformers', not {choice!r}")
    why = slot_decoder_unfit(model) if choice == "auto" else "asked for"
    if why is None:
        decoder = SlotDecoder(model, max_batch)
        why = _disagreement(decoder, model)
        if why is None:
            return decoder
    log.info("embedded engine: transformers' forward pass (%s)", why)
    return PaddedDecoder(model, pad_id)


def _disagreement(decoder: SlotDecoder, model) -> str | None:
    """Compare a prefill and three steps with transformers' logits on a fixed prompt."""
    ids = [1 + (7 * i) % (model.config.vocab_size - 1) for i in range(12)]
    with torch.inference_mode():
        full = model(torch.tensor([ids]), use_cache=False).logits[0].float()
        got = [decoder.prefill([ids[:9]])[0]] + [decoder.step(torch.tensor([t]))[0] for t in ids[9:11]]
    decoder.reset()
    want = full[8:11]
    err = float((torch.stack(got) - want).abs().max())
    return None if err <= _tolerance(decoder.dtype, want) else f"written-out forward differs from transformers' by {err:.3g} on a test prompt"


def step_seconds(decoder, rows: int, steps: int = 9) -> float:
    """Median seconds of one decoding step over `rows` rows (the decoder is reset after)."""
    import statistics
    import time

    decoder.reset()
    times = []
    try:
        with torch.inference_mode():
            ids = decoder.prefill([[1] * 16] * rows).argmax(-1)
            ids = decoder.step(ids).argmax(-1)                       # warm-up
            spent = 0.0
            while len(times) < steps and (len(times) < 3 or spent < 1.0):  # a big model: 3 steps will do
                start = time.perf_counter()
                ids = decoder.step(ids).argmax(-1)
                times.append(time.perf_counter() - start)
                spent += times[-1]
    finally:
        decoder.reset()
    return statistics.median(times)


def _tolerance(dtype: torch.dtype, logits: torch.Tensor) -> float:
    """How far two computations of the same logits may differ: bf16 keeps ~3 significant digits, and
    the same sums in another order (fused by inductor, split differently) round differently."""
    return (1e-3 if dtype == torch.float32 else 0.1) * max(1.0, float(logits.abs().max()))


HEAVY_STEP_S = 0.02      # a step this long on one thread: that batch size may use every core


def calibrate_threads(decoder, cores: int, max_batch: int, steps: int = 9) -> dict:
    """torch threads for small batches (≤ 2 rows) and large ones, measured on this machine.

    A small model's step is mostly dispatch, which a second thread only slows down (and keeps
    spinning: twice the CPU per token); a large one's matmuls gain from every core. Which side of
    that line a model is on depends on the machine, so time a few steps with each setting. A light
    model leaves one core to the HTTP layer at every batch size: with every core in torch's pool, the
    event loop that streams tokens and the matmuls fight over the same cores (the quickstart model at
    32 streams: 1 thread gave ~1.5x the throughput of 2; at one stream, where the compiled step runs
    with the GIL released beside the HTTP thread, a start that chose 2 threads fell from ~1,750 to
    570 tok/s). A heavy model's steps (SmolLM2: ~50 ms on one thread) dwarf that loop's work, so it may
    take every core.
    """
    import statistics

    def per_step(threads: int, rows: int) -> float:
        torch.set_num_threads(threads)
        return step_seconds(decoder, rows, steps)

    def fewest(most: int, rows: int, heavy: bool, one: float) -> int:
        """The fewest threads within 10% of the fastest (a tie is noise, and an idle OpenMP thread
        still spins); within 3% for a heavy model, whose 10 ms or more a step saved is worth a core
        that sits idle otherwise (SmolLM2 at one row, 1 · 2 threads: ~50 · ~42 ms, which the 10% rule
        read as a tie on one start in two). The settings are timed in turn, three rounds, medians:
        this machine's speed drifts by tens of percent from one minute to the next, which timing
        one setting after the other read as a difference between them (it once gave a light model
        2 threads for one row: c=1 throughput 538 -> 328 tok/s). `one`: a one-thread step just timed,
        the first round's."""
        if most <= 1:
            return 1
        counts = list(range(1, most + 1))
        times = {t: [] for t in counts}
        for round_ in range(3):
            for t in counts:
                times[t].append(one if round_ == 0 and t == 1 else per_step(t, rows))
        median = {t: statistics.median(v) for t, v in times.items()}
        return next(t for t in counts if median[t] <= min(median.values()) / (0.97 if heavy else 0.9))

    def threads_for(rows: int) -> int:
        """A heavy step (one thread that long: compute dominates and the HTTP loop's share is small)
        may use every core, a light one all but the HTTP thread's."""
        one = per_step(1, rows)
        heavy = cores > 1 and one >= HEAVY_STEP_S
        return fewest(cores if heavy else max(1, cores - 1), rows, heavy, one)

    before = torch.get_num_threads()
    try:
        small, large = threads_for(1), threads_for(min(8, max_batch))
    finally:
        decoder.reset()
        torch.set_num_threads(before)
    return {"small": small, "large": large}
