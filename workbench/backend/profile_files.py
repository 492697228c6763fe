"""Cost profiles as files: export this machine's, import another machine's ("what if I ran on that box?").

    workbench profile --export FILE [--as NAME]     this machine's cached profiles (or the --target ones)
    workbench profile --import FILE [--as NAME]     store a file's profiles under a machine name

A file is one JSON object:

    {"format": "decoding-workbench cost profiles", "version": 1, "exported_at": "2026-12-07T05:43:06Z",
     "machine": "NAME",
     "profiles": [{"model": "smollm2-135m", "device": "cuda:0", "cpu": "NVIDIA H100 80GB HBM3",
                   "backend": "eager", "static": null, "threads": 16, "torch": "2.5.1", "attn": "gqa",
                   "seconds": {"1": 0.0121, "2": 0.0122, ...}, "spread": {"1": 0.03, ...},
                   "measured_at": "2026-12-01T10:00:00Z", "rounds": 5}, ...]}

`seconds` is required per profile (token count -> seconds of one forward after 128 cached positions),
with `model`, `backend` and `cpu` (the processor the profile was measured on); every other field is
optional and kept as given (a newer key field such as `kernels` travels along). Imported profiles are
kept in the cache dir's imported_profiles.json under their machine's name (importing a name again
replaces that machine's profiles) and listed by profile.cached_profiles() and profile.imported_profiles()
marked imported; the CostModel the methods read never sees them, so an import cannot change what this
machine decides. A malformed file is refused whole with ProfileFileError, one line naming the file, the
profile and what is wrong.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..paths import read_json, write_json
from .profile import THIS_MACHINE, cached_profiles, imported_path, imported_profiles, profile_row, utc_now

FORMAT = "decoding-workbench cost profiles"
VERSION = 1
MAX_FILE_BYTES = 20_000_000  # far beyond any real export (a profile is ~1 KB)
# longer than any processor() name, the default (a CPU model name of up to 48 characters and every ISA flag: 75 more
# on a machine with all of them); a limit on names given with --as and read from files
MAX_NAME = 160

__all__ = ["FORMAT", "VERSION", "ProfileFileError", "export_profiles", "import_profiles", "imported_profiles",
           "load_profile_file", "profile_document"]


class ProfileFileError(ConfigError):
    """A cost-profile file that cannot be read or is not in the format above (one line)."""


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A profile row as it goes in a file: sizes as text; nothing local (imported, name, stale flags)."""
    local = {"imported", "name", "imported_at", "source", "noisy", "legacy", "stale"}
    out = {k: v for k, v in row.items() if k not in local and k not in ("seconds", "spread")}
    out["seconds"] = {str(n): t for n, t in sorted(row["seconds"].items())}
    out["spread"] = {str(n): s for n, s in sorted(row["spread"].items())} if row.get("spread") else None
    return out


def machine_name(name: str | None, rows: list[dict[str, Any]]) -> str:
    """The name a file's profiles go under: `name`, else the processor of the first profile."""
    name = (name or "").strip() or (str(rows[0].get("cpu") or "").strip() if rows else "") or "imported"
    if len(name) > MAX_NAME:
        raise ProfileFileError(f"a machine name is at most {MAX_NAME} characters, got {len(name)}")
    if name == THIS_MACHINE:
        raise ProfileFileError(f"{THIS_MACHINE!r} names this machine's own profiles; pick another name with --as")
    return name


def profile_document(rows: list[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """The JSON object of an export of `rows` (cached_profiles' rows) named `name` (default: their processor)."""
    rows = [r for r in rows if not r.get("imported")]
    if not rows:
        raise ProfileFileError("no cost profile to export: measure one first (`workbench profile`)")
    return {"format": FORMAT, "version": VERSION, "exported_at": utc_now(), "machine": machine_name(name, rows),
            "profiles": [_json_row(r) for r in rows]}


def export_profiles(path: str | Path, rows: list[dict[str, Any]] | None = None, name: str | None = None) -> int:
    """Write `rows` (default: every profile measured on this machine) to `path`; returns how many."""
    doc = profile_document(cached_profiles(imported=False) if rows is None else rows, name)
    try:
        Path(path).write_text(json.dumps(doc, indent=1) + "\n")
    except OSError as exc:
        raise ProfileFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    return len(doc["profiles"])


def load_profile_file(path: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """The profiles of an export file, checked: one row each (as cached_profiles' rows: model, backend, cpu,
    seconds {int: float}, spread or None, measured_at, ...) with imported True and name (`name`, else the
    file's machine, else its processor). ProfileFileError (one line) for a file that is not one."""
    where = str(path)
    try:
        p = Path(path)
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ProfileFileError(f"{where} is larger than {MAX_FILE_BYTES // 1_000_000} MB: not a cost-profile "
                                   "export")
        text = p.read_text()
    except OSError as exc:
        raise ProfileFileError(f"cannot read {where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ProfileFileError(f"{where} is not a text file: not a cost-profile export") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ProfileFileError(f"{where} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProfileFileError(f'{where} is not a cost-profile export (it needs "format": "{FORMAT}"; '
                               "make one with `workbench profile --export FILE`)")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProfileFileError(f'{where}: "version" must be a whole number >= 1, got {version!r}')
    if version > VERSION:
        raise ProfileFileError(f"{where} is format version {version}; this workbench reads up to {VERSION}: "
                               "upgrade it")
    profiles = doc.get("profiles")
    if not isinstance(profiles, list) or not profiles:
        raise ProfileFileError(f'{where}: "profiles" must be a non-empty list')
    rows = []
    for i, d in enumerate(profiles, start=1):
        try:
            rows.append(profile_row(d))
        except ValueError as exc:
            raise ProfileFileError(f"{where}: profile {i} of {len(profiles)}: {exc}") from None
    machine = doc.get("machine") if isinstance(doc.get("machine"), str) else None
    try:
        name = machine_name(name or machine, rows)
    except ProfileFileError as exc:
        raise ProfileFileError(f"{where}: {exc}") from None
    for row in rows:
        row.update(imported=True, name=name, imported_at=None, source=where)
    return rows


def import_profiles(path: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """Load `path` (load_profile_file) and keep its profiles as the imported machine `name` (replacing what was
    imported under that name before); returns the rows as imported_profiles() now lists them."""
    rows = load_profile_file(path, name)
    name = rows[0]["name"]
    store = imported_path()
    data = read_json(store)
    data[name] = {"imported_at": utc_now(), "source": str(Path(path).resolve()),
                  "profiles": [_json_row(r) for r in rows]}
    write_json(store, data)
    return [r for r in imported_profiles() if r["name"] == name]
