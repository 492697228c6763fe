"""Prompt suites in Spec-Bench's question.jsonl format, and the prompts a benchmark decodes.

A suite file has one JSON object a line: ``question_id``, ``category``, ``turns``
(a list of user turns; more than one means a multi-turn conversation) and
optional extra fields (Spec-Bench's ``reference``), which are kept but unused. An item may carry a
task checker: ``check`` (one of workbench.quality.TASK_CHECKS: exact, contains, number) and
``answer`` (the accepted answers); a run of it then gets a task score (workbench.quality).

``builtin`` is the small suite shipped with the workbench
(workbench/suites/builtin.jsonl): three prompts in each Spec-Bench category, the speed suite.
``tasks`` (workbench/suites/tasks.jsonl) holds short items with checkable answers (categories
task_extraction, task_arithmetic, task_qa), kept apart so that the speed suite's categories, its
reports and the advisor's probe/verification split of it mean what they did.
Any other value is read as a path, e.g. the public Spec-Bench set
(hemingkx/Spec-Bench, data/spec_bench/question.jsonl).

Spec-Bench files label their multi-turn questions with MT-bench's eight
sub-categories (writing, roleplay, ...); Spec-Bench reports them together as
"multi-turn conversation", so they are grouped under ``mt_bench`` here and the
original label is kept as ``subcategory``. ``--categories`` accepts either.

A multi-turn question becomes one prompt per turn. Turn k's prompt is the
conversation so far: the user turns, each followed by the baseline's (plain
greedy) answer, then user turn k; the chat template is applied by the model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..quality import check_task

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
BUILTIN_SUITES = {"builtin": SUITES_DIR / "builtin.jsonl", "tasks": SUITES_DIR / "tasks.jsonl"}
CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
MT_BENCH_SUBCATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


@dataclass(frozen=True)
class Question:
    question_id: Any  # int in Spec-Bench; any JSON scalar is accepted
    category: str  # Spec-Bench category (MT-bench's sub-categories grouped as "mt_bench")
    turns: tuple[str, ...]
    subcategory: str = ""  # the file's own label when it was regrouped
    check: str | None = None  # a task checker (workbench.quality.TASK_CHECKS), or None
    answers: tuple[str, ...] = ()  # the answers the checker accepts

    @property
    def key(self) -> str:
        return str(self.question_id)

    @property
    def task(self) -> tuple[str, tuple[str, ...]] | None:
        """(check, answers) for workbench.quality.score_task, or None when the item has no checker."""
        return (self.check, self.answers) if self.check else None


@dataclass
class PromptUnit:
    """One prompt a benchmark decodes: turn `turn` (0-based) of a question."""

    question: Question
    turn: int
    history: list[str] = field(default_factory=list)  # assistant answers to turns 0..turn-1 (from the baseline)

    @property
    def key(self) -> str:
        return f"{self.question.key}.{self.turn + 1}"

    @property
    def category(self) -> str:
        return self.question.category

    def messages(self) -> list[dict[str, str]]:
        """The chat so far: user turns with the baseline's answers, ending with this turn's user message."""
        if len(self.history) < self.turn:
            raise RuntimeError(f"prompt {self.key}: the answers to the earlier turns are not known yet")
        out: list[dict[str, str]] = []
        for k in range(self.turn):
            out.append({"role": "user", "content": self.question.turns[k]})
            out.append({"role": "assistant", "content": self.history[k]})
        out.append({"role": "user", "content": self.question.turns[self.turn]})
        return out


def suite_path(suite: str) -> Path:
    """The file of a built-in suite name, or `suite` as a path."""
    if not isinstance(suite, str) or not suite.strip():
        raise ConfigError(f"a suite is a built-in name ({', '.join(BUILTIN_SUITES)}) or a file path, got {suite!r}")
    if suite in BUILTIN_SUITES:
        return BUILTIN_SUITES[suite]
    path = Path(suite).expanduser()
    if not path.is_file():
        known = ", ".join(BUILTIN_SUITES)
        raise ConfigError(f"no suite '{suite}': not a built-in suite ({known}) and not a file")
    return path


def load_suite(suite: str) -> list[Question]:
    """Read a suite (built-in name or path to a question.jsonl-format file)."""
    path = suite_path(suite)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is not part of line 1
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read suite file {path}: {' '.join(str(exc).split())}") from None
    return parse_suite(text, path.name)


def parse_suite(text: str, name: str = "suite") -> list[Question]:
    """The questions of a suite file's text; a bad line is a ConfigError naming `name:line`."""
    questions: list[Question] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        q = _parse_line(line, f"{name}:{lineno}")
        if q.key in seen:
            raise ConfigError(f"{name}:{lineno}: question_id {q.question_id!r} appears twice")
        seen.add(q.key)
        questions.append(q)
    if not questions:
        raise ConfigError(f"suite file {name} has no questions")
    return questions


def _parse_line(line: str, where: str) -> Question:
    try:
        obj = json.loads(line)
    except RecursionError:
        raise ConfigError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, or a number too long to convert
        raise ConfigError(f"{where}: not valid JSON ({getattr(exc, 'msg', None) or exc})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object with question_id, category, turns")
    missing = [k for k in ("question_id", "category", "turns") if k not in obj]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
    qid = obj["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or (isinstance(qid, str) and not qid.strip()):
        raise ConfigError(f"{where}: 'question_id' must be an integer or a non-empty string")
    if isinstance(qid, int) and qid.bit_length() > 63:
        raise ConfigError(f"{where}: 'question_id' is too large")
    turns = obj["turns"]
    if (not isinstance(turns, list) or not turns
            or not all(isinstance(t, str) and t.strip() for t in turns)):
        raise ConfigError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
    if not isinstance(obj["category"], str) or not obj["category"].strip():
        raise ConfigError(f"{where}: 'category' must be a non-empty string")
    category = obj["category"].strip()
    sub = ""
    if category in MT_BENCH_SUBCATEGORIES:
        category, sub = "mt_bench", category
    check, answers = None, ()
    if "check" in obj or "answer" in obj:
        try:
            check, answers = check_task(obj.get("check"), obj.get("answer"))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return Question(question_id=qid, category=category, turns=tuple(turns), subcategory=sub, check=check,
                    answers=answers)


def filter_questions(questions: list[Question], categories: list[str] | None = None,
                     limit: int | None = None, question_ids: list[str] | None = None) -> list[Question]:
    """Keep the given questions (ids as text) and categories (or MT-bench sub-categories), then the first
    `limit` questions of each category."""
    if question_ids is not None:
        wanted_ids = {str(q) for q in question_ids}
        unknown_ids = sorted(wanted_ids - {q.key for q in questions})
        if unknown_ids:
            raise ConfigError(f"no question with id {', '.join(unknown_ids[:5])} in this suite")
        questions = [q for q in questions if q.key in wanted_ids]
    if categories:
        known = {q.category for q in questions} | {q.subcategory for q in questions if q.subcategory}
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise ConfigError(f"no question in category {', '.join(unknown)}; "
                              f"this suite has: {', '.join(categories_of(questions))}")
        wanted = set(categories)
        questions = [q for q in questions if q.category in wanted or q.subcategory in wanted]
    if limit is not None:
        if limit <= 0:
            raise ConfigError(f"--limit must be positive, got {limit}")
        counts: dict[str, int] = {}
        kept = []
        for q in questions:
            if counts.get(q.category, 0) < limit:
                counts[q.category] = counts.get(q.category, 0) + 1
                kept.append(q)
        questions = kept
    return questions


def categories_of(questions: list[Question]) -> list[str]:
    """Categories in Spec-Bench's order, then any others in order of appearance."""
    present = list(dict.fromkeys(q.category for q in questions))
    return [c for c in CATEGORIES if c in present] + [c for c in present if c not in CATEGORIES]


def prompt_units(questions: list[Question]) -> list[PromptUnit]:
    """One prompt per (question, turn), turns of a question in order.

    The turns of one question share one `history` list, which the runner fills
    with the baseline's answers as it decodes them.
    """
    units: list[PromptUnit] = []
    for q in questions:
        history: list[str] = []
        units.extend(PromptUnit(q, t, history) for t in range(len(q.turns)))
    return units
