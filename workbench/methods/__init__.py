"""Decoding methods. Importing this package registers every built-in method."""
from .base import (FAMILIES, DraftContext, Drafter, DrafterEnv, Param, StepFeedback, get_method, list_methods,
                   methods_by_family, register, resolve_params)
from . import autoregressive, multi, prompt_lookup, sequoia, speculative, staged, top_k_trees  # noqa: F401  (registration)
from . import aded, jacobi, layer_skip, lookahead, recycling, sam  # noqa: F401  (registration: drafting without a draft model)
from . import cross_vocab  # noqa: F401  (registration: a draft model with another tokenizer)
from . import heads  # noqa: F401  (registration: trained heads on the target's hidden states)
from . import bild, early_exit  # noqa: F401  (registration: lossy methods)
from . import block, pard  # noqa: F401  (registration: block drafters, a whole block in one forward)

__all__ = ["FAMILIES", "DraftContext", "Drafter", "DrafterEnv", "Param", "StepFeedback", "get_method",
           "list_methods", "methods_by_family", "register", "resolve_params"]
