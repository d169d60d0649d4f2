#!/usr/bin/env bash
# The CUDA checks in one go on a GPU machine (about ten minutes on an H200; give AA=1 its own call):
# backend tests (events vs host clock, allocator peak, NVML match, the CUDA profiler, 2:4
# sparsity), a calibration against the datasheet, a smoke sweep on cuda with energy and
# memory, and (AA=1) an A/A + injected-slowdown experiment on cuda and on the host CPU.
# Works in a venv with `pip install -e '.[dev]'` or, with no install at all, from the
# checkout with a python that has torch (CUDA build), nvidia-ml-py, rich, psutil, numpy.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=${OUT:-/tmp/attnbench-gpu-check}
mkdir -p "$out"
export ATTNBENCH_CACHE_DIR="$out/cache" ATTNBENCH_HISTORY="$out/history.sqlite" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
# This checkout's code, installed or not: its folders are not its import names (harness/ is the
# package attnbench), so `python -m attnbench` imports it through an import root of links to
# them (harness/core/layout.py), first on PYTHONPATH; the checkout itself for the tests package.
import_root=$(mktemp -d)
trap 'rm -rf "$import_root"' EXIT
"$py" harness/core/layout.py . "$import_root" >/dev/null || { echo "cannot make an import root in $import_root"; exit 2; }
export PYTHONPATH="$import_root:$PWD${PYTHONPATH:+:$PYTHONPATH}"
bench() { "$py" -m attnbench "$@"; }
"$py" - <<'PY' || { echo "no CUDA device visible to torch: nothing to check"; exit 2; }
import torch
assert torch.cuda.is_available(), "no CUDA"
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
PY
rc=0
echo "== bench env"; bench env 2>&1 | tail -30
echo "== bench list"; bench list 2>&1 | grep -i -A12 backend | head -20
echo "== kernel libraries for --impls flash_attn,xformers"
# Already installed, else from wheels in $KERNEL_WHEELS (default .whl/: the GPU machines here reach
# no package index, so wheels are carried there), else from PyPI where there is a network. Binary
# wheels only and --no-deps, one package at a time: nothing compiles (flash-attn's source build takes
# an hour) and the machine's torch is never replaced. A library still missing is skipped, and its
# tests skip saying so.
kernel_libs() {
  "$py" - <<'PY'
import importlib
for module, package in (("flash_attn", "flash-attn"), ("xformers", "xformers")):
    try:
        lib = importlib.import_module(module)
        print(f"{module}: {getattr(lib, '__version__', 'installed')}")
    except Exception as exc:
        print(f"{module}: not installed ({type(exc).__name__}) {package}")
PY
}
wheels=${KERNEL_WHEELS:-.whl}
for package in $(kernel_libs | awk '/not installed/ {print $NF}'); do
  if compgen -G "$wheels/${package//-/_}-*.whl" >/dev/null; then
    timeout 120 "$py" -m pip install -q --no-index --no-deps --find-links "$wheels" "$package"
  else
    timeout 60 "$py" -m pip install -q --no-deps --only-binary=:all: --retries 0 --timeout 10 "$package"
  fi >>"$out/pip-kernels.log" 2>&1 || echo "pip could not install $package (no network, or no wheel for this torch; $out/pip-kernels.log)"
done
kernel_libs | sed -E 's/ not installed \(([A-Za-z]+)\) .*/ not installed (\1): skipped/'
echo "== pytest -m gpu"
# The smoke suite runs once, below (test_smoke_suite_on_cuda is the same sweep: about five minutes
# on an H200, a fresh worker per case paying CUDA's start).
# tests/test_impl_gpu_kernels.py skips at once without its libraries; with both, about a minute more.
timeout 330 "$py" -m pytest -p no:cacheprovider -m gpu -q -rs --durations=5 -k "not smoke_suite" tests/test_cuda.py \
    tests/test_profile.py::test_bench_profile_cuda tests/test_transforms.py::test_two_four_on_cuda_within_tolerance \
    tests/test_memory_estimate.py \
    tests/test_flex.py \
    tests/test_impl_gpu_kernels.py \
    2>&1 | tee "$out/pytest.log" | tail -40 || rc=1
echo "== bench calibrate --backends cuda"; timeout 120 "$py" -m attnbench calibrate --backends cuda --quick 2>&1 | tail -20 || rc=1
echo "== bench run --suite smoke --backends cuda"
timeout 360 "$py" -m attnbench run --suite smoke --backends cuda --dtypes float32,bfloat16 --out "$out/smoke" 2>&1 | tail -25 || rc=1
"$py" - "$out/smoke" <<'PY' || rc=1
import json, sys, pathlib
recs = [json.loads(l) for l in (pathlib.Path(sys.argv[1]) / "cases.jsonl").read_text().splitlines()]
ok = [r for r in recs if r["status"] == "ok"]
print(f"{len(ok)}/{len(recs)} ok; energy non-null in {sum(r['energy_j'] is not None for r in ok)}")
for r in recs:
    if r["status"] != "ok":
        print("NOT OK", r["variant"], r["dtype"], r["seq_len"], r["status"], (r["reason"] or "")[:200])
for r in ok:
    f = r.get("fraction_of_peak") or {}
    print(f"{r['variant']:28} {r['dtype']:9} n={r['seq_len']:<5} {r['time_s']['median']*1e3:8.3f} ms "
          f"peak {r['peak_memory_bytes']/2**20:8.1f} MiB energy {r['energy_j']} frac {f.get('flops')} "
          f"ops {list((r.get('attention_ops') or {}))[:2]}")
assert len(ok) >= 0.8 * len(recs)
assert all(r["energy_j"] is not None for r in ok), "an ok case without energy on a GPU with NVML"
PY
echo "== bench quality --backends cuda (training on the GPU: the quality phase's timer and memory meter)"
timeout 240 "$py" -m attnbench quality --backends cuda --tasks retrieval --variants full.sdpa,sparse.sliding_window \
    --seq-lens 256 --steps 60 --seeds 1 --out "$out/quality" 2>&1 | tail -12 || rc=1
"$py" - "$out/quality" <<'PY' || rc=1
import json, sys, pathlib
recs = [json.loads(l) for l in (pathlib.Path(sys.argv[1]) / "quality.jsonl").read_text().splitlines()]
for r in recs:
    print(r["variant"], r["status"], r["accuracy"], r["step_time_s"] and r["step_time_s"]["median"],
          r["peak_memory_bytes"], r["memory_method"], (r["reason"] or "")[:160])
assert all(r["status"] == "ok" and r["device"]["kind"] != "cpu" for r in recs), "quality on cuda"
PY
if [[ ${AA:-0} == 1 ]]; then
  for be in cuda cpu; do
    echo "== A/A and injected slowdown on $be"
    timeout 200 "$py" tools/aa_experiment.py --backends "$be" --reps 3 --passes 6 --budget 2 --seq-lens 64,256 \
        --out "$out/aa-$be" 2>&1 | tail -20
    (cd "$out" && tar czf "aa-$be.tgz" "aa-$be" && rm -rf "aa-$be")
  done
fi
(cd "$out" && tar czf smoke.tgz smoke quality && rm -rf smoke quality cache)
echo "gpu_check: $([[ $rc -eq 0 ]] && echo passed || echo FAILED)"
exit $rc
