"""Quality accounting: how far a run's output is from the target's own plain decoding of the same prompt.

A lossless method (token-identical to plain greedy decoding, the target's exact distribution under
sampling) costs no quality; a lossy one (relaxed acceptance, a cascade, a compressed KV cache, early
exit) trades some for speed. Every run is compared with its *baseline*: the target's plain decoding
(``autoregressive``) of the same prompt with the same sampling settings and token budget. Each measure
is defined once, here; the store, the benchmark reports, the CLI and the app read `Quality`.

Measures (docs/quality.md):

- prefix agreement = length of the common prefix of the two token sequences / the longer length;
- agreement (overall) = positions i where both have a token and output[i] == baseline[i], / the
  longer length. Both are 1.0 exactly when the outputs are identical (two empty outputs included);
- first divergence = the first position where the outputs differ (a shorter output that is a prefix of
  the longer diverges at its own length); None when identical;
- NLL = mean negative log-likelihood (nats per token) of the output under the full target at
  temperature 1, teacher-forced after the prompt; nll_gap = NLL(output) - NLL(baseline's output): below
  0 the output is more likely under the target than the baseline's own, above 0 less
  (workbench.accounting computes the NLLs);
- ROUGE-L = the F-measure (β = 1) of the longest common subsequence of the two texts' words
  (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"): P = LCS / output words,
  R = LCS / baseline words, F = 2PR / (P + R); 1.0 for two empty texts;
- task score = 1.0 or 0.0 from a suite item's checker against its reference answers (`score_task`),
  None when the item carries none.

Also here: `compare` (a run's Quality from both outputs and NLLs), the identity check a lossless run
under greedy decoding must pass (`identity_note`), and what views share: the lossless/LOSSY mark
(`lossy_badge`), a one-line description (`describe`), the measures a plot may use (`MEASURES`) and the
speed-quality Pareto front (`quality_value`, `pareto_front`).

Pure functions, no torch (the store and the app read these without loading a model).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .config import ConfigError

# What a suite item's "check" field may say (workbench.bench.suites):
#   exact:    the normalised output equals one of the answers
#   contains: one of the normalised answers appears in the normalised output, as whole words
#   number:   the first number in the output equals one of the answers (numerically)
TASK_CHECKS = ("exact", "contains", "number")

_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Quality:
    """One run's quality against its baseline (the module docstring defines each field)."""

    baseline_run: str | None  # the stored baseline run compared against (None: decoded for this measurement)
    tokens: int  # the output's length
    baseline_tokens: int
    prefix_agreement: float
    agreement: float
    first_divergence: int | None
    rouge_l: float
    nll: float | None = None  # nats per output token under the target (None: not measured)
    baseline_nll: float | None = None
    task_score: float | None = None  # 1.0 / 0.0 against a suite item's answers; None: the item has none
    task_check: str | None = None  # which checker scored it (TASK_CHECKS)
    accounting_s: float | None = None  # seconds the accounting took, after the decode (never in its wall time)

    @property
    def identical(self) -> bool:
        return self.first_divergence is None

    @property
    def nll_gap(self) -> float | None:
        if self.nll is None or self.baseline_nll is None:
            return None
        return self.nll - self.baseline_nll

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None), with nll_gap and identical written out for readers without this class."""
        d = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}
        d["nll_gap"] = self.nll_gap
        d["identical"] = self.identical
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Quality | None":
        """The Quality a `to_dict` wrote (None for None or an empty dict)."""
        if not d:
            return None
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


# ---------------------------------------------------------------------------- token measures

def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def first_divergence(output: Sequence[int], baseline: Sequence[int]) -> int | None:
    """The first position where the sequences differ (a prefix diverges at its own length); None if equal."""
    if list(output) == list(baseline):
        return None
    return common_prefix(output, baseline)


def prefix_agreement(output: Sequence[int], baseline: Sequence[int]) -> float:
    """Common prefix length / the longer length (1.0 for two empty sequences)."""
    longer = max(len(output), len(baseline))
    return common_prefix(output, baseline) / longer if longer else 1.0


def agreement(output: Sequence[int], baseline: Sequence[int]) -> float:
    """Positions holding the same token in both / the longer length (1.0 for two empty sequences)."""
    longer = max(len(output), len(baseline))
    return sum(x == y for x, y in zip(output, baseline)) / longer if longer else 1.0


# ---------------------------------------------------------------------------- ROUGE-L

def words(text: str) -> list[str]:
    """The lower-cased word tokens ROUGE-L compares (runs of letters, digits and underscores)."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row: O(len(a)·len(b)) time)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)  # row[j]: LCS of the prefix of a seen so far and b[:j]
    for x in a:
        diag = 0  # the previous row's value at j - 1
        for j, y in enumerate(b, 1):
            up = row[j]
            row[j] = diag + 1 if x == y else max(row[j - 1], up)
            diag = up
    return row[-1]


def rouge_l(output: Sequence[Any] | str, reference: Sequence[Any] | str) -> float:
    """ROUGE-L F-measure (β = 1) of `output` against `reference`; texts are split into `words` first.

    1.0 for two empty inputs, 0.0 when exactly one is empty.
    """
    out = words(output) if isinstance(output, str) else list(output)
    ref = words(reference) if isinstance(reference, str) else list(reference)
    if not out and not ref:
        return 1.0
    lcs = lcs_length(out, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(out), lcs / len(ref)
    return 2 * p * r / (p + r)


# ---------------------------------------------------------------------------- task scores

def normalise(text: str) -> str:
    """Lower case, words only, single spaces: what the exact and contains checks compare."""
    return " ".join(words(text))


def _number(text: str) -> float | None:
    m = _NUMBER.search(text)
    if m is None:
        return None
    try:
        return float(m.group().replace(",", ""))
    except ValueError:
        return None


def check_task(check: Any, answers: Any) -> tuple[str, tuple[str, ...]]:
    """A suite item's checker and answers, validated -> (check, answers); ConfigError with one line if bad."""
    if check not in TASK_CHECKS:
        raise ConfigError(f"'check' must be one of {', '.join(TASK_CHECKS)}, got {check!r}")
    if isinstance(answers, str):
        answers = [answers]
    if (not isinstance(answers, (list, tuple)) or not answers
            or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) and str(a).strip()
                       for a in answers)):
        raise ConfigError("'answer' must be a non-empty text or number, or a list of them")
    answers = tuple(str(a) for a in answers)
    if check == "number" and any(_number(a) is None for a in answers):
        raise ConfigError(f"a 'number' check needs numeric answers, got {list(answers)}")
    return check, answers


def score_task(output_text: str, check: str, answers: Sequence[str]) -> float:
    """1.0 when `output_text` passes `check` against any of `answers`, else 0.0 (see TASK_CHECKS)."""
    check, answers = check_task(check, list(answers))
    if check == "number":
        got = _number(output_text)
        return float(got is not None and any(math.isclose(got, _number(a), abs_tol=1e-9) for a in answers))
    out = normalise(output_text)
    if check == "exact":
        return float(any(out == normalise(a) for a in answers))
    padded = f" {out} "
    return float(any(normalise(a) and f" {normalise(a)} " in padded for a in answers))


# ---------------------------------------------------------------------------- one run

def compare(output_ids: Sequence[int], baseline_ids: Sequence[int], *, output_text: str = "",
            baseline_text: str = "", nll: float | None = None, baseline_nll: float | None = None,
            task: tuple[str, Sequence[str]] | None = None, baseline_run: str | None = None) -> Quality:
    """A run's Quality from its output and its baseline's (ids and texts) and, when measured, both NLLs.

    task: (check, answers) of the suite item the prompt came from, or None (no task score).
    """
    return Quality(
        baseline_run=baseline_run,
        tokens=len(output_ids),
        baseline_tokens=len(baseline_ids),
        prefix_agreement=prefix_agreement(output_ids, baseline_ids),
        agreement=agreement(output_ids, baseline_ids),
        first_divergence=first_divergence(output_ids, baseline_ids),
        rouge_l=rouge_l(output_text, baseline_text),
        nll=nll,
        baseline_nll=baseline_nll,
        task_score=score_task(output_text, *task) if task is not None else None,
        task_check=task[0] if task is not None else None,
    )


# ---------------------------------------------------------------------------- what views show

# A run's quality fields as table and CSV columns ("quality.<name>"), in this order.
QUALITY_COLUMNS = ("agreement", "prefix_agreement", "first_divergence", "rouge_l", "nll", "baseline_nll", "nll_gap",
                   "task_score", "task_check", "baseline_run")

# The measures a Pareto plot or a filter may use, with their labels; "higher is better" for all but nll_gap.
MEASURES = {
    "agreement": "token agreement",
    "prefix_agreement": "agreement to first divergence",
    "rouge_l": "ROUGE-L",
    "task_score": "task score",
    "nll_gap": "NLL gap (nats/token)",
}


def check_measure(name: Any) -> str:
    """A quality measure's name, checked (ConfigError naming the choices)."""
    if name not in MEASURES:
        raise ConfigError(f"unknown quality measure {name!r}; choose one of {', '.join(MEASURES)}")
    return name


def lossy_badge(lossy: Sequence[str]) -> str:
    """The mark a view puts next to a run: "lossless", or "LOSSY: <what made it so>"."""
    return "lossless" if not lossy else "LOSSY: " + "; ".join(lossy)


def identity_note(quality: Quality, *, lossless: bool, greedy: bool) -> dict[str, Any] | None:
    """The check a lossless run under greedy decoding must pass (agreement 1.0 with plain greedy decoding): None
    when it passes or does not apply, else a run note (workbench.trace.Trace.notes) saying where it failed."""
    if not lossless or not greedy or quality.identical:
        return None
    return {"kind": "not_identical", "first_divergence": quality.first_divergence,
            "text": f"this lossless run differs from the target's plain greedy decoding from token "
                    f"{quality.first_divergence} (agreement {quality.agreement:.3f}): a floating-point tie between "
                    f"the two most likely tokens, or a bug"}


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def describe(quality: dict[str, Any] | None) -> str:
    """A stored quality (Quality.to_dict()) as one line for the CLI and tables; "not measured" for None."""
    if not quality:
        return "not measured"
    div = quality.get("first_divergence")
    parts = [f"agreement {_num(quality.get('agreement'))}",
             f"to first divergence {_num(quality.get('prefix_agreement'))}",
             "identical" if div is None else f"first divergence at token {div}",
             f"ROUGE-L {_num(quality.get('rouge_l'))}"]
    gap = quality.get("nll_gap")
    if gap is not None:
        parts.append(f"NLL gap {gap:+.3f} nats/token "
                     f"(NLL {_num(quality.get('nll'))} vs {_num(quality.get('baseline_nll'))})")
    if quality.get("task_score") is not None:
        parts.append(f"task score {_num(quality.get('task_score'), 1)} ({quality.get('task_check')})")
    return " | ".join(parts)


# ---------------------------------------------------------------------------- the speed-quality picture

# Measures against the baseline, where a lossless run has the reference value by definition (its outputs are the
# target's own: token for token under greedy decoding, in distribution under sampling); the task score is absolute.
REFERENCE = {"agreement": 1.0, "prefix_agreement": 1.0, "rouge_l": 1.0, "nll_gap": 0.0}
LOWER_IS_BETTER = {"nll_gap"}


def quality_value(quality: dict[str, Any] | None, measure: str, lossless: bool) -> float:
    """A point's quality on `measure` for the speed-quality plot: REFERENCE's value for a lossless run, else the
    measured one (NaN when not measured)."""
    check_measure(measure)
    if lossless and measure in REFERENCE:
        return REFERENCE[measure]
    v = (quality or {}).get(measure)
    return math.nan if v is None else float(v)


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pareto_front(points: Sequence[dict[str, Any]], measure: str = "agreement") -> list[dict[str, Any]]:
    """The points ({"speed", "quality", ...}) no other point beats on both speed and quality (higher is better;
    lower for the NLL gap), ordered by speed. Points without a speed or a quality are left out."""
    sign = -1.0 if measure in LOWER_IS_BETTER else 1.0
    pts = [p for p in points if not _nan(p["speed"]) and not _nan(p["quality"])]
    front = []
    for p in pts:
        q = sign * p["quality"]
        beaten = any(o is not p and o["speed"] >= p["speed"] and sign * o["quality"] >= q
                     and (o["speed"] > p["speed"] or sign * o["quality"] > q) for o in pts)
        if not beaten:
            front.append(p)
    return sorted(front, key=lambda p: p["speed"])
