"""Shared fixtures: tiny random models (fast), the embedded model (marked `real`), a temp store."""
from __future__ import annotations

import os

import pytest

# Where the tiny models run: the CPU, or e.g. cuda for scripts/gpu_check.sh (WORKBENCH_TEST_DEVICE=cuda).
DEVICE = os.environ.get("WORKBENCH_TEST_DEVICE", "cpu")


def pytest_configure(config):
    # Any local Ray instance a test starts binds and advertises loopback only (see workbench.cluster.address).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Tiny models are dominated by per-op overhead: one intra-op thread is several times
    # faster than two, and far faster when the machine is busy.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_db(tmp_path, monkeypatch):
    """Never write to the user's run store from a test."""
    monkeypatch.setenv("WORKBENCH_DB", str(tmp_path / "runs.sqlite"))


@pytest.fixture(scope="session")
def tiny():
    from workbench.models import load_model

    return load_model("tiny-random", device=DEVICE)


@pytest.fixture(scope="session")
def tiny_other():
    """Same vocabulary, different weights: a draft that is often wrong."""
    from workbench.models import load_model

    return load_model("tiny-random:seed=1", device=DEVICE)


@pytest.fixture(scope="session")
def tiny_bf16():
    """A lower-precision copy of the target: a draft that is usually right."""
    from workbench.models import load_model

    return load_model("tiny-random:bf16", device=DEVICE)


@pytest.fixture(scope="session")
def smollm():
    from workbench.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def smollm_bf16():
    from workbench.models import load_model

    return load_model("smollm2-135m:bf16", device="cpu")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("WORKBENCH_SKIP_REAL") == "1":
        skip = pytest.mark.skip(reason="WORKBENCH_SKIP_REAL=1")
        for item in items:
            if "real" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def tiny_heads(tmp_path_factory):
    """Default heads for tiny-random (eagle, medusa, hydra), trained for a few seconds on its own outputs.

    The head methods find them by default through $WORKBENCH_HEADS, so the registry-driven
    tests run them like every other method (subprocesses inherit the variable). A random
    model's text is noise a small head cannot learn in general, so the heads are trained on
    the target's responses to the engine tests' own prompts (greedy and sampled): enough for
    them to draft there, so a feature or position misalignment shows as a failed "actually drafts".
    The eagle and hydra heads fuse features (the engine hands them the feature layers' states too),
    the medusa head reads the final hidden states alone: both paths run through every registry test.
    """
    import json

    from workbench.train import TrainConfig, train

    from .test_engine import PROMPTS

    root = tmp_path_factory.mktemp("heads")
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt_ids": p}) for p in PROMPTS))
    old = os.environ.get("WORKBENCH_HEADS")
    os.environ["WORKBENCH_HEADS"] = str(root)
    for kind in ("eagle", "medusa", "hydra"):
        train(TrainConfig(kind=kind, target="tiny-random", prompts=str(prompts), samples=24, max_new_tokens=64,
                          fuse=kind != "medusa",
                          steps=200, lr=3e-3, device=DEVICE, out=str(root / f"tiny-random-{kind}"), store=False,
                          evaluate_prompts=0), quiet=True)
    yield root
    if old is None:
        os.environ.pop("WORKBENCH_HEADS", None)
    else:
        os.environ["WORKBENCH_HEADS"] = old
