"""Optimisation strategies as a sweep axis: compile, reduced precision, int8, pruning, distillation.

A transform takes the module a case builds (the untransformed "teacher") and returns what is
timed instead. Each transform states, next to its code, the fidelity it is expected to keep:
its outputs are compared with the untransformed module run in float64 on the same inputs
(relative error ||y - y_ref|| / ||y_ref|| and cosine similarity); a case beyond its tolerance
is flagged in the record and its notes, never hidden and never turned into an error.

Transforms run on the torch-executing backends (cpu, cuda): elsewhere the module is not what
runs (ONNX Runtime exports it; int8 through ONNX Runtime's own quantiser is not implemented).
The "none" transform is the identity and leaves the case, its id and its record as they were.

The worker calls `apply_transform` after building the module and before `backend.prepare`,
`Applied.timed_start/timed_stop` around sampling, and `Applied.finish` after timing.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import Tensor, nn

    from attnbench.core.cases import Case

TORCH_BACKENDS = ("cpu", "cuda")
HEAD_PRUNE_FRACTION = 0.25  # share of attention heads `prune_heads` removes
DISTILL_STEPS = 50
DISTILL_HEAD_FRACTION = 0.5  # the student keeps this share of the teacher's heads
DISTILL_TRAIN_LEN = 64  # synthetic training sequences: short, so training stays a few seconds on a CPU
DISTILL_LR = 3e-4


class TransformUnsupported(Exception):
    """The transform does not apply to this case; the message says why."""


@dataclass(frozen=True)
class Tolerance:
    """What a transform is expected to keep: rel_err at most, cosine at least."""

    rel_err: float
    min_cosine: float


@dataclass
class Applied:
    """The transformed module, what was done, and the untransformed module kept for fidelity."""

    name: str
    module: nn.Module  # what backend.prepare receives
    reference: nn.Module | None  # the untransformed module (a copy), None for "none"
    details: dict[str, Any] = field(default_factory=dict)
    tolerance: Tolerance | None = None
    apply_s: float = 0.0  # seconds the transform itself took (quantise, prune, train)
    metrics_module: nn.Module | None = None  # the module a workload's case_metrics should read
    compiles_on_first_call: bool = False
    _on_start: Callable[[], None] | None = None
    _on_stop: Callable[[], list[str]] | None = None
    _on_finish: Callable[[], dict[str, Any]] | None = None

    def timed_start(self) -> None:
        if self._on_start:
            self._on_start()

    def timed_stop(self) -> list[str]:
        return self._on_stop() if self._on_stop else []

    def finish(self, inputs: tuple[Tensor, ...]) -> dict[str, Any]:
        """After timing: what ran (details), and fidelity against the float64 untransformed module."""
        if self._on_finish:
            self.details.update(self._on_finish())
        if self.reference is None or self.tolerance is None:
            return {"transform": self.name, "transform_details": None, "fidelity": None}
        return {
            "transform": self.name,
            "transform_details": self.details,
            "fidelity": measure_fidelity(self.module, self.reference, inputs, self.tolerance),
        }


# --- fidelity ------------------------------------------------------------------------------


def fidelity_of(y: Tensor, y_ref: Tensor, tol: Tolerance) -> dict[str, Any]:
    """Relative error and cosine similarity of y against y_ref, in float64, and whether within tol."""
    import torch

    a = y.detach().to("cpu", torch.float64).flatten()
    r = y_ref.detach().to("cpu", torch.float64).flatten()
    rel = ((a - r).norm() / r.norm()).item()
    cos = torch.nn.functional.cosine_similarity(a, r, dim=0).item()
    within = bool(rel <= tol.rel_err and cos >= tol.min_cosine)  # NaN compares False: flagged
    return {
        "rel_err": rel,
        "cosine": cos,
        "tolerance": {"rel_err": tol.rel_err, "min_cosine": tol.min_cosine},
        "within": within,
        "reference": "untransformed module, float64, CPU, same inputs (forward output)",
    }


def measure_fidelity(
    module: nn.Module, reference: nn.Module, inputs: tuple[Tensor, ...], tol: Tolerance
) -> dict[str, Any]:
    import torch

    # Same grad mode as the timed step (no torch.no_grad around the transformed module): a
    # compiled module guards on grad mode and would otherwise compile a second graph here.
    out = module(*inputs)
    with torch.no_grad():
        ref_module = reference.to("cpu", torch.float64)
        x64 = tuple(t.detach().to("cpu", torch.float64) for t in inputs)
        y_ref = ref_module(*x64)
    result = fidelity_of(out, y_ref, tol)
    if len(x64) == 1 and x64[0].shape == y_ref.shape:
        # A residual layer's output is mostly its input; the error of what the layer adds
        # (y - x) is the more sensitive figure, recorded beside the output's.
        update = fidelity_of(out.detach().to("cpu", torch.float64) - x64[0], y_ref - x64[0], tol)
        result["update_rel_err"] = update["rel_err"]
        result["update_cosine"] = update["cosine"]
    return result


# --- helpers -------------------------------------------------------------------------------


def module_bytes(module: nn.Module) -> int:
    """Bytes of every tensor in the state dict, packed int8 weights included."""
    import torch

    seen: set[int] = set()

    def size(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            if id(obj) in seen:
                return 0
            seen.add(id(obj))
            return obj.numel() * obj.element_size()  # 1 for qint8
        if isinstance(obj, (tuple, list)):
            return sum(size(o) for o in obj)
        return 0

    return sum(size(v) for v in module.state_dict().values())


def _is_layer(module: nn.Module) -> bool:
    from attnbench.workloads.layer import PreNormLayer

    return isinstance(module, PreNormLayer)


def _require_torch_backend(case: Case) -> None:
    if case.backend not in TORCH_BACKENDS:
        raise TransformUnsupported(
            f"transform {case.transform} runs on torch eager backends ({', '.join(TORCH_BACKENDS)}), "
            f"not {case.backend}, where the module is converted before it runs"
        )


# --- compile -------------------------------------------------------------------------------

COMPILE_TOLERANCE = {
    # Fusion reorders float sums; the untransformed module's own float32 error is ~1e-6.
    "float32": Tolerance(rel_err=1e-4, min_cosine=0.99999),
    "float64": Tolerance(rel_err=1e-10, min_cosine=1 - 1e-12),
    "bfloat16": Tolerance(rel_err=3e-2, min_cosine=0.999),
    "float16": Tolerance(rel_err=5e-3, min_cosine=0.9999),
}


def compiler_missing(device: str) -> str | None:
    """Why inductor cannot generate code here, or None."""
    if device == "cpu":
        import os

        cxx = os.environ.get("CXX")
        if not (cxx and shutil.which(cxx)) and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "torch.compile (inductor) needs a C++ compiler on CPU; none found (g++, c++, clang++, $CXX)"
        return None
    from torch.utils._triton import has_triton

    return None if has_triton() else "torch.compile (inductor) needs triton on CUDA; it is not installed"


_KERNEL_PATTERNS = {
    "extern": re.compile(r"extern_kernels\.(\w+)"),
    "aten": re.compile(r"(?:torch\.ops\.)?aten\.(\w+)"),
    "generated": re.compile(r"\b((?:cpp|triton)_\w+?)\s*=\s*async_compile"),
}


def generated_kernels(before: int) -> dict[str, Any]:
    """Kernels in the code inductor generated for this case (its output modules, read as source).

    Dispatcher-level recording cannot see inside a compiled graph, and profiling a compiled
    call changes its guards (a recompile), so the generated source is read instead.
    """
    from torch._inductor.codecache import PyCodeCache

    extern: dict[str, int] = {}
    generated: list[str] = []
    files = 0
    for mod in list(PyCodeCache.modules)[before:]:
        path = getattr(mod, "__file__", None)
        if not path:
            continue
        try:
            with open(path) as f:
                src = f.read()
        except OSError:
            continue
        files += 1
        for kind in ("extern", "aten"):
            for name in _KERNEL_PATTERNS[kind].findall(src):
                extern[name] = extern.get(name, 0) + 1
        generated += _KERNEL_PATTERNS["generated"].findall(src)
    return {
        "source": "inductor output code (PyCodeCache modules loaded for this case)",
        "output_modules": files,
        "library_calls": dict(sorted(extern.items())),  # aten / extern kernels the graph calls
        "generated_kernels": sorted(set(generated)),  # fused kernels inductor wrote
        "fused_attention": any("scaled_dot_product" in n or "flash" in n for n in extern),
    }


def _dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "frames": int(counters["frames"]["total"]),
    }


def apply_compile(module: nn.Module, inputs: tuple[Tensor, ...], case: Case, mode: str) -> Applied:
    import torch

    _require_torch_backend(case)
    missing = compiler_missing(case.backend)
    if missing:
        raise TransformUnsupported(missing)
    # In-process compilation: the worker is a forked child, where a compile pool would be
    # a second generation of workers for no gain on a case-sized graph.
    torch._inductor.config.compile_threads = 1
    torch._dynamo.reset()
    # The sequence-length dimension is marked dynamic (maybe: no error if the variant
    # specialises on it, e.g. a length branch), so one graph serves every length where the
    # variant allows it, and inductor's on-disk cache can serve the next length's compile.
    seq_dim = 2 if case.scope == "core" and len(inputs) == 3 else 1
    for t in inputs:
        if t.dim() > seq_dim:
            torch._dynamo.maybe_mark_dynamic(t, seq_dim)
    from torch._inductor.codecache import PyCodeCache

    modules_before = len(PyCodeCache.modules)
    compiled = torch.compile(module, mode=None if mode == "default" else mode, backend="inductor")
    details: dict[str, Any] = {
        "backend": "inductor",
        "mode": mode,
        "dynamic": "seq_len dimension marked maybe-dynamic",
        "torch": torch.__version__,
    }
    # Compile now, with one call in the grad mode the step will use, so that a graph the
    # compiler cannot handle makes the case unsupported with its message (as a failed ONNX
    # export does) rather than an error mid-warm-up. The seconds count in compile_s.
    if case.mode == "forward":
        module.requires_grad_(False)
    else:
        for t in inputs:
            t.requires_grad_(True)
    t0 = time.perf_counter()
    try:
        compiled(*inputs)
    except Exception as exc:  # inductor raises many types; each is "could not compile this"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TransformUnsupported(f"torch.compile ({mode}) failed: {type(exc).__name__}: {first}") from None
    details["compile_call_s"] = time.perf_counter() - t0
    counts: dict[str, Any] = {}

    def start() -> None:
        counts["before_timing"] = _dynamo_counts()

    def stop() -> list[str]:
        after = _dynamo_counts()
        counts["after_timing"] = after
        new = after["unique_graphs"] - counts["before_timing"]["unique_graphs"]
        counts["recompiles_during_timing"] = new
        return [f"torch.compile compiled {new} new graph(s) while timed"] if new else []

    def finish() -> dict[str, Any]:
        return {"dynamo": {**counts, "at_end": _dynamo_counts()}, "kernels": generated_kernels(modules_before)}

    return Applied(
        "compile" if mode == "default" else f"compile_{mode.replace('-', '_')}",
        compiled,
        None,
        details,
        COMPILE_TOLERANCE[case.dtype],
        metrics_module=module,
        compiles_on_first_call=True,
        _on_start=start,
        _on_stop=stop,
        _on_finish=finish,
    )


# --- autocast ------------------------------------------------------------------------------

AUTOCAST_TOLERANCE = {
    # 8 mantissa bits (bf16) and 11 (fp16) through matmuls and softmax, accumulated in fp32.
    # Measured here (heads 8, head_dim 64, n 256-512): bf16 rel_err 4-5e-3 on bare attention,
    # 9e-4 on a layer; fp16 5-7e-4 and 1e-4. About 4x margin.
    "bfloat16": Tolerance(rel_err=2e-2, min_cosine=0.9998),
    "float16": Tolerance(rel_err=3e-3, min_cosine=0.99999),
}


class AutocastModule:
    """Factory for a module that runs its inner module under torch.autocast (built lazily: torch import)."""

    @staticmethod
    def wrap(inner: nn.Module, device_type: str, dtype: torch.dtype) -> nn.Module:
        import torch

        class Autocast(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: Tensor) -> Tensor:
                with torch.autocast(device_type=device_type, dtype=dtype):
                    return self.inner(*args)

        return Autocast()


def apply_autocast(module: nn.Module, inputs: tuple[Tensor, ...], case: Case, low: str) -> Applied:
    import torch

    _require_torch_backend(case)
    if case.dtype != "float32":
        raise TransformUnsupported(f"autocast to {low} applies to float32 cases; this case is {case.dtype}")
    dtype = getattr(torch, low)
    if not torch.amp.is_autocast_available(case.backend):
        raise TransformUnsupported(f"torch has no autocast for {case.backend}")
    if case.backend == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise TransformUnsupported("this CUDA device does not support bfloat16")
    details = {
        "autocast_dtype": low,
        "device_type": case.backend,
        "what": "matmul-class ops in the low dtype, reductions and softmax as autocast's op lists say",
    }
    return Applied(
        f"autocast_{'bf16' if low == 'bfloat16' else 'fp16'}",
        AutocastModule.wrap(module, case.backend, dtype),
        None,
        details,
        AUTOCAST_TOLERANCE[low],
        metrics_module=module,
    )


# --- int8 dynamic quantisation -------------------------------------------------------------

# Per-tensor int8 weights with activations quantised per call: a few per cent error in what
# each layer adds, diluted by the residual stream. Measured here (layer, heads 8, head_dim
# 64, n 256): rel_err 6e-3 (one layer) to 1.1e-2 (Universal Transformer, 6 applications).
INT8_TOLERANCE = Tolerance(rel_err=3e-2, min_cosine=0.9995)


def apply_int8(module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> Applied:
    import torch
    from torch import nn

    if case.backend != "cpu":
        raise TransformUnsupported(
            f"int8 dynamic quantisation runs on cpu through torch.ao.quantization, not {case.backend}"
        )
    if case.dtype != "float32":
        raise TransformUnsupported(f"int8 dynamic quantisation starts from float32 weights; this case is {case.dtype}")
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
    return Applied("int8", quantised, None, details, INT8_TOLERANCE, metrics_module=quantised)


# --- structured head pruning ---------------------------------------------------------------


def head_importance(layer: nn.Module) -> list[float]:
    """L2 norm of each head's columns of the output projection: how much the head can write
    into the residual stream (the stated criterion; weights only, no data)."""
    w = layer.proj.weight.detach()  # (D, h·d)
    d = layer.head_dim
    return [w[:, i * d : (i + 1) * d].norm().item() for i in range(layer.heads)]


def make_pruned_layer(layer: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of a PreNormLayer that keeps only the heads in `keep` (their q, k, v rows and
    output-projection columns); LayerNorms and the FFN are copied unchanged."""
    import torch
    from torch import nn

    h, d = layer.heads, layer.head_dim
    D = h * d
    attention = layer.attention
    if any(True for _ in attention.parameters()):
        raise TransformUnsupported(f"{attention.name} has per-head weights of its own; pruning them is not implemented")
    shape = dataclasses.replace(attention.shape, heads=len(keep))
    idx = torch.cat([torch.arange(s * D + i * d, s * D + (i + 1) * d) for s in range(3) for i in keep])
    cols = torch.cat([torch.arange(i * d, (i + 1) * d) for i in keep])

    class PrunedLayer(nn.Module):
        """PreNormLayer with fewer heads: QKV (D -> 3·h'·d), attention on h' heads, proj (h'·d -> D)."""

        def __init__(self) -> None:
            super().__init__()
            self.heads, self.head_dim = len(keep), d
            self.attention = type(attention)(attention.params, shape)
            self.norm1 = copy.deepcopy(layer.norm1)
            self.qkv = nn.Linear(D, 3 * len(keep) * d)
            self.proj = nn.Linear(len(keep) * d, D)
            self.norm2 = copy.deepcopy(layer.norm2)
            self.ffn = copy.deepcopy(layer.ffn)
            with torch.no_grad():
                self.qkv.weight.copy_(layer.qkv.weight[idx])
                self.qkv.bias.copy_(layer.qkv.bias[idx])
                self.proj.weight.copy_(layer.proj.weight[:, cols])
                self.proj.bias.copy_(layer.proj.bias)

        def forward(self, x: Tensor) -> Tensor:
            B, n, _ = x.shape
            qkv = self.qkv(self.norm1(x)).view(B, n, 3, self.heads, self.head_dim)  # (B, n, 3, h', d)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h', n, d)
            a = self.attention(q, k, v).transpose(1, 2).reshape(B, n, self.heads * self.head_dim)  # (B, n, h'·d)
            x = x + self.proj(a)
            return x + self.ffn(self.norm2(x))

    return PrunedLayer()


def _needs_layer(module: nn.Module, case: Case, what: str) -> None:
    if case.scope != "layer":
        raise TransformUnsupported(f"{what} needs layer scope (weights to prune); core attention has none")
    if not _is_layer(module):
        raise TransformUnsupported(
            f"{what} is implemented for the pre-norm layer (qkv/proj/ffn); {case.variant} builds "
            f"{type(module).__name__}"
        )


def heads_to_keep(layer: nn.Module, fraction: float) -> tuple[list[int], list[float]]:
    scores = head_importance(layer)
    drop = min(len(scores) - 1, max(1, round(fraction * len(scores))))
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))  # least important first
    return sorted(order[drop:]), scores


# Random (untrained) heads contribute about equally, so removing a quarter of them removes
# about a quarter of the attention's contribution; the residual stream and the FFN keep the
# rest. Measured here (layer, heads 8, head_dim 64, n 256): rel_err 1.3e-2 (what the layer
# adds: 6.7e-2).
PRUNE_HEADS_TOLERANCE = Tolerance(rel_err=5e-2, min_cosine=0.998)


def apply_prune_heads(module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> Applied:
    _require_torch_backend(case)
    _needs_layer(module, case, "head pruning")
    if case.heads < 2:
        raise TransformUnsupported("head pruning needs at least 2 heads")
    keep, scores = heads_to_keep(module, HEAD_PRUNE_FRACTION)
    pruned = make_pruned_layer(module, keep)
    details = {
        "criterion": "L2 norm of each head's output-projection columns (smallest removed)",
        "fraction": HEAD_PRUNE_FRACTION,
        "heads_before": case.heads,
        "heads_after": len(keep),
        "kept_heads": keep,
        "importance": scores,
        "weight_bytes_before": module_bytes(module),
        "weight_bytes_after": module_bytes(pruned),
        "note": "flops in the record are the unpruned model's; the pruned layer does less work",
    }
    return Applied("prune_heads", pruned, None, details, PRUNE_HEADS_TOLERANCE, metrics_module=pruned)


# --- 2:4 semi-structured sparsity ----------------------------------------------------------


def mask_2to4(w: Tensor) -> Tensor:
    """Keep the 2 largest-magnitude weights of every 4 consecutive along the input dimension."""
    rows, cols = w.shape
    groups = w.detach().abs().reshape(rows, cols // 4, 4)
    top = groups.topk(2, dim=-1).indices
    import torch

    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(rows, cols)


# Magnitude 2:4 of unstructured (random, untrained) weights is a large change, unrecovered
# without fine-tuning. The same masks applied densely on the CPU (layer, heads 8, head_dim 64,
# n 256): rel_err 0.118, cosine 0.993 (what the layer adds: rel_err 0.6); fp16/bf16 adds ~1e-3.
PRUNE_24_TOLERANCE = Tolerance(rel_err=0.25, min_cosine=0.97)


def apply_prune_24(module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> Applied:
    import torch
    from torch import nn

    if case.backend != "cuda":
        raise TransformUnsupported(
            "2:4 semi-structured sparse kernels (torch.sparse.to_sparse_semi_structured) need CUDA, "
            f"compute capability 8.0+; not {case.backend}"
        )
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)):
        raise TransformUnsupported("2:4 semi-structured sparsity needs a CUDA device of compute capability 8.0+")
    if case.dtype not in ("float16", "bfloat16"):
        raise TransformUnsupported(f"2:4 semi-structured kernels run float16/bfloat16 here, not {case.dtype}")
    if case.mode != "forward":
        raise TransformUnsupported("2:4 semi-structured weights are inference-only here; forward mode only")
    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TransformUnsupported(f"{case.variant} at {case.scope} scope has no linear layers (use --scope layer)")
    from torch.sparse import to_sparse_semi_structured

    sparse = copy.deepcopy(module).to("cuda", getattr(torch, case.dtype))
    done = []
    for name, lin in [(n, m) for n, m in sparse.named_modules() if isinstance(m, nn.Linear)]:
        w = lin.weight.detach()
        lin.weight = nn.Parameter(to_sparse_semi_structured(w * mask_2to4(w)), requires_grad=False)
        done.append(name)
    details = {
        "method": "magnitude 2:4 mask per 4 input weights, torch.sparse.to_sparse_semi_structured",
        "sparsified_layers": done,
    }
    return Applied("prune_24", sparse, None, details, PRUNE_24_TOLERANCE, metrics_module=sparse)


# --- distillation --------------------------------------------------------------------------

# A half-heads student after 50 Adam steps on synthetic data. Measured here (layer, heads 8,
# head_dim 64, n 256): rel_err 1.7e-2 against its teacher (what the layer adds: 8.7e-2);
# its validation loss falls by ~20% over the steps.
DISTILL_TOLERANCE = Tolerance(rel_err=6e-2, min_cosine=0.998)


def apply_distill(module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
    import torch

    _require_torch_backend(case)
    _needs_layer(module, case, "distillation")
    if case.heads < 2:
        raise TransformUnsupported("distillation to fewer heads needs at least 2 heads")
    t0 = time.perf_counter()
    keep, _ = heads_to_keep(module, DISTILL_HEAD_FRACTION)
    student = make_pruned_layer(module, keep)  # initialised from the teacher's most important heads
    teacher = copy.deepcopy(module).float().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 9)
    D = case.heads * case.head_dim
    n = min(case.seq_len, DISTILL_TRAIN_LEN)
    val = torch.randn(1, n, D, generator=gen)
    # Only the attention projections learn (the FFN and norms are the teacher's, copied): they
    # are what changed, and training them alone keeps the 50 steps to seconds on a CPU.
    student.requires_grad_(False)
    trained = [*student.qkv.parameters(), *student.proj.parameters()]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.Adam(trained, lr=DISTILL_LR)
    with torch.no_grad():
        val_target = teacher(val)
        val_before = torch.nn.functional.mse_loss(student(val), val_target).item()
    losses = []
    for _ in range(DISTILL_STEPS):
        x = torch.randn(1, n, D, generator=gen)
        with torch.no_grad():
            target = teacher(x)
        loss = torch.nn.functional.mse_loss(student(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        val_after = torch.nn.functional.mse_loss(student(val), val_target).item()
    student.requires_grad_(True)
    train_s = time.perf_counter() - t0
    details = {
        "student": f"same layer, {len(keep)} of {case.heads} heads (initialised from the teacher's "
        "most important heads by output-projection norm), same attention variant",
        "kept_heads": keep,
        "objective": "MSE to the teacher's layer output",
        "data": f"synthetic N(0,1) inputs, batch 1, length {n}, seed {seed + 9}, a fresh batch per step",
        "optimizer": f"Adam lr {DISTILL_LR}",
        "trained": "qkv and proj (the attention projections); norms and FFN copied from the teacher",
        "steps": DISTILL_STEPS,
        "loss_first_step": losses[0],
        "loss_last_step": losses[-1],
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "train_s": train_s,
        "weight_bytes_before": module_bytes(module),
        "weight_bytes_after": module_bytes(student),
        "note": "flops in the record are the teacher's; the student does less work",
    }
    return Applied("distill", student, None, details, DISTILL_TOLERANCE, apply_s=train_s, metrics_module=student)


# --- the registry --------------------------------------------------------------------------

Apply = Callable[["nn.Module", "tuple[Tensor, ...]", "Case", int], Applied]

TRANSFORMS: dict[str, tuple[str, Apply | None]] = {
    "none": ("the variant as built (the baseline every transform is compared with)", None),
    "compile": ("torch.compile, inductor, default mode", lambda m, i, c, s: apply_compile(m, i, c, "default")),
    "compile_max_autotune": (
        "torch.compile, inductor, mode max-autotune",
        lambda m, i, c, s: apply_compile(m, i, c, "max-autotune"),
    ),
    "compile_reduce_overhead": (
        "torch.compile, inductor, mode reduce-overhead (CUDA graphs on CUDA)",
        lambda m, i, c, s: apply_compile(m, i, c, "reduce-overhead"),
    ),
    "autocast_bf16": ("torch.autocast to bfloat16", lambda m, i, c, s: apply_autocast(m, i, c, "bfloat16")),
    "autocast_fp16": ("torch.autocast to float16", lambda m, i, c, s: apply_autocast(m, i, c, "float16")),
    "int8": ("dynamic int8 quantisation of linear layers (layer scope, CPU)", lambda m, i, c, s: apply_int8(m, i, c)),
    "prune_heads": (
        f"remove {HEAD_PRUNE_FRACTION:.0%} of heads, smallest output-projection norm first (layer scope)",
        lambda m, i, c, s: apply_prune_heads(m, i, c),
    ),
    "prune_24": ("2:4 semi-structured sparsity of linear weights (CUDA)", lambda m, i, c, s: apply_prune_24(m, i, c)),
    "distill": (
        f"a {DISTILL_HEAD_FRACTION:.0%}-heads student trained {DISTILL_STEPS} steps to match the layer (layer scope)",
        lambda m, i, c, s: apply_distill(m, i, c, s),
    ),
}


def check_names(names: Iterable[str], what: str = "transform") -> tuple[str, ...]:
    """Validated, de-duplicated transform names; ValueError names the bad one and the choices."""
    out = []
    for n in names:
        if n not in TRANSFORMS:
            raise ValueError(f"unknown {what} '{n}'; choose from {', '.join(TRANSFORMS)}")
        out.append(n)
    return tuple(dict.fromkeys(out))


def apply_transform(case: Case, module: nn.Module, inputs: tuple[Tensor, ...], seed: int) -> Applied:
    """The case's transform applied to its freshly built module (float32, on the CPU).

    The untransformed module is copied first: backend.prepare moves and casts modules in
    place, and the fidelity check needs the original in float64.
    """
    name = getattr(case, "transform", "none")
    if name == "none":
        return Applied("none", module, None, metrics_module=module)
    _, fn = TRANSFORMS[name]
    assert fn is not None
    reference = copy.deepcopy(module)
    t0 = time.perf_counter()
    applied = fn(module, inputs, case, seed)
    applied.apply_s = time.perf_counter() - t0
    applied.reference = reference
    applied.details["apply_s"] = applied.apply_s
    return applied


# --- the trade-off figure ------------------------------------------------------------------


def _get(rec: Any, key: str) -> Any:
    if isinstance(rec, dict):
        return rec.get(key)
    if hasattr(rec, key):
        return getattr(rec, key)
    return getattr(rec, "extra", {}).get(key)


_CONFIG_KEYS = ("variant", "backend", "dtype", "mode", "scope", "batch", "heads", "head_dim", "seq_len", "threads")


def _config(rec: Any) -> tuple:
    import json

    return (*(_get(rec, k) for k in _CONFIG_KEYS), json.dumps(_get(rec, "params"), sort_keys=True))


def tradeoff_points(cases: Iterable[Any]) -> list[dict[str, Any]]:
    """One point per ok transformed case with an ok untransformed case of the same configuration:
    speedup (baseline median / median), peak-memory and weight saving, and fidelity loss.

    Accepts stored records as dicts or as results.CaseRecord (load_run(...).cases).
    """
    cases = list(cases)
    base = {
        _config(r): r
        for r in cases
        if (_get(r, "transform") or "none") == "none" and _get(r, "status") == "ok" and _get(r, "time_s")
    }
    points = []
    for r in cases:
        t = _get(r, "transform") or "none"
        if t == "none" or _get(r, "status") != "ok" or not _get(r, "time_s"):
            continue
        b = base.get(_config(r))
        if b is None:
            continue
        fid = _get(r, "fidelity") or {}
        details = _get(r, "transform_details") or {}
        peak, base_peak = _get(r, "peak_memory_bytes"), _get(b, "peak_memory_bytes")
        wb, wa = details.get("weight_bytes_before"), details.get("weight_bytes_after")
        points.append(
            {
                "variant": _get(r, "variant"),
                "transform": t,
                "seq_len": _get(r, "seq_len"),
                "scope": _get(r, "scope"),
                "dtype": _get(r, "dtype"),
                "mode": _get(r, "mode"),
                "case_id": _get(r, "case_id"),
                "baseline_case_id": _get(b, "case_id"),
                "speedup": _get(b, "time_s")["median"] / _get(r, "time_s")["median"],
                "memory_saving": 1 - peak / base_peak if peak is not None and base_peak else None,
                "weight_saving": 1 - wa / wb if wa is not None and wb else None,
                "rel_err": fid.get("rel_err"),
                "cosine": fid.get("cosine"),
                "within_tolerance": fid.get("within"),
                "stable": bool(_get(r, "stable")) and bool(_get(b, "stable")),
            }
        )
    return points


def tradeoff_figure(cases: Iterable[Any]) -> Figure:
    """Speedup (left) and peak-memory saving (right) against fidelity loss (relative error vs
    the untransformed model in float64), one point per transform and variant; hollow markers
    flag cases beyond their transform's tolerance."""
    from matplotlib.figure import Figure

    points = tradeoff_points(cases)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    if not points:
        for ax in (ax_t, ax_m):
            ax.text(0.5, 0.5, "no transformed case with an ok baseline", ha="center", va="center")
            ax.set_axis_off()
        return fig
    transforms = sorted({p["transform"] for p in points})
    variants = sorted({p["variant"] for p in points})
    markers = "osD^vP*Xh<>"
    colours = [f"C{i}" for i in range(10)]
    floor = 1e-9  # exact transforms (rel_err 0) still get a place on the log axis
    for ax, key, label in (
        (ax_t, "speedup", "speedup over untransformed (×)"),
        (ax_m, "memory_saving", "peak-memory saving vs untransformed"),
    ):
        for p in points:
            y = p[key]
            if y is None or p["rel_err"] is None:
                continue
            c = colours[transforms.index(p["transform"]) % len(colours)]
            mk = markers[variants.index(p["variant"]) % len(markers)]
            within = p["within_tolerance"]
            ax.scatter(
                max(p["rel_err"], floor),
                y,
                marker=mk,
                s=60,
                facecolors=c if within else "none",
                edgecolors=c,
                alpha=1.0 if p["stable"] else 0.5,
            )
        ax.set_xscale("log")
        ax.set_xlabel("fidelity loss: relative error vs float64 untransformed (log)")
        ax.set_ylabel(label)
        ax.axhline(1.0 if key == "speedup" else 0.0, color="grey", lw=0.8, ls="--")
        ax.grid(True, which="both", alpha=0.3)
    if any(p["speedup"] > 0 for p in points):
        ax_t.set_yscale("log")
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colours[i % len(colours)], marker="o", ls="", label=t) for i, t in enumerate(transforms)
    ]
    handles += [
        Line2D([], [], color="black", marker=markers[i % len(markers)], ls="", label=v) for i, v in enumerate(variants)
    ]
    handles.append(Line2D([], [], color="black", marker="o", ls="", mfc="none", label="hollow: beyond tolerance"))
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    seq = sorted({p["seq_len"] for p in points})
    fig.suptitle(f"Transform trade-offs (n = {', '.join(map(str, seq))}; faded: unstable timing)")
    return fig
