"""Token Recycling: the successor table learns from the target's rows, and the method drafts from it.

Identity under greedy, the target's distribution under sampling and "actually drafts" are the
registry-driven tests of tests/test_engine.py. Here: the table's and the rank rates' bookkeeping on a
hand-made step, and drafting on a continuation that only the target's own predictions can supply.
"""
from __future__ import annotations

import pytest

from workbench.config import DecodeConfig, SamplingConfig
from workbench.engine import generate
from workbench.methods.base import DraftContext, DrafterEnv, StepFeedback, resolve_params
from workbench.methods.recycling import Recycling

from .helpers import FlatCosts


def test_table_learns_successors_from_the_targets_rows():
    env = DrafterEnv(target=None, draft=None, sampling=SamplingConfig(), generator=None)
    d = Recycling(env, **resolve_params("recycling", {"branches": 2, "sizing": "fixed"}))  # no model: no costs
    d.begin([1, 2, 3])  # the prompt's bigrams: 1 -> 2, 2 -> 3
    draft = d.propose(DraftContext(tokens=[1, 2, 3, 1], n_prompt=3, max_tokens=8, step=1))
    assert (draft.tokens, draft.parents) == ([2, 3], [-1, 0])  # 1 -> 2 -> 3, and 3 has no successor yet
    # the target's argmax rows: after the root 1 comes 2 (node 0 accepted), after 2 comes 4 (node 1 rejected),
    # after the rejected node 3 comes 5: every row is kept, the rejected one's included
    d.observe_target([2, 4, 5], draft)
    d.observe(StepFeedback(draft=draft, accepted=[0], committed=[2, 4], tokens=[1, 2, 3, 1, 2, 4]))
    assert d.table.get(1) == [2] and d.table.get(2) == [4, 3] and d.table.get(3) == [5]
    assert (d.tries[0], d.hits[0]) == (2, 1)  # two first candidates verified with their parent reached, one right
    # from 2: its newest guess 4 first, then 3 with 3's recycled successor 5 under it
    nxt = d.propose(DraftContext(tokens=[1, 2, 3, 1, 2, 4, 2], n_prompt=3, max_tokens=8, step=2))
    assert (nxt.tokens, nxt.parents) == ([4, 3, 5], [-1, -1, 1])


@pytest.fixture(scope="module")
def recycled_prompt(tiny):
    """[t] * 24 whose greedy continuation settles into at most two tokens, none of them t: what it repeats is
    nowhere in the prompt, so only the target's own predictions can fill the table with it."""
    for t in range(256):
        out = generate(tiny, "autoregressive", [t] * 24, decode=DecodeConfig(max_new_tokens=48, trace=False)).output_ids
        if len(out) == 48 and len(set(out[16:])) <= 2 and t not in out:  # 48: no early end of text
            return [t] * 24
    pytest.fail("the tiny model has no such continuation: the test needs one")


def test_drafts_what_the_target_predicted_and_takes_plain_steps_where_that_cannot_pay(tiny, recycled_prompt):
    decode = DecodeConfig(max_new_tokens=48)
    ref = generate(tiny, "autoregressive", recycled_prompt, decode=decode)
    flat = generate(tiny, "recycling", recycled_prompt, decode=decode, costs=FlatCosts())  # a GPU's shape
    assert flat.output_ids == ref.output_ids
    assert flat.summary.mean_accepted_tokens > 2.0, flat.summary.mean_accepted_tokens
    # every extra verified token costing a whole forward: no tree pays for itself, so sizing=cost drafts less
    steep = generate(tiny, "recycling", recycled_prompt, decode=decode, costs=FlatCosts(verify_x=1.0))
    assert steep.output_ids == ref.output_ids
    assert steep.summary.drafted_tokens < flat.summary.drafted_tokens
