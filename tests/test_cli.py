"""The `workbench` command: runs, JSON output, run listing/export, and one-line errors."""
import csv
import json

import pytest

from store import RunStore
from workbench.cli import main


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_json_and_store(capsys, tmp_path):
    db = str(tmp_path / "cli.sqlite")
    code, out, err = _run(capsys, "--db", db, "run", "--method", "speculative", "--target", "tiny-random",
                          "--draft", "tiny-random:bf16", "--prompt", "Hello there", "--no-chat",
                          "--max-new-tokens", "12", "--param", "gamma=3", "--json")
    assert code == 0, err
    obj = json.loads(out)
    assert set(obj) >= {"run_id", "method", "output_text", "output_ids", "metrics"}
    assert set(obj["metrics"]) >= {"tokens_per_s", "mean_accepted_tokens", "target_forward_passes",
                                   "new_tokens", "wall_s", "ttft_s"}
    assert obj["metrics"]["new_tokens"] == len(obj["output_ids"]) == 12
    rec = RunStore(db).get_run(obj["run_id"])
    assert rec.status == "finished" and rec.method == "speculative" and rec.params["gamma"] == "3"
    assert len(RunStore(db).load_trace(rec.id).steps) == obj["metrics"]["target_forward_passes"]

    code, out, _ = _run(capsys, "--db", db, "run", "--method", "autoregressive", "--target", "tiny-random",
                        "--prompt", "Hello there", "--no-chat", "--max-new-tokens", "12", "--json")
    assert code == 0 and json.loads(out)["output_ids"] == obj["output_ids"]

    code, out, _ = _run(capsys, "--db", db, "runs", "list", "--json")
    assert code == 0 and len(json.loads(out)) == 2
    code, out, _ = _run(capsys, "--db", db, "runs", "list")
    assert code == 0 and "speculative" in out and "autoregressive" in out
    code, out, _ = _run(capsys, "--db", db, "runs", "show", obj["run_id"][:8], "--steps")
    assert code == 0 and "step    1 decode" in out
    assert "path acceptance α" in out and "drafted positions on the verified path accepted" in out
    assert "node acceptance" in out and "drafted tree nodes accepted" in out
    assert {"node_acceptance_rate", "path_positions", "accepted_draft_tokens", "drafted_tokens"} <= set(obj["metrics"])
    path = tmp_path / "runs.csv"
    code, _, err = _run(capsys, "--db", db, "runs", "export", "--csv", str(path))
    assert code == 0 and "wrote 2 runs" in err
    rows = list(csv.DictReader(path.open()))
    assert {r["method"] for r in rows} == {"speculative", "autoregressive"}
    assert {r["backend"] for r in rows} == {"eager"}  # each run's backend (and machine, env.*) in the export


def test_sam_history_reads_the_store_given_with_db(capsys, tmp_path):
    """corpus=history is the store the command logs to (--db), not the default one."""
    import os

    db = str(tmp_path / "other.sqlite")
    before = os.environ.get("WORKBENCH_DB")
    common = ("--target", "tiny-random", "--prompt", "Hello, world", "--no-chat", "--max-new-tokens", "64", "--json")
    code, out, err = _run(capsys, "--db", db, "run", "--method", "autoregressive", *common)
    assert code == 0, err
    first = json.loads(out)
    code, out, err = _run(capsys, "--db", db, "run", "--method", "sam", "--param", "corpus=history", *common)
    assert code == 0, err
    second = json.loads(out)
    assert second["output_ids"] == first["output_ids"]
    assert second["metrics"]["mean_accepted_tokens"] >= 3.0  # copied from the run just before, in `db`
    assert os.environ.get("WORKBENCH_DB") == before  # the command's store does not outlive it


def test_methods_lists_the_registry(capsys):
    code, out, _ = _run(capsys, "methods", "--json")
    names = {m["name"] for m in json.loads(out)}
    assert code == 0 and {"autoregressive", "speculative", "prompt_lookup"} <= names
    assert all(m["family"] and m["pays_when"] for m in json.loads(_run(capsys, "methods", "--json")[1]))
    code, out, _ = _run(capsys, "methods")
    assert "--param gamma=<int>" in out
    from workbench.methods import FAMILIES

    heads = [line[3:] for line in out.splitlines() if line.startswith("## ")]
    assert heads == list(FAMILIES)  # grouped by family, in order
    assert out.index("## Draft model, chain") < out.index("speculative ") < out.index("## Draft model, tree")
    assert out.count("Pays when ") == len(json.loads(_run(capsys, "methods", "--json")[1]))


BAD = [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "   "], "prompt is empty"),
    (["--method", "nope", "--prompt", "hi"], "unknown method 'nope'"),
    (["--method", "prompt_lookup", "--param", "colour=red", "--prompt", "hi"], "no parameter 'colour'"),
    (["--method", "prompt_lookup", "--param", "max_ngram=zero", "--prompt", "hi"], "expects int"),
    (["--method", "prompt_lookup", "--param", "novalue", "--prompt", "hi"], "key=value"),
    (["--max-new-tokens", "0", "--prompt", "hi"], "must be positive"),
    (["--max-new-tokens", "-5", "--prompt", "hi"], "must be positive"),
    (["--max-new-tokens", "10000000", "--prompt", "hi"], "more than the limit"),
    (["--max-new-tokens", "ten", "--prompt", "hi"], "invalid int value"),
    (["--method", "speculative", "--prompt", "hi"], "needs a draft model"),
    (["--target", "no-such-model-xyz", "--prompt", "hi"], "could not load model 'no-such-model-xyz'"),
    (["--method", "speculative", "--draft", "no-such-draft-xyz", "--prompt", "hi"], "no-such-draft-xyz"),
    (["--temperature", "-1", "--prompt", "hi"], "temperature"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_records_nothing_finished(capsys, tmp_path, args, message):
    db = str(tmp_path / "bad.sqlite")
    argv = ["--db", db, "run", "--target", "tiny-random", "--no-chat", *args]
    if "--target" in args:
        argv.remove("tiny-random")
        argv.remove("--target")
    code, out, err = _run(capsys, *argv)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert message in lines[0]
    assert "Traceback" not in err and out == ""
    assert [r for r in RunStore(db).list_runs() if r.status == "finished"] == []


@pytest.mark.real
def test_incompatible_draft_names_both_tokenizers(capsys, tmp_path):
    """One error line, also on a machine that has never converted the embedded model.

    The one-time conversion reports its progress on stderr too; those lines are
    progress, not errors, so the check is: exactly one `error:` line, last, no traceback.
    """
    code, _, err = _run(capsys, "--db", str(tmp_path / "x.sqlite"), "run", "--method", "speculative",
                        "--target", "tiny-random", "--draft", "smollm2-135m:bf16", "--prompt", "hi")
    lines = err.strip().splitlines()
    assert code == 2 and [ln for ln in lines if ln.startswith("error:")] == lines[-1:], err
    assert "Traceback" not in err
    assert "tiny-random" in err and "smollm2-135m" in err


def test_failed_run_keeps_partial_steps(tmp_path, monkeypatch):
    """A run that dies mid-way is stored as failed, with its error and the steps decoded so far."""
    import workbench.api as api
    import workbench.record as record
    from workbench.config import SamplingConfig

    store = RunStore(tmp_path / "fail.sqlite")
    calls = {"n": 0}

    def explode(step, trace):
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("device fell over")

    monkeypatch.setattr(record, "STEP_FLUSH_EVERY", 8)
    with pytest.raises(RuntimeError):
        api.run("autoregressive", "Hello", target="tiny-random", chat=False, max_new_tokens=40, store=store,
                sampling=SamplingConfig(), on_step=explode)
    (rec,) = store.list_runs()
    assert rec.status == "failed" and "device fell over" in rec.error
    steps = store.load_trace(rec.id).steps
    assert len(steps) == 20 and [s.index for s in steps] == list(range(20))
    assert rec.output_text  # what was decoded before the failure


@pytest.mark.real
def test_embedded_speculative_matches_plain(capsys, tmp_path):
    """The issue's acceptance check, on the embedded model."""
    db = str(tmp_path / "real.sqlite")
    prompt = "Write a short paragraph about why the sky is blue."
    outs = {}
    for method, extra in [("autoregressive", []), ("speculative", ["--draft", "smollm2-135m:bf16"])]:
        code, out, err = _run(capsys, "--db", db, "run", "--method", method, *extra, "--prompt", prompt,
                              "--max-new-tokens", "48", "--json")
        assert code == 0, err
        outs[method] = json.loads(out)
    assert outs["speculative"]["output_text"] == outs["autoregressive"]["output_text"]
    assert outs["speculative"]["metrics"]["mean_accepted_tokens"] > 2
