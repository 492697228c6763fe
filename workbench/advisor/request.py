"""What an advice is asked: the target, the drafters at hand, the prompts, the budget; and the command that
asks it again."""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from ..backend import check_backend
from ..config import is_int
from ..methods import get_method
from ..models import EMBEDDED_DEFAULT
from .budget import DEFAULT_BUDGET_S, MAX_VERIFY_TOKENS, MIN_VERIFY_TOKENS, fmt_duration, parse_budget
from .configs import AdviceError
from .prompts import DEFAULT_SUITE

MAX_TOP = 10
MAX_NEW_TOKENS = 512


@dataclass
class AdviceRequest:
    """An advice's settings (checked by `check`, before anything loads)."""

    target: str = EMBEDDED_DEFAULT
    drafts: list[str] = field(default_factory=list)  # draft model specs
    heads: list[str] = field(default_factory=list)  # head names or directories (default: every kind's default)
    methods: list[str] | None = None  # only these methods (None: every applicable one)
    suite: str | None = None  # a suite name or file (None: the built-in suite, unless prompts are given)
    category: str | None = None
    prompts: list[str] | None = None  # pasted prompts, one question each
    budget_s: float = DEFAULT_BUDGET_S
    backend: str = "eager"
    top: int = 3  # configurations verified
    max_new_tokens: int = MAX_VERIFY_TOKENS  # the most new tokens a verification run decodes
    what_if: list[str] = field(default_factory=list)  # profile export files of other machines
    profiles: list[str] = field(default_factory=list)  # names of machines whose profiles were imported here
    device: str | None = None

    def check(self) -> "AdviceRequest":
        """Every setting checked (AdviceError / ConfigError, one line); returns self."""
        if not str(self.target or "").strip():
            raise AdviceError("give a target model (--target), e.g. smollm2-135m")
        self.budget_s = parse_budget(self.budget_s)
        self.backend = check_backend(self.backend)
        for name, value, most in (("--top", self.top, MAX_TOP), ("--max-new-tokens", self.max_new_tokens,
                                                                  MAX_NEW_TOKENS)):
            if not is_int(value) or not 1 <= value <= most:
                raise AdviceError(f"{name} must be a whole number from 1 to {most}, got {value!r}")
        if self.max_new_tokens < MIN_VERIFY_TOKENS:
            raise AdviceError(f"--max-new-tokens must be at least {MIN_VERIFY_TOKENS} for a verification that "
                              f"measures anything, got {self.max_new_tokens}")
        for m in self.methods or []:
            get_method(m)  # ConfigError naming the known methods
        if self.prompts is not None and not any(p.strip() for p in self.prompts):
            self.prompts = None
        if self.prompts and (self.suite or self.category):
            raise AdviceError("give --prompt, or --suite and/or --category, not both")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdviceRequest":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def command(self) -> str:
        """The `workbench advise` command line that asks this again."""
        args = ["workbench", "advise", "--target", self.target]
        for d in self.drafts:
            args += ["--draft", d]
        for h in self.heads:
            args += ["--head", h]
        if self.methods:
            args += ["--methods", ",".join(self.methods)]
        if self.prompts:
            for p in self.prompts:
                args += ["--prompt", p]
        else:
            args += ["--suite", self.suite or DEFAULT_SUITE]
            if self.category:
                args += ["--category", self.category]
        args += ["--budget", fmt_duration(self.budget_s), "--backend", self.backend, "--top", str(self.top)]
        if self.max_new_tokens != MAX_VERIFY_TOKENS:
            args += ["--max-new-tokens", str(self.max_new_tokens)]
        for f in self.what_if:
            args += ["--what-if", f]
        for p in self.profiles:
            args += ["--profile", p]
        if self.device:
            args += ["--device", self.device]
        return shlex.join(args)
