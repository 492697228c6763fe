"""The user's prompts for an advice, and their split into probe and verification prompts.

Prompts come from a suite file (Spec-Bench's question.jsonl format, workbench.bench.suites), a
category of a suite (the built-in one by default), or text pasted in the app or given with --prompt:
pasted prompts are written once to a suite file of their own in the workbench cache
(advice/prompts-<hash>.jsonl, category "pasted"), so the benchmarks that run them, and the command
that reproduces the advice, name a file like any other suite.

The split is deterministic and by question, never by turn (a later turn's prompt holds the earlier
turns): within each category, in the suite's order, the 2nd, 4th, ... question is a *probe*
question and the 1st, 3rd, ... a *verification* question, so every category with two or more questions
is probed and verified, and verification gets the larger half. If that leaves no probe question (every
category has one), the questions alternate the same way over the whole suite. The probe measures on
the probe questions only; the verification benchmark runs on the others only (`split` checks that
they never overlap).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..bench.suites import Question, filter_questions, load_suite, suite_path
from ..paths import cache_dir
from .configs import AdviceError

PASTED = "pasted"
DEFAULT_SUITE = "builtin"
MAX_PASTED = 200  # prompts in one paste
MAX_PASTED_CHARS = 200_000  # characters in one paste (the file lands in the workbench cache)


@dataclass(frozen=True)
class PromptSet:
    """The questions an advice runs on: where they come from, and the split."""

    suite: str  # a built-in suite name or a file path (what the benchmarks read)
    categories: list[str] | None
    questions: list[Question]
    probe: list[Question]
    verify: list[Question]

    @property
    def probe_ids(self) -> list[str]:
        return [q.key for q in self.probe]

    @property
    def verify_ids(self) -> list[str]:
        return [q.key for q in self.verify]

    def to_dict(self) -> dict:
        return {"suite": self.suite, "categories": self.categories, "probe": self.probe_ids,
                "verify": self.verify_ids}


def pasted_suite(prompts: list[str]) -> str:
    """Write pasted prompts (one question each, category "pasted") to a suite file named by their content;
    returns its path."""
    texts = [p.strip() for p in prompts if p and p.strip()]
    if not texts:
        raise AdviceError("no prompt given: paste some prompts, or pick a suite or a category")
    if len(texts) > MAX_PASTED or sum(map(len, texts)) > MAX_PASTED_CHARS:
        raise AdviceError(f"at most {MAX_PASTED} pasted prompts of {MAX_PASTED_CHARS} characters in all, got "
                          f"{len(texts)} of {sum(map(len, texts))}")
    lines = [json.dumps({"question_id": i + 1, "category": PASTED, "turns": [t]}) for i, t in enumerate(texts)]
    body = "\n".join(lines) + "\n"
    path = cache_dir() / "advice" / f"prompts-{hashlib.sha256(body.encode()).hexdigest()[:12]}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(path)
    return str(path)


def prompt_set(suite: str | None = None, category: str | None = None, prompts: list[str] | None = None) -> PromptSet:
    """The questions of a suite (default: the built-in one), one of its categories, or pasted prompts, split."""
    if prompts:
        if suite or category:
            raise AdviceError("give pasted prompts, or a suite and/or a category, not both")
        suite = pasted_suite(prompts)
    suite = suite or DEFAULT_SUITE
    suite_path(suite)  # ConfigError for a missing file
    categories = [category] if category else None
    questions = filter_questions(load_suite(suite), categories)
    probe, verify = split(questions)
    return PromptSet(suite=suite, categories=categories, questions=questions, probe=probe, verify=verify)


def split(questions: list[Question]) -> tuple[list[Question], list[Question]]:
    """(probe, verification) questions: see the module docstring. AdviceError with fewer than two."""
    if len(questions) < 2:
        raise AdviceError(f"the advice needs at least two prompts (one to probe on, one to verify on), got "
                          f"{len(questions)}: add prompts, or pick a larger suite or category")
    seen: dict[str, int] = {}
    probe, verify = [], []
    for q in questions:
        i = seen.get(q.category, 0)
        seen[q.category] = i + 1
        (probe if i % 2 else verify).append(q)
    if not probe:  # every category has a single question: alternate over the suite
        probe = questions[1::2]
        verify = questions[0::2]
    assert not {q.key for q in probe} & {q.key for q in verify}, "probe and verification prompts overlap"
    return probe, verify


def keep_questions(prompts: PromptSet, keep: set[str]) -> PromptSet:
    """The same split with only the questions in `keep` (e.g. those that fit the context)."""
    probe = [q for q in prompts.probe if q.key in keep]
    verify = [q for q in prompts.verify if q.key in keep]
    if not probe or not verify:
        raise AdviceError("too few prompts fit the target's context to probe on some and verify on others: "
                          "shorten the prompts or give more")
    return PromptSet(prompts.suite, prompts.categories, [q for q in prompts.questions if q.key in keep], probe, verify)


def is_pasted(suite: str) -> bool:
    return Path(suite).parent == cache_dir() / "advice"
