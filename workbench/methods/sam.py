"""SAM-Decoding (Hu et al. 2024): draft from the longest suffix match in suffix automata.

Two automata (workbench.methods.suffix_automaton):
- dynamic: prompt + generated text, extended by O(1) amortised work per
  committed token. The longest suffix of the context that occurred before is
  the state link[last]; the draft copies what followed its first occurrence
  (periodically extended when the match overlaps the suffix itself).
- static (optional, `corpus`): "history" = the output tokens of earlier
  finished runs of the same target in the run store (the newest
  HISTORY_RUNS), or a path to a .txt / .jsonl file (one document per line
  for JSONL). The context's longest suffix in the corpus is tracked by
  matching statistics; the draft follows the most frequent continuation.

Per step one of the two matches drafts, when it is at least `min_match`
tokens long: the one whose source and match length have been accepted best
so far (the gate's learned value below; the longer one while nothing is
known). Otherwise nothing is drafted (a one-token match is
a coin toss, and a draft the target rejects costs a wider forward). With
`branches` = 2 the other source (or the corpus' second most frequent next
token) becomes a second branch of the root. Verification is the engine's, so
the method is lossless whatever it drafts.

With `cost_aware` (the default) the chain is cut to the length that pays on
this hardware: acceptance per draft position is learned for each source and
match length (1, 2, 3, 4, 5-7, 8-15, 16+ tokens), and weighed against the
target's measured cost of verifying that many tokens (model_free.DraftGate);
nothing is drafted when no length beats a plain step.

The engine's context only grows; a prefix check (GrowingText) notices if a
caller rewinds it and the dynamic automaton is rebuilt.
"""
from __future__ import annotations

import json
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..draft import Draft
from .base import DraftContext, Drafter, Param, StepFeedback, adaptive_length_param, cost_aware_param, register
from .model_free import DraftBudget, DraftGate, GrowingText, TrieDraft, match_bucket
from .suffix_automaton import Matcher, SuffixAutomaton, build_corpus

HISTORY_RUNS = 200  # newest finished runs of the same target read for corpus="history"
CORPUS_SUFFIXES = (".txt", ".md", ".jsonl", ".json")
MAX_CORPUS_BYTES = 8 * 2**20
JSON_TEXT_KEYS = ("text", "content", "output", "response", "completion", "answer", "turns")

# Built corpus automata, shared by runs in this process: (kind, key) -> automaton. Read-only once built.
_CORPORA: OrderedDict[tuple, SuffixAutomaton] = OrderedDict()
_CORPORA_MAX = 4
_CORPORA_LOCK = threading.Lock()


def _check_corpus(value: str) -> None:
    if value in ("none", "history"):
        return
    path = Path(value).expanduser()
    if path.suffix.lower() not in CORPUS_SUFFIXES:
        raise ConfigError(f"corpus must be 'none', 'history' or a {'/'.join(CORPUS_SUFFIXES)} file, got {value!r}")
    if not path.is_file():
        raise ConfigError(f"corpus file {value!r} does not exist")
    root = os.environ.get("WORKBENCH_CORPUS_DIR")
    if root and not path.resolve().is_relative_to(Path(root).expanduser().resolve()):
        raise ConfigError(f"corpus files must lie under $WORKBENCH_CORPUS_DIR ({root})")


@register
class SAMDecoding(Drafter):
    name = "sam"
    label = "SAM-Decoding (suffix automaton)"
    family = "Without a draft model"
    pays_when = ("the output repeats the prompt, itself, earlier runs of the target (corpus=history) or a "
                 "corpus file")
    description = ("Drafts the continuation of the longest suffix match of the text in a suffix automaton over "
                   "prompt + output, optionally also over earlier runs of this target or a text corpus. "
                   "No draft model. Lossless.")
    params = (
        Param("num_draft", "int", 12, "at most this many tokens drafted per step", 1, 64),
        Param("min_match", "int", 1, "draft only when the suffix match is at least this many tokens", 1, 64),
        Param("corpus", "str", "none", "extra text to match in: 'none', 'history' (earlier runs of this "
              "target in the run store) or a .txt/.jsonl file", check=_check_corpus),
        Param("branches", "int", 1, "1: a chain; 2: a small tree, also the other source's (or the corpus' "
              "second) continuation as a second branch", 1, 2),
        adaptive_length_param(),
        cost_aware_param("draft only as many tokens", per="match length"),
    )

    def begin(self, prompt_ids: list[int]) -> None:
        self.text = GrowingText()
        self.sam = SuffixAutomaton()
        self.corpus = self._load_corpus(self.params["corpus"])
        self.matcher = Matcher(self.corpus) if self.corpus is not None else None
        self.budget = DraftBudget(self.params["num_draft"], self.params["adaptive"])
        self.gate = DraftGate.for_run(self.env, self.params["num_draft"], self.params["cost_aware"],
                                      prior=lambda kind: kind[1] / (kind[1] + 1))  # a longer match, a safer copy
        self.kind: tuple[str, int] | None = None  # the gate's key of the pending draft
        self._sync(list(prompt_ids))

    # ---- keeping the automata in step with the context

    def _sync(self, tokens: list[int]) -> None:
        new = self.text.sync(tokens)
        if new is None:  # rewound (never by the engine): rebuild from scratch
            self.sam = SuffixAutomaton()
            if self.matcher is not None:
                self.matcher.reset()
            new = self.text.tokens
        for tok in new:
            self.sam.extend(tok)
            if self.matcher is not None:
                self.matcher.feed(tok)

    # ---- drafting

    def _candidates(self, k: int) -> list[tuple[int, list[int], str]]:
        """(match length, continuation, source) from each source, longest match first."""
        out = []
        n, end = self.sam.earlier_match()
        if n:
            out.append((n, self.sam.continuation(end, k), "context"))
        if self.matcher is not None and self.matcher.length:
            out.append((self.matcher.length, self.corpus.frequent_walk(self.matcher.state, k), "corpus"))
        out = [c for c in out if c[0] >= self.params["min_match"] and c[1]]
        out.sort(key=lambda c: -c[0])
        return out

    def propose(self, ctx: DraftContext) -> Draft | None:
        k = min(self.budget.cap, ctx.max_tokens)
        if k <= 0:
            return None
        self._sync(ctx.tokens)
        cands = self._candidates(k)
        if not cands:
            return None
        # the source whose kind of match has paid best so far (the longer match while nothing is known)
        order = sorted(cands, key=lambda c: -self.gate.best((c[2], match_bucket(c[0])), len(c[1]))[1])
        n, chain, source = order[0]
        self.kind = (source, match_bucket(n))
        k = self.gate.length(self.kind, len(chain))
        if k <= 0:
            return None
        trie = TrieDraft()
        trie.add_path(chain[:k])
        if self.params["branches"] > 1:
            second = order[1][1] if len(order) > 1 else None
            if second is None and self.matcher is not None and self.matcher.length >= self.params["min_match"]:
                ranked = self.corpus.ranked_next(self.matcher.state, 2)
                if len(ranked) > 1:  # the corpus' second most frequent next token, then its best walk
                    second = self.corpus.frequent_walk(self.matcher.state, max(1, k // 2), first=ranked[1][0])
            if second:
                trie.add_path(second[: max(1, k // 2)])
        return trie.draft()

    def observe(self, fb: StepFeedback) -> None:
        if fb.draft is not None:
            self.budget.update(max(fb.draft.depths), len(fb.accepted))
            self.gate.update(self.kind, max(fb.draft.depths), len(fb.accepted))

    # ---- the static corpus

    def _load_corpus(self, corpus: str) -> SuffixAutomaton | None:
        if corpus == "none":
            return None
        if corpus == "history":
            key, docs = self._history()
        else:
            path = Path(corpus).expanduser()
            stat = path.stat()
            key = ("file", str(path.resolve()), stat.st_mtime_ns, stat.st_size, self.env.target.spec)
            docs = None
        with _CORPORA_LOCK:
            if key in _CORPORA:
                _CORPORA.move_to_end(key)
                return _CORPORA[key]
        if docs is None:
            docs = _read_corpus_file(path, self.env.target.tokenizer)
        sam = build_corpus(docs) if docs else None
        if sam is not None:
            sam.counts()  # computed once, before the automaton is shared
            with _CORPORA_LOCK:
                _CORPORA[key] = sam
                while len(_CORPORA) > _CORPORA_MAX:
                    _CORPORA.popitem(last=False)
        return sam

    def _history(self) -> tuple[tuple, list[list[int]]]:
        """Output ids of the newest finished runs of this target, from the run history the caller handed in
        (DrafterEnv.history; empty when there is none or it cannot be read)."""
        spec = self.env.target.spec
        if self.env.history is None:
            warnings.warn("sam: no run history was given (a run outside the run store); drafting from the "
                          "context only", stacklevel=2)
            return ("history", spec, ()), []
        try:
            return self.env.history(spec, HISTORY_RUNS)
        except Exception as exc:  # noqa: BLE001 - the corpus is optional: draft from the context alone
            warnings.warn(f"sam: no history corpus ({type(exc).__name__}: {exc}); drafting from the context only",
                          stacklevel=2)
            return ("history", spec, ()), []


def _read_corpus_file(path: Path, tokenizer: Any) -> list[list[int]]:
    """Token ids of a .txt/.md file (one document) or a .jsonl/.json file (one document per line)."""
    with open(path, "rb") as f:
        raw = f.read(MAX_CORPUS_BYTES)
    text = raw.decode("utf-8", errors="replace")
    if path.suffix.lower() in (".jsonl", ".json"):
        texts = []
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                texts.extend(_json_texts(json.loads(line)))
            except ValueError:
                continue
    else:
        texts = [text]
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t.strip()]


def _json_texts(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list):
        return [s for item in obj for s in _json_texts(item)]
    if isinstance(obj, dict):
        keys = [k for k in JSON_TEXT_KEYS if k in obj] or list(obj)
        return [s for k in keys for s in _json_texts(obj[k])]
    return []
