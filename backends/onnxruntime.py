"""The `onnxruntime` backend: export through torch.onnx (dynamo), time the session's own run.

Export uses one shared dynamic dimension for the sequence length and opset 23, whose
`Attention` op keeps SDPA fused. The exported file is cached on disk by a hash of
everything that shapes the graph (variant, parameters, scope, dtype, opset, shape,
weights, library versions). A graph traced at one length can silently bake in a shape
branch (a padding step skipped because the traced length was a multiple of the window,
a dense fallback for short inputs), so before a case is timed its session is compared
with torch eager at the case's length and at a nearby odd length that is a multiple of
no window or block; a graph that is wrong or refuses the other length is `unsupported`,
with the numbers that show it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import psutil
import torch
from torch import Tensor, nn

from attnbench.backends.base import (
    DTYPES,
    Availability,
    Backend,
    EnergyMeter,
    MemoryMeter,
    Option,
    Step,
    Timer,
    parse_list,
)
from attnbench.backends.cpu import RssPeakMeter
from attnbench.backends.energy import rapl_meter, rapl_status
from attnbench.backends.peaks import cache_dir, peaks_for
from attnbench.core.cases import Case
from attnbench.core.environment import cpu_model
from attnbench.core.registry import register_backend

OPT_LEVELS = ("disable", "basic", "extended", "all")
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
CHECK_TOLERANCE = {"float32": 1e-3, "float16": 2e-2}  # relative to 1 + max |eager output|


class ExportUnsupported(Exception):
    """The variant does not export to a correct dynamic-length ONNX graph; the message says why."""


def _opt_level(text: str) -> str:
    level = str(text).strip().lower()
    if level not in OPT_LEVELS:
        raise ValueError(f"expected one of {', '.join(OPT_LEVELS)}")
    return level


def seq_axis(t: Tensor) -> int:
    """Sequence axis of a workload input: q/k/v are (B, h, n, d), layer inputs (B, n, D)."""
    return 2 if t.dim() == 4 else 1


def _first_line(exc: BaseException) -> str:
    """The innermost cause's first line: exporters wrap the real reason in boilerplate."""
    inner = exc
    seen = {id(inner)}
    while (inner.__cause__ or inner.__context__) is not None and id(inner.__cause__ or inner.__context__) not in seen:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
        seen.add(id(inner))
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip() and not ln.strip().startswith("- ")]
    text = lines[0] if lines else ""
    where = f"{type(exc).__name__} <- {type(inner).__name__}" if inner is not exc else type(exc).__name__
    return f"{where}: {text}"[:400]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_state(path: Path) -> str:
    """Whether a cached export can be used: "ok", "missing", or why not (then it is exported
    again). A file truncated by a full disk or edited by hand no longer matches its digest."""
    if not path.exists():
        return "missing"
    digest = _digest_path(path)
    if not digest.exists():
        return "re-exported: the cached file had no digest (an export cut short, or an older cache)"
    if digest.read_text().strip() != _file_digest(path):
        return "re-exported: the cached file did not match its digest (damaged)"
    return "ok"


def _state_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict(keep_vars=False).items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _source_digest(module: nn.Module) -> str:
    import inspect

    h = hashlib.sha256()
    for cls in type(module).__mro__:
        if cls.__module__.startswith(("workloads", "backends")) or "plugins" in cls.__module__:
            with contextlib.suppress(OSError, TypeError):
                h.update(inspect.getsource(cls).encode())
    return h.hexdigest()[:16]


class OrtTimer(Timer):
    clock: ClassVar[str] = "time.perf_counter around InferenceSession.run_with_iobinding"
    sync: ClassVar[str] = "run returns after ONNX Runtime synchronises its execution providers (its default)"

    def time(self, step: Step, calls: int) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        return time.perf_counter() - t0


@register_backend
class OnnxRuntimeBackend(Backend):
    name: ClassVar[str] = "onnxruntime"
    summary: ClassVar[str] = "torch.onnx (dynamo) export, timed in an ONNX Runtime session (inference)"
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "float16")
    modes: ClassVar[tuple[str, ...]] = ("forward",)
    records_aten_ops: ClassVar[bool] = False
    in_available: ClassVar[bool] = False  # each new shape costs an export of seconds: run it when named
    profiler: ClassVar[str] = "onnxruntime"
    options: ClassVar[dict[str, Option]] = {
        "providers": Option(
            ("CPUExecutionProvider",),
            "execution providers in priority order, e.g. CUDAExecutionProvider,CPUExecutionProvider",
            parse_list,
        ),
        "opt_level": Option("all", "graph optimisation level: disable, basic, extended, all", _opt_level),
        "opset": Option(23, "ONNX opset of the export (23 has the fused Attention op)", int),
    }

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._threads = 1
        self._memory_phase = False
        self._details: dict[str, Any] = {}
        self._sessions: dict[str, Any] = {}
        self._profile_prefix: str | None = None  # set in the profile worker only

    @classmethod
    def availability(cls) -> Availability:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as exc:
            return Availability(False, f"{exc.name} is not installed (pip install 'attnbench[onnx]')")
        return Availability(True)

    @classmethod
    def free_memory_bytes(cls) -> int | None:
        return psutil.virtual_memory().available

    def supports(self, case: Case) -> str | None:
        reason = super().supports(case)
        if reason:
            return reason
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.opts["providers"] if p not in available]
        if missing:
            return f"execution provider {', '.join(missing)} not in this onnxruntime build (has {', '.join(available)})"
        if case.dtype == "float16" and not any(p in GPU_PROVIDERS for p in self.opts["providers"]):
            return "float16 needs a GPU execution provider; the CPU provider lacks float16 kernels for most ops"
        return None

    def setup(self, case: Case) -> dict[str, Any]:
        import onnxruntime as ort

        self._threads = case.threads or psutil.cpu_count(logical=False) or 1
        torch.set_num_threads(self._threads)  # for the export and the eager comparison
        return {
            "threads": self._threads,
            "providers": list(self.opts["providers"]),
            "graph_optimization_level": self.opts["opt_level"],
            "opset": self.opts["opset"],
            "onnxruntime": ort.__version__,
        }

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # torch side: inputs and the eager comparison

    @property
    def on_gpu(self) -> bool:
        return self.opts["providers"][0] in GPU_PROVIDERS

    # --- export and session -------------------------------------------------------------

    def _cache_key(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> str:
        import onnx
        import onnxruntime as ort

        blob = {
            "variant": case.variant,
            "params": case.params_dict,
            "scope": case.scope,
            "dtype": case.dtype,
            "opset": self.opts["opset"],
            "shapes": [list(t.shape) for t in inputs],
            "weights": _state_digest(module),
            "source": _source_digest(module),
            "versions": [torch.__version__, onnx.__version__, ort.__version__, _version("onnxscript")],
            # how the graph is made: this module's own code (export options, dynamic dims)
            "exporter": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]

    def _export(self, module: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> None:
        n = torch.export.Dim("seq_len", min=2, max=1 << 20)
        dynamic = tuple({seq_axis(t): n} for t in inputs)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{psutil.Process().pid}.tmp")
        # The exporter reports progress and fallbacks through print, warnings and logging.
        quiet = io.StringIO()
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(quiet),
                contextlib.redirect_stderr(quiet),
                _logging_off(),
            ):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    module,
                    inputs,
                    dynamo=True,
                    dynamic_shapes=dynamic,
                    opset_version=self.opts["opset"],
                    optimize=True,
                    verbose=False,
                )
                if program is None:
                    raise ExportUnsupported("torch.onnx.export returned no program")
                program.save(str(tmp))
        except ExportUnsupported:
            raise
        except Exception as exc:
            raise ExportUnsupported(f"torch.onnx.export (dynamo) failed: {_first_line(exc)}") from None
        digest = _file_digest(tmp)
        tmp.replace(path)
        _digest_path(path).write_text(digest + "\n")  # written last: an entry without it is incomplete

    def _session_options(self) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self._threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.opts["opt_level"]]
        so.log_severity_level = 4  # failures surface as exceptions, which the case records
        if self._profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = self._profile_prefix
        if self._memory_phase:
            # The arena and memory patterns keep blocks across runs; without them the process
            # peak follows what this call allocates.
            so.enable_cpu_mem_arena = False
            so.enable_mem_pattern = False
        return so

    def session(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> Any:
        """The (cached) exported graph in a session, checked against eager at two lengths."""
        import onnx
        import onnxruntime as ort

        module = module.to(torch.device("cpu"), DTYPES[case.dtype]).eval()
        key = self._cache_key(module, inputs, case)
        if key in self._sessions:
            return self._sessions[key]
        path = cache_dir() / "onnx" / f"{key}.onnx"
        cache_state = _cached_state(path)  # "ok", "missing", or why the entry cannot be trusted
        cached = cache_state == "ok"
        t0 = time.perf_counter()
        if not cached:
            self._export(module, inputs, path)
        export_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        so = self._session_options()
        try:
            sess = ort.InferenceSession(str(path), sess_options=so, providers=list(self.opts["providers"]))
        except Exception as exc:
            raise ExportUnsupported(f"ONNX Runtime could not load the exported graph: {_first_line(exc)}") from None
        session_s = time.perf_counter() - t1
        graph_ops: dict[str, int] = {}
        for node in onnx.load(str(path), load_external_data=False).graph.node:
            graph_ops[node.op_type] = graph_ops.get(node.op_type, 0) + 1
        check = self._check(sess, module, inputs, case)
        self._details = {
            "onnx_file": str(path),
            "export_cached": cached,
            "export_cache": cache_state if cache_state != "ok" else "hit",
            "export_s": None if cached else export_s,
            "session_s": session_s,
            "providers_used": sess.get_providers(),
            "graph_ops": dict(sorted(graph_ops.items())),
            "export_check": check,
        }
        self._sessions[key] = sess
        return sess

    def _run(self, sess: Any, inputs: tuple[Tensor, ...]) -> Tensor:
        feed = {i.name: t.detach().cpu().numpy() for i, t in zip(sess.get_inputs(), inputs, strict=True)}
        return torch.from_numpy(sess.run(None, feed)[0])

    def _check(self, sess: Any, module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> dict[str, Any]:
        """Session vs torch eager at the export length and at an odd length (a multiple of no block)."""
        n = inputs[0].shape[seq_axis(inputs[0])]
        other = n - 1 if n % 2 == 0 else n - 2
        tol = CHECK_TOLERANCE[case.dtype]
        gen = torch.Generator().manual_seed(1234)
        results = []
        for length in (n, other):
            if length < 2:
                continue
            xs = tuple(
                torch.randn(*(length if i == seq_axis(t) else s for i, s in enumerate(t.shape)), generator=gen).to(
                    t.dtype
                )
                for t in inputs
            )
            with torch.no_grad():
                expected = module(*xs).float()
            try:
                got = self._run(sess, xs).float()
            except Exception as exc:
                why = (
                    "the exported graph fails at its own export length"
                    if length == n
                    else f"the exported graph does not run at n={length} (exported at n={n}; the sequence length "
                    "was fixed or a shape was baked in)"
                )
                raise ExportUnsupported(f"{why}: {_first_line(exc)}") from None
            if got.shape != expected.shape:
                raise ExportUnsupported(
                    f"the exported graph returns shape {tuple(got.shape)} at n={length}, eager {tuple(expected.shape)}"
                )
            err = (got - expected).abs().max().item()
            bound = tol * (1 + expected.abs().max().item())
            if not err <= bound:
                raise ExportUnsupported(
                    f"the exported graph disagrees with torch eager at n={length} (exported at n={n}): max abs "
                    f"error {err:.3g} > {bound:.3g}; a length-dependent branch was baked in at export"
                )
            results.append({"seq_len": length, "max_abs_err": err, "bound": bound})
        return {"against": "torch eager, same weights and inputs", "lengths": results}

    # --- the backend contract ----------------------------------------------------------

    def infer(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> Tensor:
        try:
            sess = self.session(module, inputs, case)
        except ExportUnsupported as exc:
            from attnbench.core.errors import Unsupported

            raise Unsupported(str(exc)) from None
        return self._run(sess, inputs)

    def prepare(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> Step:
        import onnxruntime as ort

        try:
            sess = self.session(module, inputs, case)
        except ExportUnsupported as exc:
            from attnbench.core.errors import Unsupported

            raise Unsupported(str(exc)) from None
        binding = sess.io_binding()
        device = "cuda" if self.on_gpu else "cpu"
        for meta, t in zip(sess.get_inputs(), inputs, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(t.detach().cpu().numpy(), device, 0)
            binding.bind_ortvalue_input(meta.name, value)
        for meta in sess.get_outputs():
            binding.bind_output(meta.name, device)  # allocated by the run, as torch allocates its output

        def step() -> object:
            sess.run_with_iobinding(binding)
            return None

        return step

    def compile_seconds(self, prepare_s: float, first_call_s: float) -> float:
        d = self._details
        return (d.get("export_s") or 0.0) + d.get("session_s", 0.0) if d else prepare_s

    def details(self) -> dict[str, Any]:
        out = dict(self._details)
        if out.get("graph_ops"):
            out["attention_ops"] = {
                k: v
                for k, v in out["graph_ops"].items()
                if k in ("Attention", "MultiHeadAttention", "Softmax", "MatMul")
            }
        return out

    def start_profiling(self, folder: Path) -> None:
        self._profile_prefix = str(folder / "ort_session")

    def end_profiling(self) -> list[str]:
        """Stop the sessions' profiling; the JSON trace files they wrote."""
        return [sess.end_profiling() for sess in self._sessions.values()] if self._profile_prefix else []

    def timer(self) -> Timer:
        return OrtTimer()

    def memory_meter(self) -> MemoryMeter:
        if self.on_gpu:
            from attnbench.backends.base import MemoryReading

            class _Null(MemoryMeter):
                def start(self) -> None:
                    pass

                def stop(self) -> MemoryReading:
                    return MemoryReading(None, "none", "device memory of GPU execution providers is not metered yet")

            return _Null()
        backend = self

        class _OrtRss(RssPeakMeter):
            def prepare_process(self) -> None:
                backend._memory_phase = True
                super().prepare_process()

            def stop(self) -> Any:
                reading = super().stop()
                from dataclasses import replace

                return replace(
                    reading,
                    method=reading.method + "; ONNX Runtime CPU arena and memory patterns off in the memory worker",
                )

        return _OrtRss()

    def energy_meter(self) -> EnergyMeter:
        if self.on_gpu:
            from attnbench.backends.cuda import nvml_energy_meter

            return nvml_energy_meter(0)
        return rapl_meter()

    def peak_key(self) -> str:
        return "cpu"  # the CPU provider runs on the host CPU the cpu backend calibrates

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        name = cpu_model() if not self.on_gpu else f"{self.opts['providers'][0]} device 0"
        return {
            "backend": self.name,
            "name": name,
            "kind": "gpu" if self.on_gpu else "cpu",
            "onnxruntime": ort.__version__,
            "providers": list(self.opts["providers"]),
            "available_providers": ort.get_available_providers(),
            "peaks": peaks_for(self.peak_key(), name)
            if not self.on_gpu
            else {"source": None, "reason": "GPU provider peaks are recorded by the cuda backend"},
        }

    @classmethod
    def environment(cls) -> dict[str, Any]:
        avail = cls.availability()
        if not avail.available:
            return {}
        import onnxruntime as ort

        method, reason = rapl_status()
        return {
            "device": cpu_model(),
            "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
            "providers_available": ort.get_available_providers(),
            "clock": OrtTimer.clock,
            "memory_method": RssPeakMeter().method + " (CPU provider; arena off in the memory worker)",
            "energy_method": method,
            "energy_reason": reason,
            "peaks": peaks_for("cpu", cpu_model()),
        }


@contextlib.contextmanager
def _logging_off() -> Any:
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)
