"""The shape of a draft tree from its parent list alone: depths, chains, paths, ancestor masks.

A tree of n nodes hangs under the root (the last committed token); node i's
parent is ``parents[i]`` (-1 = the root) and parents come before children. The
torch ``workbench.draft.Draft``, the Trace's ``Step`` and the presenters all read
the shape from here. No torch import, so the store and the UI can use it.
"""
from __future__ import annotations

from collections.abc import Sequence


def depths(parents: Sequence[int]) -> list[int]:
    """Depth of each node; children of the root have depth 1."""
    out: list[int] = []
    for par in parents:
        out.append(1 if par < 0 else out[par] + 1)
    return out


def max_depth(parents: Sequence[int]) -> int:
    """Length of the longest root-to-leaf path (the draft length γ of a chain)."""
    return max(depths(parents), default=0)


def is_chain(parents: Sequence[int]) -> bool:
    return all(par == i - 1 for i, par in enumerate(parents))


def children(parents: Sequence[int]) -> dict[int, list[int]]:
    """Node -> its children in order; key -1 is the root."""
    out: dict[int, list[int]] = {-1: []}
    for i, par in enumerate(parents):
        out.setdefault(par, []).append(i)
        out.setdefault(i, [])
    return out


def path_to(parents: Sequence[int], node: int) -> list[int]:
    """Node indices from the root's child down to `node`."""
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def ancestor_rows(parents: Sequence[int]) -> list[list[bool]]:
    """(n+1) x (n+1): row r may attend to column c; the root is row/column 0.

    Each node sees the root, its ancestors and itself: the tree attention mask
    (SpecInfer, Medusa) over the root + nodes block.
    """
    n = len(parents)
    rows = [[c == 0 for c in range(n + 1)] for _ in range(n + 1)]
    for i, par in enumerate(parents):
        r = i + 1
        if par >= 0:
            rows[r] = list(rows[par + 1])
        rows[r][r] = True
    return rows


def leaf_paths(parents: Sequence[int]) -> list[list[int]]:
    """Every root-to-leaf path, as node indices."""
    return [path_to(parents, i) for i, kids in children(parents).items() if i >= 0 and not kids]
