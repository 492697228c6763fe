"""PARD (a parallel draft model): its cache keeps the committed tokens only and gives what a fresh forward gives, its
training forward sees exactly what drafting feeds, a right block is accepted whole from one draft forward, it trains
from the CLI (from the target or from a distilled draft), and bad parameters give one clear error. (Token identity
and the sampling distribution are the registry-wide tests' in test_engine.py, which run it with conftest's tiny draft.)"""
from __future__ import annotations

import json

import pytest
import torch

from workbench.config import ConfigError, DecodeConfig
from workbench.engine import generate
from workbench.heads import HeadError, load_head
from workbench.heads.pard import PardCache, PardHead
from workbench.methods.pard import Pard
from workbench.train_config import TrainConfig
from workbench.train_pard import extended_forward

from .helpers import DEVICE, PROMPTS


def _perturbed(tiny) -> PardHead:
    head, _ = load_head("", tiny, "pard")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.05 * torch.randn_like(p))  # every path carries signal
    return head


@pytest.mark.heads
def test_cache_keeps_committed_tokens_only_and_matches_a_fresh_forward(tiny):
    """Drafting step by step (a rejected tail dropped, new tokens fed) gives the states a fresh cache gives for the
    same context; the masks' keys/values are never kept."""
    head, embed = _perturbed(tiny), tiny.model.get_input_embeddings()
    k, ctx = head.block, PROMPTS[2][:20]
    cache = PardCache(head, embed)
    cache.block(ctx, k)
    assert cache.tokens == ctx and all(kv[0].shape[2] == len(ctx) for kv in cache.past)
    later = ctx[:15] + [7, 8, 9, 10]  # the last five "rejected", four others committed
    got = cache.block(later, k)
    assert cache.tokens == later and all(kv[0].shape[2] == len(later) for kv in cache.past)
    fresh = PardCache(head, embed).block(later, k)  # (k, H)
    assert torch.allclose(got, fresh, atol=1e-5)
    assert torch.allclose(cache.block(later, k), fresh, atol=1e-5)  # nothing new: the root fed again


@pytest.mark.heads
def test_training_forward_sees_what_drafting_feeds(tiny):
    """Each mask slot of the training forward (anchor p, level j) gives the state drafting computes at block position
    j after the context x_1..x_p; the real tokens give the ordinary causal states."""
    head, embed = _perturbed(tiny), tiny.model.get_input_embeddings()
    k = head.block
    seqs = [PROMPTS[2][:30], PROMPTS[0]]
    T = max(map(len, seqs))
    tok = torch.zeros(2, T, dtype=torch.long, device=DEVICE)
    for r, s in enumerate(seqs):
        tok[r, :len(s)] = torch.tensor(s)
    lens = torch.tensor([len(s) for s in seqs], device=DEVICE)
    slots = [[(5, j) for j in range(1, k)] + [(20, 1)], [(3, 1), (9, 1), (9, 2)]]  # k >= 3
    with torch.no_grad():
        out, anchor, level, used = extended_forward(head, embed, tok, lens, slots)
    for r, s in enumerate(seqs):
        for i, (p, j) in enumerate(slots[r]):
            want = PardCache(head, embed).block(s[:p + 1], k)[j]
            assert torch.allclose(out[r, T + i], want, atol=1e-4), (r, p, j)
        whole = PardCache(head, embed).block(s, 1)  # k = 1: the root alone, no mask
        assert torch.allclose(out[r, len(s) - 1], whole[0], atol=1e-4)
    assert not used[1, T + len(slots[1]):].any()


@pytest.mark.heads
def test_a_right_block_is_accepted_whole_from_one_forward(tiny, monkeypatch):
    """The draft runs (its cache follows the committed tokens) but its block is replaced by the target's own
    continuation: every step drafts the whole block in one draft forward, and all of it is accepted plus a bonus."""
    prompt, n = PROMPTS[0], 40
    ref = generate(tiny, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=n)).output_ids
    real, calls = Pard.block_logits, []

    def oracle(self, ctx, k):
        rows = real(self, ctx, k)  # (k, rows): the draft's own forward, for its cache
        calls.append((k, list(self.cache.tokens) == list(ctx.tokens)))
        done = len(ctx.tokens) - len(prompt)
        right = torch.full_like(rows, -1e4)
        right[torch.arange(k), torch.tensor(ref[done:done + k], device=rows.device)] = 1e4
        return right

    monkeypatch.setattr(Pard, "block_logits", oracle)
    out = generate(tiny, "pard", prompt, params={"trim": False, "block": 3}, decode=DecodeConfig(max_new_tokens=n))
    assert out.output_ids == ref
    decode = [s for s in out.trace.steps if s.kind == "decode"]
    full = [s for s in decode if s.n_draft == 3]
    assert len(full) >= 8 and all(s.n_accepted == 3 and s.draft_forwards == 1 for s in full)
    assert len(calls) == len([s for s in decode if s.n_draft]) and all(ok for _, ok in calls)
    assert out.summary.mean_accepted_tokens > 3.5


@pytest.mark.heads
def test_bad_parameters_fail_with_one_clear_error(tiny):
    with pytest.raises(ConfigError, match="block=9 is more than the head drafts"):
        generate(tiny, "pard", PROMPTS[0], params={"block": 9}, decode=DecodeConfig(max_new_tokens=4))
    with pytest.raises(ConfigError, match="'block' must be >= 0"):
        generate(tiny, "pard", PROMPTS[0], params={"block": -1}, decode=DecodeConfig(max_new_tokens=4))
    with pytest.raises(HeadError, match="is a medusa head, not pard"):
        generate(tiny, "pard", PROMPTS[0], params={"head": "tiny-random-medusa"}, decode=DecodeConfig(max_new_tokens=4))
    with pytest.raises(ConfigError, match="--from .* is for --kind pard"):
        TrainConfig(kind="dflash", init_from="somewhere")


@pytest.mark.heads
def test_pard_trains_from_the_command_line_from_a_distilled_draft(tmp_path, capsys):
    from store import RunStore
    from workbench.cli import main

    draft, out, db = tmp_path / "draft", tmp_path / "cli-pard", tmp_path / "runs.sqlite"
    common = ["--target", "tiny-random", "--samples", "6", "--max-new-tokens", "16", "--steps", "3", "--layers", "1"]
    assert main(["--db", str(db), "train", "--kind", "draft", *common, "--out", str(draft), "--no-log"]) == 0
    capsys.readouterr()
    assert main(["--db", str(db), "train", "--kind", "pard", *common, "--block", "3", "--from", str(draft),
                 "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "pard" and card["config"]["block"] == 3 and card["config"]["layers"] == 1
    assert card["config"]["init_from"] == "draft" and card["training"]["command"].startswith("workbench train --kind pard")
    assert "--init-from" in card["training"]["command"]
    assert len(res["accuracy"]["top1"]) == 3 and res["accuracy"]["serving"]["tau"] >= 1.0
    rec = RunStore(db).get_training(res["training_id"])
    assert rec["kind"] == "pard" and rec["status"] == "finished" and "pos2_kl" in rec["curves"]
    assert main(["--db", str(db), "train", "--kind", "pard", *common, "--from", str(tmp_path / "none"),
                 "--out", str(tmp_path / "x"), "--no-log"]) == 2
    assert "no such draft model directory" in capsys.readouterr().err
