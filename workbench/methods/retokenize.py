"""Carrying text between two vocabularies: every token as the exact UTF-8 bytes it stands for.

Drafting across tokenizers (workbench.methods.cross_vocab) turns one model's
tokens into text and the text into the other model's tokens. Going through
Python strings loses information whenever a context holds an incomplete UTF-8
character (a byte-level model half-way through an emoji, a random model's
bytes): decoding turns it into U+FFFD and re-encoding gives other tokens. So a
`Vocab` maps each token id to its bytes, once, from the tokenizer's own pieces:

    byte-level BPE (GPT-2, SmolLM2, tiny-random)  piece characters -> bytes (GPT-2's byte table)
    SentencePiece style (Llama, Gemma)            "▁" -> space, byte-fallback "<0xNN>" -> that byte
    anything else                                 tokenizer.decode([id]) as UTF-8

`encode(data)` runs the tokenizer on every valid UTF-8 stretch of `data` and
gives each invalid byte its single-byte token (byte-level vocabularies and byte
fallback have one for each of the 256 values). Special tokens (BOS, EOS, chat
markers) stand for no text; `translate` carries them across by role (BOS, EOS,
pad) or by identical content, and drops the rest.

On top of that, the two directions a cross-tokenizer drafter needs:
`DraftMirror` keeps the draft's tokens for the growing target context,
re-encoding only a window at its end, and `target_proposal` turns the draft's
new tokens into target tokens that extend the committed context.
"""
from __future__ import annotations

import bisect
import json
import re
import threading
import weakref
from typing import Any

# Target tokens DraftMirror re-encodes at every step (between WINDOW and 2 * WINDOW): far more than
# a tokenisation boundary effect reaches back, few enough that re-encoding costs next to nothing.
WINDOW = 32
# How many cut positions before the ideal one DraftMirror tries when it moves its anchor forward.
ANCHOR_TRIES = 8
# Committed target tokens re-encoded together with the draft's text, to tokenise their boundary.
LOOKBEHIND = 8

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_ROLES = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def _gpt2_byte_chars() -> dict[str, int]:
    """GPT-2's printable character for each byte, inverted: character -> byte."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(161, 173)) | set(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_OF_CHAR = _gpt2_byte_chars()


class Vocab:
    """One tokenizer's tokens as bytes; build once per tokenizer with `vocab_of`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = weakref.proxy(tokenizer)  # the cache below keys on the tokenizer: never keep it alive
        self.kind = decoder_kind(tokenizer)
        n = len(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        added = {i: t for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if i < n}
        special_ids = {i for i, t in added.items() if t.special} | set(getattr(tokenizer, "all_special_ids", []))
        self.special: dict[int, str] = {}  # id -> content, for tokens that stand for no text
        self.bytes: list[bytes] = []
        for i, piece in enumerate(pieces):
            if i in special_ids or piece is None:
                self.special[i] = piece if i not in added else added[i].content
                self.bytes.append(b"")
            elif i in added:  # a non-special added token is its text, never byte-mapped
                self.bytes.append(added[i].content.encode("utf-8"))
            else:
                self.bytes.append(self._piece_bytes(i, piece))
        self.by_content = {c: i for i, c in self.special.items() if c}
        self.roles = {r: getattr(tokenizer, r, None) for r in _ROLES}
        self.byte_ids: list[int | None] = [None] * 256  # the token of each single byte, for invalid UTF-8
        for i, b in enumerate(self.bytes):
            if len(b) == 1 and self.byte_ids[b[0]] is None:
                self.byte_ids[b[0]] = i
        self._grows = sorted(set(b for b in self.bytes if b))  # every token's bytes, for may_grow
        self._backend = getattr(tokenizer, "backend_tokenizer", None)

    def _piece_bytes(self, i: int, piece: str) -> bytes:
        if self.kind == "byte_level" and all(c in _BYTE_OF_CHAR for c in piece):
            return bytes(_BYTE_OF_CHAR[c] for c in piece)
        if self.kind == "sentencepiece":
            m = _BYTE_PIECE.fullmatch(piece)
            return bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode("utf-8")
        return self.tokenizer.decode([i]).encode("utf-8")

    def has_text(self, token: int) -> bool:
        return 0 <= token < len(self.bytes) and token not in self.special

    def to_bytes(self, ids: list[int]) -> bytes:
        """The text of `ids` as UTF-8 bytes (special and unknown ids add nothing)."""
        table, n = self.bytes, len(self.bytes)
        return b"".join(table[i] for i in ids if 0 <= i < n)

    def encode(self, data: bytes) -> list[int]:
        """Token ids for `data`: the tokenizer on each valid UTF-8 stretch, a byte token for each invalid byte."""
        out: list[int] = []
        while data:
            try:
                return out + self._encode_text(data.decode("utf-8"))
            except UnicodeDecodeError as err:
                out += self._encode_text(data[: err.start].decode("utf-8"))
                for b in data[err.start: err.end]:
                    tok = self.byte_ids[b]
                    out += [tok] if tok is not None else self._encode_text("\ufffd")
                data = data[err.end:]
        return out

    def _encode_text(self, text: str) -> list[int]:
        if not text:
            return []
        if self._backend is not None:  # the Rust tokenizer directly: no per-call Python overhead
            return self._backend.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def may_grow(self, token: int) -> bool:
        """Whether more text could still change this token: its bytes begin a longer token's bytes."""
        b = self.bytes[token] if self.has_text(token) else b""
        if not b:
            return False
        i = bisect.bisect_right(self._grows, b)
        return i < len(self._grows) and self._grows[i].startswith(b)

    def counterpart(self, token: int, other: "Vocab") -> int | None:
        """This special token in `other`'s vocabulary: the same role (BOS, EOS, ...), else the same content."""
        for role, tid in self.roles.items():
            if tid == token and other.roles.get(role) is not None:
                return other.roles[role]
        return other.by_content.get(self.special.get(token, ""))


def translate(ids: list[int], src: Vocab, dst: Vocab) -> list[int]:
    """`ids` (src's tokens) as dst's tokens: each run of text re-encoded, special tokens carried across."""
    out: list[int] = []
    start = 0
    for i, tok in enumerate(ids):
        if not src.has_text(tok):
            out += dst.encode(src.to_bytes(ids[start:i]))
            other = src.counterpart(tok, dst)
            if other is not None:
                out.append(other)
            start = i + 1
    return out + dst.encode(src.to_bytes(ids[start:]))


class DraftMirror:
    """The draft's tokens for a growing target context, re-encoding only a window at its end.

    `prefix` + the draft tokens of target[:t_anchor] are fixed (so the draft's KV
    cache keeps them); the text after the anchor is re-encoded at every call.
    When more than 2 * WINDOW target tokens follow the anchor, it moves to a cut
    WINDOW tokens from the end where the draft tokenises the text before the cut
    exactly as the re-encoded window does (so nothing the cache holds changes).
    """

    def __init__(self, t_vocab: Vocab, d_vocab: Vocab, prefix: list[int] | None = None) -> None:
        self.t_vocab, self.d_vocab = t_vocab, d_vocab
        self.t_anchor = 0
        self.fixed: list[int] = list(prefix or [])

    def update(self, tokens: list[int]) -> list[int]:
        """The draft's tokens for the target context `tokens` (which extends the previous call's)."""
        tail = tokens[self.t_anchor:]
        d_tail = translate(tail, self.t_vocab, self.d_vocab)
        out = self.fixed + d_tail
        if len(tail) > 2 * WINDOW:
            for k in range(len(tail) - WINDOW, max(len(tail) - WINDOW - ANCHOR_TRIES, 0), -1):
                head = translate(tail[:k], self.t_vocab, self.d_vocab)
                if d_tail[: len(head)] == head:  # a clean cut: the text before k tokenises the same alone
                    self.t_anchor += k
                    self.fixed = self.fixed + head
                    break
        return out


def target_proposal(tokens: list[int], written: list[int], t_vocab: Vocab, d_vocab: Vocab,
                    t_eos: int | None = None, d_eos: frozenset[int] = frozenset()) -> list[int]:
    """Target tokens that extend the committed `tokens` with the text of the draft's `written` tokens.

    The text of the last LOOKBEHIND committed tokens (back to a special token at
    most) plus the draft's text is re-encoded with the target's tokenizer; when
    that reproduces the committed tokens, the tokens after them are the answer.
    Otherwise the committed tokens already split that boundary another way ("Hel"
    then "lo" where "Hello" is one token), and the draft's text is encoded on its
    own. A last token that more text could still change (" wor" before "ld") is
    dropped, unless the draft ended on a special token: that token's
    counterpart (its EOS: the target's `t_eos`) ends the proposal instead.
    """
    written = list(written)
    complete = bool(written) and not d_vocab.has_text(written[-1])  # the draft's text ends here
    end = None
    if complete:
        last = written.pop()
        end = t_eos if last in d_eos else d_vocab.counterpart(last, t_vocab)
    new: list[int] = []
    data = d_vocab.to_bytes(written)
    if data:
        start = len(tokens)
        while start > max(len(tokens) - LOOKBEHIND, 0) and t_vocab.has_text(tokens[start - 1]):
            start -= 1
        behind = tokens[start:]
        again = t_vocab.encode(t_vocab.to_bytes(behind) + data)
        new = again[len(behind):] if again[: len(behind)] == behind else t_vocab.encode(data)
        if not complete and new and t_vocab.may_grow(new[-1]):
            new.pop()
    if end is not None and (new or not data):
        new.append(end)
    return new


def decoder_kind(tokenizer: Any) -> str:
    """"byte_level", "sentencepiece" or "text": how the tokenizer's pieces become text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    if decoder is None:
        return "text"
    try:
        spec = json.loads(decoder.__getstate__())
    except Exception:  # noqa: BLE001 - an unknown decoder: fall back to decoding each token
        return "text"
    found = json.dumps(spec)
    if '"ByteLevel"' in found:
        return "byte_level"
    if '"ByteFallback"' in found or '"Metaspace"' in found or "\\u2581" in found or "\u2581" in found:
        return "sentencepiece"
    return "text"


_VOCABS: "weakref.WeakKeyDictionary[Any, Vocab]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def vocab_of(tokenizer: Any) -> Vocab:
    """The (cached) Vocab of a tokenizer; tokenizers are shared and read-only, so is this."""
    with _LOCK:
        hit = _VOCABS.get(tokenizer)
        if hit is None:
            hit = _VOCABS[tokenizer] = Vocab(tokenizer)
        return hit
