"""Block drafters (blockwise, dflash): a whole block in one forward, accepted whole when it is right, trained
from the CLI, refused with one clear error for bad parameters. (Token identity and the sampling distribution
are the registry-wide tests' in test_engine.py, which run both methods.)"""
from __future__ import annotations

import json

import pytest
import torch

from workbench.config import ConfigError, DecodeConfig
from workbench.engine import generate
from workbench.heads import HeadError, load_head
from workbench.heads.block import DFlashHead
from workbench.methods.block import Blockwise, DFlash

from .helpers import DEVICE, PROMPTS


@pytest.mark.heads
@pytest.mark.parametrize("method", [Blockwise, DFlash], ids=lambda m: m.name)
def test_a_right_block_is_accepted_whole_from_one_forward(method, tiny, monkeypatch):
    """A head whose block is the target's own continuation (its logits replaced by that continuation's one-hot):
    every step drafts the whole block in one head forward, the verifier accepts all of it plus a bonus token."""
    prompt, n = PROMPTS[0], 40
    ref = generate(tiny, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=n)).output_ids
    calls = []

    def oracle(self, ctx, k):
        calls.append(k)
        done = len(ctx.tokens) - len(prompt)  # tokens committed so far; the root is ref[done - 1]
        rows = torch.full((k, tiny.vocab_size), -1e4, device=tiny.device)
        rows[torch.arange(k), torch.tensor(ref[done:done + k], device=tiny.device)] = 1e4
        return rows

    monkeypatch.setattr(method, "block_logits", oracle)
    out = generate(tiny, method.name, prompt, params={"trim": False, "block": 3}, decode=DecodeConfig(max_new_tokens=n))
    assert out.output_ids == ref
    decode = [s for s in out.trace.steps if s.kind == "decode"]
    full = [s for s in decode if s.n_draft == 3]
    assert len(full) >= 8 and all(s.n_accepted == 3 and s.draft_forwards == 1 for s in full)
    assert len(calls) == len([s for s in decode if s.n_draft])  # one head call per drafted block
    assert out.summary.mean_accepted_tokens > 3.5  # 4 per full step (3 + bonus); the last steps are shorter


@pytest.mark.heads
def test_block_params_fail_with_one_clear_error(tiny):
    with pytest.raises(ConfigError, match="block=9 is more than the head drafts"):
        generate(tiny, "dflash", PROMPTS[0], params={"block": 9}, decode=DecodeConfig(max_new_tokens=4))
    with pytest.raises(ConfigError, match="'block' must be >= 0"):
        generate(tiny, "blockwise", PROMPTS[0], params={"block": -1}, decode=DecodeConfig(max_new_tokens=4))
    with pytest.raises(HeadError, match="is a dflash head, not medusa"):
        generate(tiny, "blockwise", PROMPTS[0], params={"head": "tiny-random-dflash"},
                 decode=DecodeConfig(max_new_tokens=4))


@pytest.mark.heads
def test_dflash_head_is_non_causal_over_its_block(tiny):
    """Every mask slot sees every other one and the context; a padded context slot is seen by none."""
    head, _ = load_head("", tiny, "dflash")
    assert isinstance(head, DFlashHead) and head.fused
    torch.manual_seed(0)
    H, C = head.config["hidden_size"], head.context
    ctx, root = torch.randn(1, C, H, device=DEVICE), torch.randn(1, H, device=DEVICE)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from the target's copy, so every path carries signal
        base = head(ctx, root)  # (1, k, H)
        later = head(ctx, root, block=head.block - 1)  # one mask slot fewer changes the earlier slots too
        assert not torch.allclose(base[:, :-1], later, atol=1e-5)
        moved = ctx.clone()
        moved[:, 0] += 1.0
        valid = torch.arange(C, device=DEVICE)[None] > 0
        assert torch.allclose(head(ctx, root, valid), head(moved, root, valid), atol=1e-5)  # slot 0 hidden
        assert not torch.allclose(head(ctx, root), head(moved, root), atol=1e-5)


@pytest.mark.heads
def test_dflash_trains_from_the_command_line(tmp_path, capsys):
    from store import RunStore
    from workbench.cli import main

    out, db = tmp_path / "cli-dflash", tmp_path / "runs.sqlite"
    assert main(["--db", str(db), "train", "--kind", "dflash", "--target", "tiny-random", "--samples", "6",
                 "--max-new-tokens", "16", "--steps", "3", "--heads", "3", "--layers", "1", "--out", str(out),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "dflash" and card["config"]["block"] == 3 and card["config"]["layers"] == 1
    assert card["config"]["feature_layers"] and card["training"]["command"].startswith("workbench train --kind dflash")
    assert len(res["accuracy"]["top1"]) == 3 and res["accuracy"]["serving"]["tau"] >= 1.0
    rec = RunStore(db).get_training(res["training_id"])
    assert rec["kind"] == "dflash" and rec["status"] == "finished" and "pos1_loss" in rec["curves"]
