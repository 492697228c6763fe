"""Sequoia keeps learning after it has chosen plain decoding, and re-plans when drafts start to pay."""
from __future__ import annotations

import workbench.methods.sequoia as sequoia
from workbench.config import DecodeConfig
from workbench.engine import generate

from .helpers import FlatCosts


def test_empty_plan_still_explores_and_updates_acceptance(tiny, tiny_bf16):
    res = generate(tiny, "sequoia", [72, 101, 108, 108, 111], draft=tiny_bf16,
                   params={"explore_every": 4, "replan_every": 4}, decode=DecodeConfig(max_new_tokens=40),
                   costs=FlatCosts(verify_x=50.0))  # any tree costs far more than it gives
    decode = [s for s in res.trace.steps if s.kind == "decode"]
    drafted = [s for s in decode if s.tokens]
    assert drafted, "never explored: the acceptance estimate could not learn"
    assert len(drafted) < len(decode)  # mostly plain decoding, as planned
    assert all(s.n_draft <= sequoia.EXPLORE_NODES for s in drafted)


def test_cheap_verification_plans_a_tree(tiny, tiny_bf16):
    res = generate(tiny, "sequoia", [72, 101, 108, 108, 111], draft=tiny_bf16, decode=DecodeConfig(max_new_tokens=24),
                   costs=FlatCosts(verify_x=0.0))  # a flat verify cost (a GPU)
    sizes = [s.n_draft for s in res.trace.steps if s.kind == "decode"]
    assert max(sizes) > sequoia.EXPLORE_NODES and res.summary.mean_accepted_tokens > 1
