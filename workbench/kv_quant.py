"""A KV cache that stores keys and values as int8 or int4 integers (KIVI, Liu et al. 2024, "KIVI: A Tuning-Free
Asymmetric 2bit Quantization for KV Cache"), dequantised on read for the attention.

What is done, per layer (`QuantizedLayer`, a transformers DynamicLayer in the cache's `layers` list):
- **Asymmetric min-max quantisation** in groups: x ~ q * scale + zero with q in [0, 2^bits - 1], scale =
  (max - min) / (2^bits - 1) and zero = min of the group; the error of an element is at most scale / 2.
  int4 codes are packed two per byte (uint8). Scales and zero points are stored in the cache's dtype.
- **Keys per channel**: a group is `group` consecutive tokens of one channel (one head's dimension), as KIVI
  does (keys have outlier channels, so a channel shares a scale over time).
- **Values per token**: a group is `group` consecutive channels of one token within a head (the whole head_dim
  where `group` does not divide it), as KIVI does.
- **Full-precision residual**: the most recent rows stay in the model's dtype. Before each forward the rows
  already cached are committed (the engine has cropped or kept the last step's draft), and while more than
  `residual + group` of them sit in full precision, the oldest `group` are quantised (keys and values alike,
  so both stores cover rows [0, quantised)). The residual therefore holds between `residual` and
  `residual + group - 1` rows; KIVI keeps the values' residual a sliding window of exactly R and the keys' a
  batch of up to R, here both move in key-sized groups, which keeps the two stores aligned.
- The prompt's own forward (prefill) attends in full precision; its rows are quantised at the next forward.
- Every forward dequantises the stored rows into a transient tensor for the attention (no fused kernel);
  no float copy of the quantised rows is kept between forwards, so `nbytes` (integers + scales + zero
  points + residual) is what the cache holds.

Rollback (`truncate`, `keep_rows`): the engine only ever drops or reorders the current step's rows, which are
in the residual (they were appended after the flush). Below the quantised boundary both still work: the
groups from that row on are dequantised back into the residual (what the attention saw of them, not the
original floats) and then cut.

A forward verifying several drafted tokens has queries at several positions, and plain decoding would have
quantised a group before its later ones; the session (workbench.backend.quantized) sets `extra` for that
forward and `update` then also returns the quantised copy of the residual's first `extra` rows, which the
session's mask shows to those queries only.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


def quantise(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Groups along the last dim of x (..., n) -> codes uint8 (..., n) or, int4, (..., n / 2) packed two per
    byte; scale and zero (..., 1) in x's dtype. x ~ unpack(codes) * scale + zero."""
    top = 2 ** bits - 1
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)  # (..., 1)
    scale = ((hi - lo) / top).to(x.dtype)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: any scale, codes 0
    zero = lo.to(x.dtype)
    q = ((x.float() - zero.float()) / scale.float()).round_().clamp_(0, top).to(torch.uint8)  # (..., n)
    return (pack4(q) if bits == 4 else q), scale, zero


def dequantise(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of `quantise`: (..., n) in scale's dtype."""
    q = unpack4(codes) if bits == 4 else codes
    return q.to(scale.dtype) * scale + zero


def pack4(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], (..., n) with n even -> (..., n / 2): element 2i in the low nibble, 2i+1 high."""
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack4(p: torch.Tensor) -> torch.Tensor:
    """(..., m) packed bytes -> (..., 2m) codes in [0, 15]."""
    return torch.stack([p & 15, p >> 4], dim=-1).flatten(-2)


def _cat(a: torch.Tensor | None, b: torch.Tensor, dim: int) -> torch.Tensor:
    return b if a is None else torch.cat([a, b], dim=dim)


class QuantizedLayer(DynamicLayer):
    """One decoder layer's KIVI cache (module docstring). `keys`/`values` are the full-precision residual
    (B, heads, r, d); the quantised rows [0, quantised) live in
    k_codes (B, heads, quantised / group, d, group or group / 2), k_scale/k_zero (B, heads, quantised / group, d, 1),
    v_codes (B, heads, quantised, d / vg, vg or vg / 2), v_scale/v_zero (B, heads, quantised, d / vg, 1)."""

    def __init__(self, bits: int, group: int, residual: int) -> None:
        super().__init__()
        self.bits, self.group, self.residual = bits, group, residual
        self.quantised = 0
        self.extra = 0  # set by the session for one forward: residual rows also read quantised (module docstring)
        self.k_codes = self.k_scale = self.k_zero = None
        self.v_codes = self.v_scale = self.v_zero = None

    # ---- the transformers layer interface
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantise what left the window, append (B, heads, T, d) -> every row's keys/values, dequantised."""
        if not self.is_initialized or self.keys.dim() < 4:  # the first rows (lazy_initialization's are empty)
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states  # (B, heads, T, d)
            return self.keys, self.values
        self.flush()
        self.keys = torch.cat([self.keys, key_states], dim=-2)  # (B, heads, r + T, d)
        self.values = torch.cat([self.values, value_states], dim=-2)
        keys, values = [self.keys], [self.values]
        if self.extra:  # the quantised copy of the residual's first `extra` rows, read besides them
            x_k, x_v = self._decode(self._encode(self.keys[..., :self.extra, :], self.values[..., :self.extra, :]))
            keys.insert(0, x_k)
            values.insert(0, x_v)
        if self.quantised:
            old_k, old_v = self._dequantised()  # (B, heads, quantised, d)
            keys.insert(0, old_k)
            values.insert(0, old_v)
        # (B, heads, quantised + extra + r + T, d)
        return (torch.cat(keys, dim=-2), torch.cat(values, dim=-2)) if len(keys) > 1 else (self.keys, self.values)

    def get_seq_length(self) -> int:
        if not self.is_initialized or self.keys.dim() < 4:
            return 0
        return self.quantised + self.keys.shape[-2]

    def crop(self, tokens_to_remove: int) -> None:
        """transformers' convention: a negative count of rows to drop from the end."""
        if tokens_to_remove < 0:
            self.truncate(self.get_seq_length() + tokens_to_remove)

    def reset(self) -> None:
        super().reset()
        self.quantised = 0
        self.k_codes = self.k_scale = self.k_zero = self.v_codes = self.v_scale = self.v_zero = None

    # ---- rollback
    def truncate(self, length: int) -> None:
        """Keep the first `length` rows."""
        if length >= self.get_seq_length():
            return
        if length < self.quantised:
            self._unquantise_from(length)
        r = length - self.quantised
        self.keys = self.keys[..., :r, :].clone()  # a copy: a view would keep the dropped rows' storage
        self.values = self.values[..., :r, :].clone()

    def keep_rows(self, start: int, offsets: list[int]) -> None:
        """Keep rows [0, start) plus start + k for k in offsets, in that order."""
        if not self.get_seq_length():
            return
        if start < self.quantised:
            self._unquantise_from(start)
        r = start - self.quantised
        idx = torch.tensor([r + k for k in offsets], device=self.keys.device)
        self.keys = torch.cat([self.keys[..., :r, :], self.keys.index_select(-2, idx)], dim=-2)
        self.values = torch.cat([self.values[..., :r, :], self.values.index_select(-2, idx)], dim=-2)

    # ---- what it holds
    def nbytes(self) -> int:
        """Bytes of every stored tensor: integer codes, scales, zero points and the full-precision residual."""
        parts = (self.k_codes, self.k_scale, self.k_zero, self.v_codes, self.v_scale, self.v_zero, self.keys,
                 self.values)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def full_bytes(self) -> int:
        """Bytes the same rows take in the model's dtype, uncompressed."""
        if not self.get_seq_length():
            return 0
        B, H, _, d = self.keys.shape
        return 2 * B * H * d * self.get_seq_length() * self.keys.element_size()

    # ---- quantisation
    def _value_group(self, d: int) -> int:
        return self.group if d % self.group == 0 else d

    def _encode(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """m rows (B, H, m, d), m a multiple of group -> (k codes, k scale, k zero, v codes, v scale, v zero)."""
        B, H, m, d = k.shape
        k = k.reshape(B, H, m // self.group, self.group, d).transpose(-1, -2)  # (B, H, m / g, d, g)
        vg = self._value_group(d)
        v = v.reshape(B, H, m, d // vg, vg)  # (B, H, m, d / vg, vg)
        return (*quantise(k, self.bits), *quantise(v, self.bits))  # keys per channel, values per token

    def _decode(self, parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """`_encode`'s output -> keys and values (B, H, m, d)."""
        k = dequantise(*parts[:3], self.bits)  # (B, H, m / g, d, g)
        B, H, groups, d, _ = k.shape
        v = dequantise(*parts[3:], self.bits)  # (B, H, m, d / vg, vg)
        return k.transpose(-1, -2).reshape(B, H, groups * self.group, d), v.reshape(B, H, groups * self.group, d)

    def flush(self) -> None:
        """Quantise the oldest residual rows, whole groups, while more than residual + group are there."""
        if not self.get_seq_length():
            return
        r = self.keys.shape[-2]
        m = (r - self.residual) // self.group * self.group if r >= self.residual + self.group else 0
        if m <= 0:
            return
        parts = self._encode(self.keys[..., :m, :], self.values[..., :m, :])
        self.k_codes, self.k_scale, self.k_zero, self.v_codes, self.v_scale, self.v_zero = (
            _cat(old, new, 2) for old, new in zip(self._stored(), parts))
        self.keys = self.keys[..., m:, :].clone()  # (B, H, r - m, d); a copy frees the quantised rows' floats
        self.values = self.values[..., m:, :].clone()
        self.quantised += m

    def _stored(self) -> tuple[torch.Tensor | None, ...]:
        return self.k_codes, self.k_scale, self.k_zero, self.v_codes, self.v_scale, self.v_zero

    def _dequantised(self, first_group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of quantised rows [first_group * group, quantised), (B, heads, n, d)."""
        start = first_group * self.group
        k_parts = tuple(t[:, :, first_group:] for t in self._stored()[:3])
        v_parts = tuple(t[:, :, start:] for t in self._stored()[3:])
        return self._decode(k_parts + v_parts)

    def _unquantise_from(self, row: int) -> None:
        """Move the quantised groups holding rows >= `row` back into the residual, dequantised."""
        first = row // self.group
        start = first * self.group
        k, v = self._dequantised(first)
        self.keys = torch.cat([k.to(self.keys.dtype), self.keys], dim=-2)
        self.values = torch.cat([v.to(self.values.dtype), self.values], dim=-2)
        if start == 0:
            self.k_codes = self.k_scale = self.k_zero = self.v_codes = self.v_scale = self.v_zero = None
        else:
            stored = self._stored()
            self.k_codes, self.k_scale, self.k_zero = (t[:, :, :first].clone() for t in stored[:3])
            self.v_codes, self.v_scale, self.v_zero = (t[:, :, :start].clone() for t in stored[3:])
        self.quantised = start
