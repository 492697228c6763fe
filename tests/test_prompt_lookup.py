"""Prompt lookup's n-gram index: incremental (each step indexes only the new tokens) and
equal to a full rescan, so a lookup finds the latest earlier occurrence."""
import random

from workbench.config import SamplingConfig
from workbench.methods.base import DraftContext, DrafterEnv, resolve_params
from workbench.methods.prompt_lookup import PromptLookup


class CountingDict(dict):
    writes = 0

    def __setitem__(self, key, value):
        CountingDict.writes += 1
        super().__setitem__(key, value)


def _drafter(**params):
    env = DrafterEnv(target=None, draft=None, sampling=SamplingConfig(), generator=None)
    params.setdefault("cost_aware", False)  # no model here, so no cost profile: the index alone is tested
    d = PromptLookup(env, **resolve_params("prompt_lookup", params))
    d.begin([])
    return d


def _latest_continuation(tokens, n, budget):
    """Brute force: what followed the latest earlier occurrence of the last n tokens."""
    suffix = tokens[-n:]
    for end in range(len(tokens) - 1, n - 1, -1):
        if tokens[end - n:end] == suffix:
            return tokens[end:end + budget]
    return None


def test_each_step_indexes_only_the_new_tokens():
    d = _drafter(max_ngram=3, min_ngram=1)
    d.index = [CountingDict() for _ in d.index]
    rng = random.Random(0)
    context = [rng.randrange(20) for _ in range(500)]
    d.propose(DraftContext(tokens=list(context), n_prompt=500, max_tokens=10, step=0))
    for step in range(1, 30):
        new = [rng.randrange(20) for _ in range(rng.randint(1, 4))]
        context += new
        CountingDict.writes = 0
        d.propose(DraftContext(tokens=list(context), n_prompt=500, max_tokens=10, step=step))
        assert CountingDict.writes <= len(new) * 3  # one n-gram per size per new token, whatever the context


def test_lookup_matches_a_full_rescan():
    rng = random.Random(1)
    for max_ngram, min_ngram in ((3, 1), (4, 2), (1, 1)):
        d = _drafter(max_ngram=max_ngram, min_ngram=min_ngram, num_draft=5)
        context = [rng.randrange(6) for _ in range(30)]
        for step in range(60):
            draft = d.propose(DraftContext(tokens=list(context), n_prompt=30, max_tokens=10, step=step))
            expected = None
            for n in range(min(max_ngram, len(context) - 1), min_ngram - 1, -1):
                expected = _latest_continuation(context, n, 5)
                if expected:
                    break
            assert (draft.tokens if draft else None) == (expected or None), (step, context[-4:])
            context += [rng.randrange(6) for _ in range(rng.randint(1, 3))]
