"""Every lossless method on the embedded model: token-identical to plain greedy decoding.

Uses SmolLM2-135M-Instruct (converted once to the local cache) with its bf16 copy as
the draft, short outputs and a handful of prompts so the file stays around a minute.
"""
import pytest

from workbench.config import DecodeConfig
from workbench.engine import generate
from workbench.heads import BUILTIN_DIR
from workbench.methods import list_methods

pytestmark = pytest.mark.real

PROMPTS = [
    [{"role": "user", "content": "List three uses of a paperclip."}],
    "Summarize: The cat sat on the mat. The cat was happy on the mat because the mat was warm.",
]
# a method that drafts with a trained head (or a pard draft: its `kind`) runs the one shipped for the embedded
# model; one with none shipped (eagle3) runs there with imported heads instead (test_head_formats)
LOSSLESS = [m for m in list_methods() if m.lossless and m.name != "autoregressive"
            and (not getattr(m, "kind", "") or (BUILTIN_DIR / f"smollm2-135m-{m.kind}").is_dir())]


@pytest.fixture(scope="module")
def references(smollm):
    refs = []
    for prompt in PROMPTS:
        ids = smollm.encode_prompt(prompt, chat=True)
        refs.append((ids, generate(smollm, "autoregressive", ids, decode=DecodeConfig(max_new_tokens=32)).output_ids))
    return refs


@pytest.mark.parametrize("method", LOSSLESS, ids=lambda m: m.name)
def test_embedded_greedy_token_identical(method, smollm, smollm_bf16, references):
    draft = smollm_bf16 if method.needs_draft_model else None
    for ids, ref in references:
        out = generate(smollm, method.name, ids, draft=draft, decode=DecodeConfig(max_new_tokens=32))
        assert out.output_ids == ref, method.name
