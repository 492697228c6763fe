"""Trained drafter heads: the hidden states the engine hands them, their cards, training, trimming, distilled drafts.

The registry-driven tests (test_engine, test_properties, test_real_model) already run eagle,
medusa and hydra for greedy identity, the sampling distribution and "actually drafts" with
the tiny heads conftest trains; this file checks what those cannot see.
"""
import json

import pytest
import torch

from workbench.config import DecodeConfig
from workbench.engine import generate
from workbench.heads import HeadError, list_heads, load_head
from workbench.methods.heads import Eagle
from workbench.train import TrainConfig, read_prompts, train

from .helpers import BACKEND_PARAMS, DEVICE, PROMPTS


def test_every_head_kind_has_its_module():
    """The kinds the CLI, the trainer and the store accept are the kinds a head module exists for."""
    from workbench.config import HEAD_KINDS, TRAINING_KINDS
    from workbench.heads.modules import HEAD_CLASSES

    assert sorted(HEAD_CLASSES) == sorted(HEAD_KINDS) and set(HEAD_KINDS) < set(TRAINING_KINDS)


@pytest.mark.heads
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_hidden_states_are_the_targets_own(tiny, backend, monkeypatch):
    """Every committed position's states reach the drafter once, equal to a fresh forward's: the final hidden
    state, then (a head with fused features, as the tiny eagle head is) the feature layers' outputs."""
    from workbench.kv_cache import feature_layers

    seen: dict[int, torch.Tensor] = {}
    original = Eagle.observe

    def record(self, fb):
        k = fb.hidden.shape[0]
        start = len(fb.tokens) - 1 - k
        for j in range(k):
            assert start + j not in seen, "a position's state was handed over twice"
            seen[start + j] = fb.hidden[j].clone()
        final[:] = fb.tokens
        original(self, fb)

    final: list[int] = []
    monkeypatch.setattr(Eagle, "observe", record)
    out = generate(tiny, "eagle", PROMPTS[2], decode=DecodeConfig(max_new_tokens=40), backend=backend)
    assert out.summary.mean_accepted_tokens > 1.0  # steps accepted several tokens, so rows were picked from trees
    assert sorted(seen) == list(range(len(final) - 1))  # every committed token but the root
    with torch.inference_mode():
        ref = tiny.model.get_decoder()(input_ids=torch.tensor([final], device=tiny.device), output_hidden_states=True)
    layers = [ref.last_hidden_state[0]] + [ref.hidden_states[i][0] for i in feature_layers(tiny.model.config)]
    got = torch.stack([seen[i] for i in range(len(final) - 1)])
    assert got.shape[1] == len(layers) * tiny.model.config.hidden_size  # the tiny eagle head fuses features
    torch.testing.assert_close(got, torch.cat(layers, -1)[:-1], rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_serving_reads_the_features_training_read(tiny, tiny_heads):
    """The fused EAGLE head's prediction at the root after prefill (serving: the engine's states through
    `committed`) is the training path's prediction at that pair (extract_features -> _batch -> the fused
    input), so a head drafts from the very features it was trained on."""
    from workbench.heads.modules import EagleHead
    from workbench.methods.heads import EagleState
    from workbench.train import _Bar, _batch, _shifted, extract_features

    roots: list[torch.Tensor] = []
    original = EagleState.commit

    def record(self, hidden, tokens):
        original(self, hidden, tokens)
        roots.append(self.root_feature.clone())

    prompt = PROMPTS[-1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EagleState, "commit", record)
        out = generate(tiny, "eagle", prompt, decode=DecodeConfig(max_new_tokens=2))
    head, card = load_head("", tiny, "eagle")
    assert isinstance(head, EagleHead) and head.fused and "--fuse" in card["training"]["command"]
    data = extract_features(tiny, [{"prompt_ids": prompt, "response_ids": out.output_ids[:1]}],
                            _Bar("features", 1, None, True), layers=True)
    b = _batch(data, [0], tiny.device)
    feats = head.committed(torch.cat([b["f"], b["g"]], -1).to(head.fc.weight.dtype))
    T = b["f"].shape[1]
    pred, _ = head(feats, tiny.model.get_input_embeddings()(_shifted(b["tok"], 1)),
                   torch.arange(1, T + 1, device=tiny.device)[None])
    # training keeps its features in fp16: equal up to that rounding (a wrong layer or order is off by O(1))
    torch.testing.assert_close(roots[0], pred[0, len(prompt) - 1], rtol=2e-2, atol=2e-3)


def test_a_head_without_fused_features_reads_the_final_states_alone(tiny, tmp_path):
    """Without `--fuse` (and every head saved before fused features): the card has no feature layers, the
    engine hands the final hidden states alone, and the head drafts losslessly; a card whose feature layers
    are not the target's is refused."""
    seen: list[int] = []
    head = tmp_path / "plain"
    train(_tiny_config(tmp_path, kind="eagle", out=str(head), fuse=False), quiet=True)
    card = json.loads((head / "card.json").read_text())
    assert "feature_layers" not in card["config"] and "fuse" not in card["training"]["command"]
    original = Eagle.observe

    def record(self, fb):
        seen.append(fb.hidden.shape[1])
        original(self, fb)

    ref = generate(tiny, "autoregressive", PROMPTS[1], decode=DecodeConfig(max_new_tokens=20))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Eagle, "observe", record)
        out = generate(tiny, "eagle", PROMPTS[1], params={"head": str(head)}, decode=DecodeConfig(max_new_tokens=20))
    assert out.output_ids == ref.output_ids
    assert set(seen) == {tiny.model.config.hidden_size}
    fused = json.loads((tmp_path / "plain" / "card.json").read_text())
    fused["config"]["feature_layers"] = [1, 99]
    (head / "card.json").write_text(json.dumps(fused))
    with pytest.raises(HeadError, match=r"fuses the target's layers \[1, 99\]"):
        load_head(str(head), tiny, "eagle")


@pytest.mark.heads
def test_a_head_for_another_target_is_refused(tiny_other):
    with pytest.raises(HeadError, match="trained for target"):
        load_head("tiny-random-eagle", tiny_other, "eagle")


def test_missing_head_says_how_to_train_one(tiny, tiny_heads, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HEADS", str(tmp_path))
    with pytest.raises(HeadError, match="workbench train --kind medusa"):
        generate(tiny, "medusa", PROMPTS[0], decode=DecodeConfig(max_new_tokens=4))
    with pytest.raises(HeadError, match="medusa head, not eagle"):
        load_head(str(tiny_heads / "tiny-random-medusa"), tiny, "eagle")
    with pytest.raises(HeadError, match="does not exist"):
        load_head(str(tmp_path / "nowhere" / "x"), tiny, "eagle")


def test_list_heads_shows_the_trained_ones(tiny_heads):
    rows = {r["name"]: r for r in list_heads()}
    for kind in ("eagle", "medusa", "hydra"):
        row = rows[f"tiny-random-{kind}"]
        assert row["kind"] == kind and row["target"] == "tiny-random" and row["where"] == "user"
        assert row["top1"] and all(0.0 <= a <= 1.0 for a in row["top1"])


def _tiny_config(tmp_path, **kw):
    base = dict(target="tiny-random", samples=8, max_new_tokens=16, steps=6, device=DEVICE, store=False,
                evaluate_prompts=0, checkpoint_every=3)
    base.update(kw)
    return TrainConfig(**base)


def test_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import workbench.train as tr

    cfg = _tiny_config(tmp_path, kind="medusa", out=str(tmp_path / "m"))
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def flaky_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    ckpt = torch.load(tmp_path / "m" / "training" / "checkpoint.pt")
    assert ckpt["step"] == 3  # the last checkpoint before the interruption
    generated = tr.generate_responses
    monkeypatch.setattr(tr, "generate_responses", lambda *a, **k: pytest.fail("resume regenerated the data"))
    res = train(TrainConfig(**{**cfg.__dict__, "resume": True}), quiet=True)
    monkeypatch.setattr(tr, "generate_responses", generated)
    assert [s for s, _ in res_curves(tmp_path / "m")] == list(range(1, 7))
    assert res.accuracy["top1"] and (tmp_path / "m" / "head.safetensors").exists()


def res_curves(out):
    return torch.load(out / "training" / "checkpoint.pt")["curves"]["loss"]


def test_training_is_recorded_in_the_store(tmp_path):
    from store import RunStore

    db = tmp_path / "runs.sqlite"
    cfg = _tiny_config(tmp_path, kind="hydra", out=str(tmp_path / "h"), store=True, evaluate_prompts=1)
    res = train(cfg, quiet=True, db=str(db))
    rec = RunStore(str(db)).get_training(res.training_id)
    assert rec["status"] == "finished" and rec["kind"] == "hydra" and rec["target"] == "tiny-random"
    assert rec["data"]["responses"] == 8 and rec["data"]["heldout_responses"] >= 1
    assert [s for s, _ in rec["curves"]["loss"]] == list(range(1, 7))
    assert len(rec["accuracy"]["top1"]) == 4 and rec["accuracy"]["serving"]["prompts"] == 1
    assert rec["timings"]["train_s"] > 0 and rec["env"]["torch"]


def test_the_target_writes_its_own_prompts(tiny, tmp_path, monkeypatch):
    """--self-prompts: n distinct instructions the target wrote (continuing its template's user turn), each
    answered once on top of the prompt set's samples, in the record and the card's command; resumed, not
    written again."""
    from types import SimpleNamespace

    import workbench.train as tr
    from store import RunStore
    from workbench.config import ConfigError

    db, out = tmp_path / "runs.sqlite", tmp_path / "own"
    cfg = _tiny_config(tmp_path, kind="medusa", out=str(out), samples=6, self_prompts=5, gen_batch=4, store=True)
    res = train(cfg, quiet=True, db=str(db))
    own = json.loads((out / "training" / "self_prompts.json").read_text())
    assert len(own) == 5 and len({" ".join(p.lower().split()) for p in own}) == 5 and all(p.strip() for p in own)
    answers = json.loads((out / "training" / "self_samples.json").read_text())
    assert [a["prompt_ids"] for a in answers] == [tiny.encode_prompt(p) for p in own]
    rec = RunStore(str(db)).get_training(res.training_id)
    assert rec["data"]["responses"] == 11 and rec["data"]["self_prompts"] == 5
    assert "--self-prompts 5" in res.card["training"]["command"]
    monkeypatch.setattr(tr, "write_prompts", lambda *a, **k: pytest.fail("resume wrote the prompts again"))
    monkeypatch.setattr(tr, "generate_responses", lambda *a, **k: pytest.fail("resume regenerated the data"))
    train(TrainConfig(**{**cfg.__dict__, "resume": True, "store": False}), quiet=True)
    # fewer prompt-set samples: the answers move up, and their features are extracted again for their new places
    fewer = train(TrainConfig(**{**cfg.__dict__, "resume": True, "store": False, "samples": 4, "steps": 7}),
                  quiet=True)
    monkeypatch.undo()
    samples = json.loads((out / "training" / "samples.json").read_text())[:4] + answers
    features = torch.load(out / "training" / "features.pt")
    assert "features_s" in fewer.timings
    assert [d["tokens"].tolist() for d in features] == [s["prompt_ids"] + s["response_ids"] for s in samples]
    with pytest.raises(ConfigError, match="no chat template"):
        tr.write_prompts(SimpleNamespace(has_chat_template=False, spec="plain-lm"), 3, 2, 0, None)


def test_vocabulary_trimming_proposes_only_kept_tokens_and_stays_lossless(tiny, tmp_path):
    out = tmp_path / "trim"
    train(_tiny_config(tmp_path, kind="eagle", out=str(out), vocab_trim=40), quiet=True)
    head, card = load_head(str(out), tiny, "eagle")
    kept = set(head.vocab.tolist())
    assert len(kept) == 40 and card["vocab_trim"] == 40
    for prompt in PROMPTS:
        ref = generate(tiny, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=24))
        got = generate(tiny, "eagle", prompt, params={"head": str(out)}, decode=DecodeConfig(max_new_tokens=24))
        assert got.output_ids == ref.output_ids
        assert all(t in kept for st in got.trace.steps for t in st.tokens)


def test_a_distilled_draft_is_an_ordinary_draft_model(tiny, tmp_path):
    from workbench.models import load_model

    out = tmp_path / "draft"
    res = train(_tiny_config(tmp_path, kind="draft", out=str(out), layers=1), quiet=True)
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "draft" and card["layers"] == 1 and res.accuracy["top1"]
    draft = load_model(str(out), device=DEVICE)
    assert draft.model.config.num_hidden_layers == 1
    for prompt in PROMPTS:
        ref = generate(tiny, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=24))
        got = generate(tiny, "speculative", prompt, draft=draft, decode=DecodeConfig(max_new_tokens=24))
        assert got.output_ids == ref.output_ids


@pytest.mark.heads
def test_train_and_heads_from_the_command_line(tmp_path, capsys):
    from workbench.cli import main

    out = tmp_path / "cli-medusa"
    assert main(["train", "--kind", "medusa", "--target", "tiny-random", "--samples", "6", "--max-new-tokens", "12",
                 "--steps", "3", "--out", str(out), "--no-log", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["out_dir"] == str(out) and len(res["accuracy"]["top1"]) == 4
    assert main(["train", "--kind", "medusa", "--steps", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    assert main(["heads", "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert {"tiny-random-eagle", "tiny-random-medusa", "tiny-random-hydra"} <= names


@torch.no_grad()
def test_eagle_training_unrolls_as_drafting_does(tiny):
    """Draft position j of the unrolled training is what drafting computes j steps after a root: the head
    run over the teacher-forced pairs up to t, then on its own predictions, one pair at a time."""
    from workbench.heads import make_head
    from workbench.train import eagle_unroll

    torch.manual_seed(0)
    head = make_head("eagle", tiny.model).float().to(DEVICE)
    for p in head.parameters():  # away from the identity-like start, so a misplaced pair shows
        p.add_(0.05 * torch.randn_like(p))
    embed = tiny.model.get_input_embeddings()
    T = 9
    feats = torch.randn(1, T, tiny.model.config.hidden_size, device=DEVICE)
    tok = torch.randint(3, 50, (1, T), device=DEVICE)
    preds = eagle_unroll(head, feats, tok, embed, 3)
    checked = 0
    for t in (0, 3, 5):  # root x_{t+1}; pair i = (f_i, x_{i+1}) at position i + 1
        x, (k, v) = head(feats[:, :t + 1], embed(tok[:, 1:t + 2]), torch.arange(1, t + 2, device=DEVICE)[None])
        x = x[:, -1:]
        assert torch.allclose(x[0, 0], preds[0][0, t], atol=1e-5)
        for j in (2, 3):
            seen = torch.ones(1, 1, k.shape[2] + 1, dtype=torch.bool, device=DEVICE)
            x, (k2, v2) = head(x, embed(tok[:, t + j:t + j + 1]), torch.tensor([[t + j]], device=DEVICE),
                               mask=seen, past=(k, v))
            k, v = torch.cat([k, k2], dim=2), torch.cat([v, v2], dim=2)
            assert torch.allclose(x[0, 0], preds[j - 1][0, t], atol=1e-5), (t, j)
            checked += 1
    assert checked == 6


def test_bad_training_settings_are_refused(tmp_path):
    from workbench.config import ConfigError

    with pytest.raises(ConfigError, match="unknown training kind"):
        TrainConfig(kind="lasso")
    with pytest.raises(ConfigError, match="holdout"):
        TrainConfig(kind="eagle", holdout=0.9)
    with pytest.raises(ConfigError, match="unroll"):
        TrainConfig(kind="eagle", unroll=9)
    with pytest.raises(ConfigError, match="self_prompts"):
        TrainConfig(kind="eagle", self_prompts=-1)
    p = tmp_path / "p.jsonl"
    p.write_text('{"other": 1}\n')
    with pytest.raises(ConfigError, match="needs a 'prompt'"):
        read_prompts(p)


def test_trim_off_proposes_from_the_whole_vocabulary(tiny, tmp_path):
    out = tmp_path / "trim-off"
    train(_tiny_config(tmp_path, kind="medusa", out=str(out), vocab_trim=40), quiet=True)
    kept = set(load_head(str(out), tiny, "medusa")[0].vocab.tolist())
    proposed = set()
    for prompt in PROMPTS:
        ref = generate(tiny, "autoregressive", prompt, decode=DecodeConfig(max_new_tokens=24))
        got = generate(tiny, "medusa", prompt, params={"head": str(out), "trim": False},
                       decode=DecodeConfig(max_new_tokens=24))
        assert got.output_ids == ref.output_ids
        proposed |= {t for st in got.trace.steps for t in st.tokens}
    assert proposed - kept  # tokens outside the trimmed vocabulary were proposed
