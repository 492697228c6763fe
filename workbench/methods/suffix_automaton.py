"""Suffix automata over token ids, for drafting by the longest suffix match (SAM-Decoding, Hu et al. 2024).

A suffix automaton (Blumer et al. 1985) of a text T is the smallest DFA that
accepts every substring of T. Each state is a set of substrings sharing their
end positions (endpos); `length[v]` is the longest of them, `link[v]` the state
of the longest suffix with a larger endpos set, `first[v]` the smallest end
position (firstpos). `extend(token)` appends one token in O(1) amortised time.

Two uses here:
- the *dynamic* automaton of prompt + generated text: the longest suffix of T
  that also ends earlier in T is the state link[last] (its strings occur at
  least twice), so the draft is what followed its first occurrence, O(1) per
  step with no search;
- a *static* automaton of a corpus (documents separated by a negative token):
  `Matcher` keeps the longest suffix of the growing text that occurs in the
  corpus (matching statistics, O(1) amortised per appended token), and
  `frequent_walk` drafts the most frequent continuation of that match from the
  occurrence counts |endpos|.
"""
from __future__ import annotations

SEPARATOR = -1  # between corpus documents; never a token id, so no match crosses it


class SuffixAutomaton:
    def __init__(self, tokens: list[int] | None = None) -> None:
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.first: list[int] = [-1]  # end position of the first occurrence
        self.is_clone: list[bool] = [False]
        self.text: list[int] = []
        self.last = 0
        self._count: list[int] | None = None  # |endpos| per state, computed on demand (static use)
        for tok in tokens or ():
            self.extend(tok)

    def __len__(self) -> int:
        return len(self.text)

    def _new_state(self, length: int, first: int, clone: bool) -> int:
        self.next.append({})
        self.link.append(-1)
        self.length.append(length)
        self.first.append(first)
        self.is_clone.append(clone)
        return len(self.length) - 1

    def extend(self, tok: int) -> None:
        """Append one token (the classic online construction)."""
        pos = len(self.text)
        self.text.append(tok)
        self._count = None
        cur = self._new_state(self.length[self.last] + 1, pos, False)
        p = self.last
        while p != -1 and tok not in self.next[p]:
            self.next[p][tok] = cur
            p = self.link[p]
        if p == -1:
            self.link[cur] = 0
        else:
            q = self.next[p][tok]
            if self.length[p] + 1 == self.length[q]:
                self.link[cur] = q
            else:  # split q: the clone takes q's shorter strings (their endpos also gains pos)
                clone = self._new_state(self.length[p] + 1, self.first[q], True)
                self.next[clone] = dict(self.next[q])
                self.link[clone] = self.link[q]
                while p != -1 and self.next[p].get(tok) == q:
                    self.next[p][tok] = clone
                    p = self.link[p]
                self.link[q] = self.link[cur] = clone
        self.last = cur

    def earlier_match(self) -> tuple[int, int]:
        """(length, end) of the longest suffix of the text that also ends before the last position.

        `end` is the end position of its first occurrence, so text[end + 1] is what
        followed it; (0, -1) when even the last token is new.
        """
        v = self.link[self.last] if self.text else 0
        if v <= 0:
            return 0, -1
        return self.length[v], self.first[v]

    def continuation(self, end: int, k: int) -> list[int]:
        """k tokens after position `end`, extended periodically past the end of the text.

        text + out is treated as one text, so a match that overlaps the current
        suffix (a repeating pattern) keeps repeating instead of stopping early.
        """
        n = len(self.text)
        out: list[int] = []
        for j in range(k):
            i = end + 1 + j
            tok = self.text[i] if i < n else out[i - n]
            if tok < 0:
                break
            out.append(tok)
        return out

    # ---- static use: occurrence counts and the most frequent continuation

    def counts(self) -> list[int]:
        """|endpos| per state: 1 for each non-clone state, summed up the suffix-link tree."""
        if self._count is None:
            cnt = [0 if c else 1 for c in self.is_clone]
            cnt[0] = 0
            for v in sorted(range(1, len(cnt)), key=self.length.__getitem__, reverse=True):
                cnt[self.link[v]] += cnt[v]
            self._count = cnt
        return self._count

    def ranked_next(self, v: int, k: int) -> list[tuple[int, int]]:
        """Up to k (token, occurrences) continuing state v, most frequent first (separators excluded)."""
        cnt = self.counts()
        opts = [(cnt[s], tok) for tok, s in self.next[v].items() if tok >= 0]
        opts.sort(reverse=True)
        return [(tok, c) for c, tok in opts[:k]]

    def frequent_walk(self, v: int, k: int, first: int | None = None) -> list[int]:
        """Greedy walk of at most k tokens from state v by the most frequent transition.

        `first`, when given, is forced as the first token (for a second branch).
        """
        cnt = self.counts()
        out: list[int] = []
        while len(out) < k:
            if first is not None and not out:
                tok = first
            else:
                best = max(((cnt[s], t) for t, s in self.next[v].items() if t >= 0), default=None)
                if best is None:
                    break
                tok = best[1]
            s = self.next[v].get(tok)
            if s is None:
                break
            out.append(tok)
            v = s
        return out


class Matcher:
    """The longest suffix of a growing text that occurs in a fixed automaton (matching statistics)."""

    def __init__(self, sam: SuffixAutomaton) -> None:
        self.sam = sam
        self.state = 0
        self.length = 0

    def reset(self) -> None:
        self.state, self.length = 0, 0

    def feed(self, tok: int) -> None:
        sam = self.sam
        v, n = self.state, self.length
        while v > 0 and tok not in sam.next[v]:
            v = sam.link[v]
            n = sam.length[v]
        if tok in sam.next[v]:
            self.state, self.length = sam.next[v][tok], n + 1
        else:
            self.state, self.length = 0, 0


def build_corpus(documents: list[list[int]]) -> SuffixAutomaton:
    """One automaton over documents joined by SEPARATOR (a match never spans two documents)."""
    sam = SuffixAutomaton()
    for doc in documents:
        if not doc:
            continue
        if sam.text:
            sam.extend(SEPARATOR)
        for tok in doc:
            sam.extend(tok)
    return sam
