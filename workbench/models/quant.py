"""Weight-only int8 quantisation: the ``:int8`` spec option.

`quantize_model_int8` swaps every nn.Linear except the LM head for an
`Int8Linear` holding int8 weights and one symmetric scale per output channel
(weight ~= qweight * scale[:, None]); the matmul runs in the input's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights and one symmetric scale per output channel.

    The matmul runs in the input's dtype on the int8 values; the per-channel
    scale is applied to the output, which equals using the dequantized weight.
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
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


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: weight ~= qweight * scale[:, None]."""
    w = weight.float()
    scale = torch.maximum(w.amax(dim=1), -w.amin(dim=1)).clamp_(min=1e-8).div_(127.0)
    qweight = (w / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return qweight, scale


def quantize_model_int8(model: nn.Module) -> int:
    """Swap every nn.Linear except the LM head for an Int8Linear, in place; returns how many."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, nn.Linear) and mod is not head and name.split(".")[-1] != "lm_head"]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_linear(mod))
    return len(targets)
