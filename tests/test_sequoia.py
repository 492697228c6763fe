"""Sequoia keeps learning after it has chosen plain decoding, and re-plans when drafts start to pay."""
from __future__ import annotations

import workbench.methods.sequoia as sequoia
from workbench.config import DecodeConfig
from workbench.engine import generate


def _costs(verify_x: float, draft_scale: float = 0.05):
    """Cost profiles: a target forward of n tokens costs 1 + verify_x * (n - 1); the draft draft_scale times that."""
    def profile(loaded, backend="eager", refresh=False):
        scale = draft_scale if "bf16" in loaded.spec else 1.0
        return {n: scale * (1.0 + verify_x * (n - 1)) for n in sequoia.PROFILE_SIZES}
    return profile


def test_empty_plan_still_explores_and_updates_acceptance(tiny, tiny_bf16, monkeypatch):
    monkeypatch.setattr(sequoia, "cost_profile", _costs(verify_x=50.0))  # any tree costs far more than it gives
    res = generate(tiny, "sequoia", [72, 101, 108, 108, 111], draft=tiny_bf16,
                   params={"explore_every": 4, "replan_every": 4}, decode=DecodeConfig(max_new_tokens=40))
    decode = [s for s in res.trace.steps if s.kind == "decode"]
    drafted = [s for s in decode if s.tokens]
    assert drafted, "never explored: the acceptance estimate could not learn"
    assert len(drafted) < len(decode)  # mostly plain decoding, as planned
    assert all(s.n_draft <= sequoia.EXPLORE_NODES for s in drafted)


def test_cheap_verification_plans_a_tree(tiny, tiny_bf16, monkeypatch):
    monkeypatch.setattr(sequoia, "cost_profile", _costs(verify_x=0.0))  # a flat verify cost (a GPU)
    res = generate(tiny, "sequoia", [72, 101, 108, 108, 111], draft=tiny_bf16, decode=DecodeConfig(max_new_tokens=24))
    sizes = [s.n_draft for s in res.trace.steps if s.kind == "decode"]
    assert max(sizes) > sequoia.EXPLORE_NODES and res.summary.mean_accepted_tokens > 1
