"""Dynamic int8 quantisation of linear layers as a transform (torch.ao.quantization; CPU, float32,
forward, layer scope)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from attnbench.engine.transforms.base import Applied, Transform, TransformUnsupported, module_bytes
from attnbench.engine.transforms.fidelity import Tolerance
from attnbench.engine.transforms.registry import register_transform

if TYPE_CHECKING:
    from torch import Tensor, nn

    from attnbench.core.cases import Case


@register_transform
class Int8(Transform):
    name = "int8"
    summary = "dynamic int8 quantisation of linear layers (layer scope, CPU)"
    # Per-tensor int8 weights with activations quantised per call: a few per cent error in what
    # each layer adds, diluted by the residual stream. Measured here (layer, heads 8, head_dim
    # 64, n 256): rel_err 6e-3 (one layer) to 1.1e-2 (Universal Transformer, 6 applications).
    tolerance = Tolerance(rel_err=3e-2, min_cosine=0.9995)

    def apply(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
        import torch
        from torch import nn

        if case.backend != "cpu":
            raise TransformUnsupported(
                f"int8 dynamic quantisation runs on cpu through torch.ao.quantization, not {case.backend}"
            )
        if case.dtype != "float32":
            raise TransformUnsupported(
                f"int8 dynamic quantisation starts from float32 weights; this case is {case.dtype}"
            )
        if case.mode != "forward":
            raise TransformUnsupported("int8 dynamically quantised linear layers have no backward; forward mode only")
        linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise TransformUnsupported(
                f"{case.variant} at {case.scope} scope has no linear layers to quantise (use --scope layer)"
            )
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            # torch deprecates quantised tensor creation in favour of torchao; it still runs, and
            # the record names the method, so the warning would only repeat per layer.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
            quantised = quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=False)
        details = {
            "method": "torch.ao.quantization.quantize_dynamic, qint8 per-tensor weights, activations per call",
            "engine": torch.backends.quantized.engine,
            "quantised_layers": linears,
            "weight_bytes_before": module_bytes(module),
            "weight_bytes_after": module_bytes(quantised),
        }
        return Applied("int8", quantised, None, details, self.tolerance, metrics_module=quantised)
