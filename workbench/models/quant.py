"""Int8 weights for the ``:int8`` spec option, through the fastest accurate kernel the device has.

Every weight is stored as int8 with one symmetric scale per output channel
(weight ~= qweight * scale[:, None]). How the matmul runs depends on the device
the model is quantised for (`quantize_model_int8(model, device)`):

- CPU: `PackedInt8Linear`, torch's weight-only int8 kernel
  ``aten._weight_int8pack_mm`` (the int8 weights are read as int8; activations
  go through it in bf16, the residual stream stays in the model's dtype). The
  LM head is quantised too: where it is tied to the input embedding (SmolLM2's
  49152x576 matrix, a large share of a token's cost) it is untied, the
  embedding keeps its float weight and the head gets an int8 copy.
  The kernel needs in_features to be a multiple of 16 (other sizes give wrong
  numbers or crash), so other layers keep `Int8Linear`.
- CUDA, MPS (or a torch without the kernel): `Int8Linear`, which dequantises the
  weight to the input's dtype at each call (the LM head stays float).

Why this kernel (compared on a CPU with AVX-512 VNNI and AMX:
docs/results/2026-12-04-draft-models.md): PackedInt8Linear with the LM head
quantised too is the fastest variant that keeps the draft's acceptance, while
dequantising at each call (Int8Linear) runs no faster than fp32. fbgemm's dynamic
quantisation (``torch.ao.quantization.quantize_dynamic``, int8 weights per
channel) is faster at many tokens, but it quantises each call's activations with
one scale for the whole tensor, and SmolLM2's down_proj inputs carry outliers far
larger than other layers' activations: its drafts are accepted far less often,
which costs more than its speed wins back, and its quantized-tensor API is
deprecated. bf16 (oneDNN, AMX) overtakes int8 once a forward holds several tokens:
a drafter that forwards wide trees may prefer ``:bf16``
(`workbench.backend.speed.precision_speed(spec, rows=16)` measures that on any
machine).

torch.compile: a model of PackedInt8Linear compiles (dynamo captures
``_weight_int8pack_mm`` without graph breaks; checked on tiny-random:int8 over a
StaticCache, through the compiled backend too, logits equal to eager).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PACK_ALIGN = 16  # _weight_int8pack_mm needs in_features % 16 == 0


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights and one symmetric scale per output channel.

    The matmul runs in the input's dtype on the int8 values (dequantised at each
    call); the per-channel scale is applied to the output, which equals using
    the dequantized weight. Works on every device.
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        qweight, scale = quantize_int8(linear.weight.detach())
        return cls(qweight, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PackedInt8Linear(Int8Linear):
    """Int8Linear through ``aten._weight_int8pack_mm`` (CPU): int8 weights read as int8, bf16 activations.

    Needs in_features % 16 == 0 (`can_pack`). The output comes back in the input's dtype.
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        if not can_pack(qweight.shape[1]):
            raise ValueError(f"_weight_int8pack_mm needs in_features % {PACK_ALIGN} == 0, got {qweight.shape[1]}")
        super().__init__(qweight, scale, bias)
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # (B*T, in)
        y = torch._weight_int8pack_mm(x2, self.qweight, self.scale_bf16).reshape(*shape[:-1], self.out_features)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def can_pack(in_features: int) -> bool:
    """Whether this torch has the CPU int8 kernel and it takes this input width."""
    return hasattr(torch, "_weight_int8pack_mm") and in_features % PACK_ALIGN == 0


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: weight ~= qweight * scale[:, None]."""
    w = weight.float()
    scale = torch.maximum(w.amax(dim=1), -w.amin(dim=1)).clamp_(min=1e-8).div_(127.0)
    qweight = (w / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return qweight, scale


def quantize_model_int8(model: nn.Module, device: str | torch.device = "cpu") -> int:
    """Quantise the model's Linear layers in place for `device` (see the module docstring); returns how many.

    On CPU every Linear becomes a PackedInt8Linear where the kernel takes its
    width (else an Int8Linear), the LM head included (untied from the input
    embedding first). Elsewhere every Linear except the LM head becomes an
    Int8Linear. Call it before moving the model to `device`.
    """
    cpu = torch.device(device).type == "cpu"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    if not cpu:
        targets = [(n, m) for n, m in targets if m is not head and n.split(".")[-1] != "lm_head"]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        kind = PackedInt8Linear if cpu and can_pack(mod.in_features) else Int8Linear
        new = kind.from_linear(mod)  # a new int8 tensor: the tied embedding keeps its own float weight
        new.tied_to_input = mod is head and _is_tied(model, mod)
        setattr(parent, child, new)
    if cpu and head is not None and any(m is head for _, m in targets):
        _untie(model)
    return len(targets)


def _is_tied(model: nn.Module, head: nn.Module) -> bool:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    w = getattr(emb, "weight", None)
    return w is not None and getattr(head, "weight", None) is not None and head.weight.data_ptr() == w.data_ptr()


def _untie(model: nn.Module) -> None:
    """The head is an int8 module of its own; keep transformers from tying it back to the embedding."""
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
            cfg.tie_word_embeddings = False


def quantized_params(model: nn.Module) -> int:
    """Weights held as int8 buffers (not parameters), not counting an LM head that copies the input embedding."""
    return sum(m.qweight.numel() for m in model.modules()
               if isinstance(m, Int8Linear) and not getattr(m, "tied_to_input", False))
