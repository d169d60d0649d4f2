"""torch.compile (inductor) as a transform, in its three modes; the kernels the generated code
calls are read back for the record."""

from __future__ import annotations

import re
import shutil
import time
from typing import TYPE_CHECKING, Any

from attnbench.engine.transforms.base import Applied, Transform, TransformUnsupported, require_torch_backend
from attnbench.engine.transforms.fidelity import Tolerance
from attnbench.engine.transforms.registry import register_transform

if TYPE_CHECKING:
    from torch import Tensor, nn

    from attnbench.core.cases import Case

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


@register_transform
class Compile(Transform):
    name = "compile"
    summary = "torch.compile, inductor, default mode"
    mode = "default"  # torch.compile's mode

    def apply(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
        import torch

        mode = self.mode
        require_torch_backend(case)
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
            self.name,
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


@register_transform
class CompileMaxAutotune(Compile):
    name = "compile_max_autotune"
    summary = "torch.compile, inductor, mode max-autotune"
    mode = "max-autotune"


@register_transform
class CompileReduceOverhead(Compile):
    name = "compile_reduce_overhead"
    summary = "torch.compile, inductor, mode reduce-overhead (CUDA graphs on CUDA)"
    mode = "reduce-overhead"
