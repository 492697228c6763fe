"""Who can reach the app and what they may do there: this machine by default, a login when shared.

The app is *exposed* when it listens on an interface other than loopback or
makes a Gradio share link. `plan_launch` decides how to serve before anything is
started: an exposed app without authentication is refused (one ConfigError
line, which the CLI turns into exit 2) unless the operator says --insecure.
Authentication comes from --auth-file (lines ``user:password``; blank lines and
``#`` comments skipped) or else $WORKBENCH_AUTH (``user:password[,user2:pw2]``);
there is no default password.

An exposed app always runs under an `ExposurePolicy`: models limited to an
`AllowList` (the built-ins, the preselected target, --allow-model and
$WORKBENCH_ALLOWED_MODELS), deleting runs turned off and no stack traces in the
page. The policy lives on the AppContext, so every handler checks it server-side
(the browser's limits are only hints). This module does not import Gradio, so the
CLI can refuse in milliseconds.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from workbench.config import ConfigError
from workbench.models import AllowList

AUTH_ENV = "WORKBENCH_AUTH"
ALLOWED_MODELS_ENV = "WORKBENCH_ALLOWED_MODELS"
Credentials = list[tuple[str, str]]


@dataclass(frozen=True)
class ExposurePolicy:
    """What one app allows its users; the default (not exposed) allows everything."""

    exposed: bool = False
    models: AllowList = field(default_factory=AllowList)

    def check_model(self, spec: str | None) -> None:
        """ModelError when an exposed app may not load `spec` (None: no model asked for)."""
        if self.exposed and spec is not None:
            self.models.check(spec)

    @property
    def can_delete(self) -> bool:
        return not self.exposed


@dataclass(frozen=True)
class LaunchPlan:
    """How to serve: the interface, the share link, who may log in, and the policy the handlers apply."""

    host: str
    share: bool
    auth: Credentials | None
    policy: ExposurePolicy

    @property
    def show_error(self) -> bool:
        """Gradio's error details (stack traces) in the page only on this machine."""
        return not self.policy.exposed


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1; any other name or address may be reachable from elsewhere."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def plan_launch(host: str = "127.0.0.1", share: bool = False, *, auth_file: str | None = None,
                insecure: bool = False, allow_models: Iterable[str] = (), default_target: str | None = None,
                environ: Mapping[str, str] | None = None) -> LaunchPlan:
    """Check the launch options and decide how to serve; ConfigError (one line) when it must not start."""
    env = os.environ if environ is None else environ
    if not isinstance(host, str) or not host.strip():
        raise ConfigError("--host is empty; use 127.0.0.1 (this machine only) or an interface address")
    host = host.strip()
    exposed = bool(share) or not is_loopback(host)
    auth = read_auth(auth_file, env)
    if exposed and auth is None and not insecure:
        what = "make a public share link" if share else f"serve on {host} (reachable from other machines)"
        raise ConfigError(f"refusing to {what} without authentication: pass --auth-file PATH "
                          f"(lines user:password) or set {AUTH_ENV}=user:password, or --insecure to let "
                          "anyone who reaches it use it")
    extra = list(allow_models) + _split(env.get(ALLOWED_MODELS_ENV, ""))
    if default_target:
        extra.append(default_target)  # the operator's own choice of target is allowed
    policy = ExposurePolicy(exposed=exposed, models=AllowList.of(extra))
    return LaunchPlan(host=host, share=bool(share), auth=auth, policy=policy)


def read_auth(auth_file: str | None, environ: Mapping[str, str]) -> Credentials | None:
    """The credentials from --auth-file if given, else from $WORKBENCH_AUTH, else None."""
    if auth_file:
        path = Path(auth_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --auth-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        lines = [(f"{path}:{i}", line.strip()) for i, line in enumerate(text.splitlines(), 1)]
        creds = parse_credentials((w, ln) for w, ln in lines if ln and not ln.startswith("#"))
        if not creds:
            raise ConfigError(f"--auth-file {path} has no user:password lines")
        return creds
    raw = environ.get(AUTH_ENV, "").strip()
    if not raw:
        return None
    return parse_credentials((f"{AUTH_ENV} entry {i}", item.strip())
                             for i, item in enumerate(raw.split(","), 1))


def parse_credentials(entries: Iterable[tuple[str, str]]) -> Credentials:
    """(where, "user:password") pairs -> [(user, password)]; a bad entry names where, never the password."""
    creds: Credentials = []
    for where, entry in entries:
        user, sep, password = entry.partition(":")
        user = user.strip()
        if not sep or not user or not password:
            raise ConfigError(f"{where}: expected user:password with a non-empty user and password")
        if any(u == user for u, _ in creds):
            raise ConfigError(f"{where}: user '{user}' is given twice")
        creds.append((user, password))
    return creds


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]
