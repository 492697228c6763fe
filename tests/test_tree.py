"""Tree buffers against hand-drawn matrices, and tree forwards against sequential forwards."""
import pytest
import torch
from transformers import DynamicCache

from workbench import kv_cache as kv
from workbench import tree_shape
from workbench.backend import open_session
from workbench.engine import _target_forward
from workbench.draft import Draft

#        root
#       /    \
#     n0(a)  n1(b)
#    /   \      \
#  n2(c) n3(d)  n4(e)
#          |
#        n5(f)
TREE = Draft([10, 11, 12, 13, 14, 15], [-1, -1, 0, 0, 1, 3])


def test_ancestor_matrix_hand_drawn():
    expected = torch.tensor([
        # r  0  1  2  3  4  5
        [1, 0, 0, 0, 0, 0, 0],  # root
        [1, 1, 0, 0, 0, 0, 0],  # n0
        [1, 0, 1, 0, 0, 0, 0],  # n1
        [1, 1, 0, 1, 0, 0, 0],  # n2
        [1, 1, 0, 0, 1, 0, 0],  # n3
        [1, 0, 1, 0, 0, 1, 0],  # n4
        [1, 1, 0, 0, 1, 0, 1],  # n5
    ], dtype=torch.bool)
    assert torch.equal(TREE.ancestor_matrix(), expected)


def test_positions_paths_and_mask_shape():
    assert TREE.depths == [1, 1, 2, 2, 2, 3]
    assert TREE.position_ids(5, torch.device("cpu")).tolist() == [[5, 6, 6, 7, 7, 7, 8]]
    assert sorted(tree_shape.leaf_paths(TREE.parents)) == [[0, 2], [0, 3, 5], [1, 4]]
    assert TREE.children[-1] == [0, 1] and TREE.children[3] == [5]
    mask = TREE.attention_mask(past_len=5, dtype=torch.float32, device=torch.device("cpu"))
    assert mask.shape == (1, 1, 7, 12)
    assert (mask[0, 0, :, :5] == 0).all()  # everyone sees the cached prefix
    assert (mask[0, 0, 6, 5:] == 0).tolist() == [True, True, False, False, True, False, True]


def test_chain_is_chain():
    chain = Draft.chain([1, 2, 3])
    assert chain.is_chain and chain.parents == [-1, 0, 1] and not TREE.is_chain
    expected = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    assert torch.equal(chain.ancestor_matrix(), expected)


def test_bad_parent_rejected():
    with pytest.raises(ValueError):
        Draft([1, 2], [-1, 1])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tree_forward_matches_sequential(tiny, attn):
    """Logits along every root-to-leaf path equal a plain forward of that sequence (atol 1e-4)."""
    model = tiny.model
    old = model.config._attn_implementation
    model.config._attn_implementation = attn
    try:
        prompt = [72, 101, 108, 108, 111, 33]
        with torch.inference_mode():
            session = open_session("eager", model, 64)
            session.forward(torch.tensor([prompt[:-1]]))
            logits = _target_forward(session, torch.tensor([[prompt[-1]] + TREE.tokens]), TREE, len(prompt) - 1)
            for path in tree_shape.leaf_paths(TREE.parents):
                seq = prompt + [TREE.tokens[i] for i in path]
                ref = model(input_ids=torch.tensor([seq])).logits[0, len(prompt) - 1:]
                rows = [0] + [i + 1 for i in path]
                torch.testing.assert_close(logits[rows], ref, atol=1e-4, rtol=1e-4)
            # keep the path root -> n0 -> n3 -> n5 and continue: same as decoding that path
            path = [0, 3, 5]
            session.keep(len(prompt) - 1, [0] + [i + 1 for i in path])  # workbench.kv_cache.keep_positions
            nxt = session.forward(torch.tensor([[99]]))[-1]
            seq = prompt + [TREE.tokens[i] for i in path] + [99]
            torch.testing.assert_close(nxt, model(input_ids=torch.tensor([seq])).logits[0, -1], atol=1e-4, rtol=1e-4)
    finally:
        model.config._attn_implementation = old


def _full_width_mask(draft: Draft, past_len: int, dtype: torch.dtype) -> torch.Tensor:
    """The mask from its definition: every row sees the past; the tree block is the ancestor matrix."""
    n = len(draft)
    allowed = torch.ones(n + 1, past_len + n + 1, dtype=torch.bool)
    allowed[:, past_len:] = draft.ancestor_matrix()
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_attention_mask_equals_its_definition(dtype):
    for draft in (TREE, Draft.chain([1, 2, 3]), Draft([], []), Draft([5, 6, 7, 8], [-1, -1, 1, 1])):
        for past_len in (0, 1, 9):
            got = draft.attention_mask(past_len, dtype, torch.device("cpu"))
            ref = _full_width_mask(draft, past_len, dtype)
            assert got.dtype == ref.dtype and got.shape == ref.shape and got.is_contiguous()
            assert torch.equal(got, ref)


def test_ancestor_block_is_built_once_and_matches_the_matrix():
    draft = Draft(TREE.tokens, TREE.parents)
    block = draft.ancestor_block(torch.device("cpu"))
    assert block.dtype == torch.bool and torch.equal(block, TREE.ancestor_matrix())
    assert draft.ancestor_block("cpu") is block  # cached per device
    copy = draft.ancestor_matrix()
    copy.fill_(False)  # ancestor_matrix hands out a copy: the cached block is untouched
    assert torch.equal(draft.ancestor_block("cpu"), TREE.ancestor_matrix())


def _reference_keep(t: torch.Tensor, start: int, keep: list[int]) -> torch.Tensor:
    return torch.cat([t[..., :start, :], t[..., [start + k for k in keep], :]], dim=-2)


@pytest.mark.parametrize("inference", [True, False])
def test_keep_positions_equals_gathering_the_kept_rows(inference):
    """Accepted rows copied into place (sources and destinations overlap) = the kept rows gathered.
    Works in and out of inference mode, whichever mode made the cache."""
    g = torch.Generator().manual_seed(0)
    cases = [(4, [0, 2, 5]), (0, [0, 3]), (3, [0, 1, 4, 6]), (2, [0, 1, 2]), (5, [0]), (1, [0, 6])]
    for start, keep in cases:
        cache = DynamicCache()
        with torch.inference_mode(inference):
            for layer in range(3):
                cache.update(torch.randn(1, 2, start + 7, 4, generator=g), torch.randn(1, 2, start + 7, 4, generator=g),
                             layer)
        expected = [(_reference_keep(l.keys, start, keep), _reference_keep(l.values, start, keep)) for l in cache.layers]
        kv.keep_positions(cache, start, keep)  # outside inference mode
        assert kv.cache_len(cache) == start + len(keep)
        for layer, (k, v) in zip(cache.layers, expected):
            assert torch.equal(layer.keys, k) and torch.equal(layer.values, v), (start, keep)


def test_keep_positions_on_a_sliding_window_model():
    """Inside the window a tree path is kept exactly; past it the rollback is refused, as for crop."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, sliding_window=12,
                        max_position_embeddings=128)
    torch.manual_seed(0)
    model = MistralForCausalLM(cfg).eval()
    prompt = [3, 4, 5, 6]
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        kv.forward(model, torch.tensor([prompt[:-1]]), cache)
        draft = Draft([7, 8, 9, 10], [-1, -1, 1, 2])  # accept n1 -> n2 -> n3
        past = len(prompt) - 1
        kv.forward(model, torch.tensor([[prompt[-1]] + draft.tokens]), cache,
                   attention_mask=draft.attention_mask(past, model.dtype, torch.device("cpu")),
                   position_ids=draft.position_ids(past, torch.device("cpu")))
        kv.keep_positions(cache, past, [0, 2, 3, 4])
        got = kv.forward(model, torch.tensor([[11]]), cache).logits[0, -1]
        ref = model(input_ids=torch.tensor([prompt + [8, 9, 10, 11]])).logits[0, -1]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        kv.forward(model, torch.arange(20, 32)[None], cache)  # past the window: early states dropped
        with pytest.raises(kv.CacheRollbackError, match="sliding-window"):
            kv.keep_positions(cache, 10, [0, 2])
