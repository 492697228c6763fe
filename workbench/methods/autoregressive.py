"""Plain decoding: the target produces one token per forward pass (the baseline)."""
from __future__ import annotations

from ..config import BASELINE
from .base import Drafter, register


@register
class Autoregressive(Drafter):
    name = BASELINE
    label = "Plain decoding (autoregressive)"
    family = "Plain decoding"
    pays_when = ("no drafter gets enough tokens accepted to cover what drafting and the wider forward cost; it"
                 " is the baseline every speedup is measured against")
    description = "One target forward per token: greedy or sampling. The baseline every speedup is measured against."
