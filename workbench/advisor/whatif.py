"""What-if machines: another machine's cost profile, to rank the methods as they would rank there.

A profile comes from an export file (`workbench profile --export FILE` on that machine; read with
workbench.backend.profile_files.load_profile_file) or from the profiles imported here under a machine
name (`workbench profile --import FILE --as NAME`; profile.imported_profiles). A file or machine may
hold several profiles: the one for the advice's target on its backend is taken, else the target's on
any backend, else one of the same model name (another precision), else the first; the advice says which.

Only the profile comes from the other machine. Acceptance is measured here and used as it is: whether
a draft token is accepted depends on the drafter, the target and the text, not on the hardware that
computes them (greedy verification compares tokens, and every backend computes the same model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backend.profile import imported_profiles
from ..backend.profile_files import load_profile_file
from .configs import AdviceError


@dataclass(frozen=True)
class WhatIf:
    """One what-if machine's profile for the advice."""

    name: str  # the machine's name
    model: str
    backend: str
    cpu: str
    seconds: dict[int, float]
    source: str  # the file, or "imported"
    note: str = ""  # when the profile is not the target's on the advice's backend

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "backend": self.backend, "cpu": self.cpu,
                "seconds": {str(n): t for n, t in sorted(self.seconds.items())}, "source": self.source,
                "note": self.note}


def pick(rows: list[dict[str, Any]], target: str, backend: str, source: str) -> WhatIf:
    """The row for `target` on `backend` (else the nearest, see the module docstring) as a WhatIf."""
    base = target.split(":")[0]
    order = [lambda r: r["model"] == target and r["backend"] == backend, lambda r: r["model"] == target,
             lambda r: str(r["model"]).split(":")[0] == base, lambda r: True]
    for rank, test in enumerate(order):
        row = next((r for r in rows if test(r)), None)
        if row is not None:
            break
    note = "" if rank == 0 else (f"no profile of {target} on {backend} there: using {row['model']} on "
                                 f"{row['backend']}")
    return WhatIf(name=str(row.get("name") or row.get("cpu")), model=str(row["model"]), backend=str(row["backend"]),
                  cpu=str(row["cpu"]), seconds=dict(row["seconds"]), source=source, note=note)


def from_file(path: str, target: str, backend: str) -> WhatIf:
    """The what-if machine of an export file (ProfileFileError, one line, for a file that is not one)."""
    return pick(load_profile_file(path), target, backend, str(path))


def imported(name: str, target: str, backend: str) -> WhatIf:
    """The what-if machine imported here under `name`."""
    rows = imported_profiles()
    mine = [r for r in rows if r["name"] == name]
    if not mine:
        known = ", ".join(sorted({r["name"] for r in rows})) or "none yet"
        raise AdviceError(f"no imported profile named {name!r} (imported: {known}); import one with "
                          f"`workbench profile --import FILE --as NAME`, or give the file with --what-if FILE")
    return pick(mine, target, backend, "imported")
