"""Plain decoding: the target produces one token per forward pass (the baseline)."""
from __future__ import annotations

from .base import Drafter, register


@register
class Autoregressive(Drafter):
    name = "autoregressive"
    label = "Plain decoding (autoregressive)"
    description = "One target forward per token: greedy or sampling. The baseline every speedup is measured against."
