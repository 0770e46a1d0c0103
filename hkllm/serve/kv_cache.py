"""A KV cache that grows in place, for the embedded engine's decoding loop.

transformers' DynamicLayer appends each new token with torch.cat, copying the whole cache
every step: at batch 32 on the tiny model that copy was ~40% of a decoding step. This layer
keeps spare capacity (doubling when full) and writes new tokens into it, so a step copies
only the new token. `keys`/`values` are views of the filled part; assigning them (as the
engine does when rows join or leave the batch) replaces the storage; assign both at once
(`layer.keys, layer.values = k, v`), since the filled length is taken from `keys`.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowableLayer(DynamicLayer):
    _k = _v = None
    _n = 0            # filled length along the sequence axis

    @property
    def keys(self):
        return self._k[:, :, :self._n] if self._k is not None and self._k.dim() == 4 else self._k

    @keys.setter
    def keys(self, tensor):
        self._k = tensor
        self._n = tensor.shape[-2] if tensor is not None and tensor.dim() == 4 else 0

    @property
    def values(self):
        return self._v[:, :, :self._n] if self._v is not None and self._v.dim() == 4 else self._v

    @values.setter
    def values(self, tensor):
        self._v = tensor

    def adopt(self, keys, values, length: int) -> None:
        """Take over buffers whose first `length` positions are filled (the rest is spare)."""
        self._k, self._v, self._n = keys, values, length

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, add = self._n, key_states.shape[-2]
        if self._k.dim() != 4 or n + add > self._k.shape[-2]:
            b, h, _, d = key_states.shape
            capacity = max(64, 2 * (n + add))
            k, v = key_states.new_empty(b, h, capacity, d), value_states.new_empty(b, h, capacity, d)
            if n:
                k[:, :, :n], v[:, :, :n] = self._k[:, :, :n], self._v[:, :, :n]
            self._k, self._v = k, v
        self._k[:, :, n:n + add] = key_states
        self._v[:, :, n:n + add] = value_states
        self._n = n + add
        return self.keys, self.values


def stack_left_aligned(parts: list, width: int, spare: int) -> torch.Tensor:
    """Stack [batch, heads, length, dim] tensors along batch, each right-aligned in `width`
    positions (zeros on the left, which the attention mask hides), plus `spare` empty positions
    to grow into: one copy instead of a pad, a cat, and a re-allocation at the next token."""
    first = parts[0]
    out = first.new_zeros(sum(p.shape[0] for p in parts), first.shape[1], width + spare, first.shape[3])
    row = 0
    for p in parts:
        out[row:row + p.shape[0], :, width - p.shape[2]:width] = p
        row += p.shape[0]
    return out


def new_cache(config) -> DynamicCache:
    """A DynamicCache whose plain layers grow in place (sliding-window and other layer kinds,
    which have their own storage rules, are left as transformers made them)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowableLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
