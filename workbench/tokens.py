"""Token ids as text, for views of a run: each token's piece of the output, and draft-tree node labels.

Only a model's tokenizer is needed (workbench.models.load_tokenizer), never its
weights, so the app's History and Draft tree views and the notebooks can show
stored runs without loading a model. When the tokenizer cannot load (a model
that is not installed here), each token shows as its id, ⟨id⟩.
"""
from __future__ import annotations

from typing import Callable, Sequence

from .models import load_tokenizer

Decode = Callable[[list], str]


def token_pieces(decode: Decode, ids: Sequence[int], start: int = 0, window: int = 4) -> list[str]:
    """The text each token adds, for tokens ids[start:].

    decode(ids) -> str. A token's text is what decoding it after a short window of
    earlier tokens adds, ignoring a trailing incomplete character (U+FFFD): a
    character split across byte tokens shows whole on the token that completes it.
    """
    def stable(text: str) -> str:
        return text.rstrip("\ufffd")

    out: list[str] = []
    for i in range(start, len(ids)):
        lo = max(0, i - window)
        before = stable(decode(list(ids[lo:i]))) if i > lo else ""
        full = decode(list(ids[lo:i + 1]))
        if i == len(ids) - 1:
            full_s = full  # the last token keeps an incomplete character rather than vanish
        else:
            full_s = stable(full)
        out.append(full_s[len(before):] if full_s.startswith(before) else decode([ids[i]]))
    return out


def decoder(spec: str) -> Decode | None:
    """decode(ids) -> str with the tokenizer of model `spec` (special tokens kept), or None if it cannot load."""
    try:
        tokenizer = load_tokenizer(spec)
    except Exception:  # noqa: BLE001 - the caller falls back to showing token ids
        return None

    def decode(ids: list) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=False)

    return decode


def texts_for(spec: str, ids: Sequence[int]) -> list[str]:
    """Per-token texts for ids decoded with the tokenizer of `spec`; ⟨id⟩ when it cannot load."""
    decode = decoder(spec)
    if decode is None:
        return [f"⟨{t}⟩" for t in ids]
    return token_pieces(decode, list(ids))


def single_texts(spec: str, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (for draft-tree node labels); ⟨id⟩ when the tokenizer cannot load."""
    decode = decoder(spec)
    if decode is None:
        return [f"⟨{t}⟩" for t in ids]
    return [decode([t]) for t in ids]
