"""Measuring a device's peaks for `bench calibrate`: peak matmul rate per dtype and memory
bandwidth, each the best of several timed repetitions at a few sizes (a ceiling is a
maximum, not a typical value), timed with the backend's own clock and synchronisation.
The results are cached per machine fingerprint (attnbench.backends.peaks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attnbench.backends.peaks import now_iso, save_calibration
from attnbench.core.cases import Case

if TYPE_CHECKING:
    from attnbench.backends.base import Backend

MATMUL_SIZES = {"cpu": (512, 1024, 2048), "cuda": (2048, 4096, 8192), "xla": (1024, 2048, 4096)}
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20, "xla": 256 * 2**20}
REPEATS = 5


def calibrate(
    backend_cls: type[Backend],
    dtypes: tuple[str, ...],
    threads: int | None,
    quick: bool,
    starting: Callable[[dict[str, Any]], None] = lambda device: None,
) -> dict[str, Any]:
    """Measure the backend's device, cache the figures, and return them (device_name included).
    `starting` is told the device (backend.describe()) before the measuring starts."""
    backend = backend_cls()
    settings = backend.setup(Case("calibrate", (), "core", backend.name, dtypes[0], "forward", 1, 1, 1, 1, threads))
    desc = backend.describe()
    starting(desc)
    entry = measure_device(backend, dtypes, quick)
    entry.update(calibrated_at=now_iso(), threads=settings.get("threads"), device_name=desc["name"])
    save_calibration(backend.peak_key(), entry)
    return entry


def _best_rate(timer: Any, step: Any, work: float, repeats: int) -> float:
    """Work per second of the fastest of `repeats` timed calls, after one warm-up call."""
    timer.time(step, 1)
    best = min(timer.time(step, 1) for _ in range(repeats))
    return work / best


def measure_device(backend: Any, dtypes: tuple[str, ...], quick: bool) -> dict[str, Any]:
    import torch

    from attnbench.backends.base import DTYPES

    kind = backend.name
    device = backend.device
    timer = backend.timer()
    sync = getattr(backend, "synchronize", lambda: None)
    sizes = MATMUL_SIZES.get(kind, MATMUL_SIZES["cpu"])
    repeats = 2 if quick else REPEATS
    if quick:
        sizes = sizes[:2]
    flops: dict[str, float] = {}
    per_size: dict[str, dict[str, float]] = {}
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        rates = {}
        for n in sizes:
            a = torch.randn(n, n, dtype=dtype, device=device)
            b = torch.randn(n, n, dtype=dtype, device=device)

            def mm(a: Any = a, b: Any = b) -> Any:
                return a @ b

            rates[str(n)] = _best_rate(timer, mm, 2.0 * n**3, repeats)
            del a, b
        per_size[dtype_name] = rates
        flops[dtype_name] = max(rates.values())
    nbytes = COPY_BYTES.get(kind, COPY_BYTES["cpu"]) // (8 if quick else 1)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)

    def copy() -> Any:
        return dst.copy_(src)

    bandwidth = _best_rate(timer, copy, 2.0 * src.numel() * 4, repeats)  # one read and one write per element
    sync()
    return {
        "matmul_flops_per_s": flops,
        "matmul_by_size": per_size,
        "memory_bytes_per_s": bandwidth,
        "method": (
            f"best of {repeats} timed calls ({timer.clock}; {timer.sync}): square matmuls of n={list(sizes)} "
            f"(2n^3 FLOP), and a {nbytes / 2**20:.0f} MiB float32 copy (read + write bytes)"
        ),
    }
