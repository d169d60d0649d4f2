#!/usr/bin/env bash
# The CUDA checks in one go on a GPU machine (under five minutes on one current GPU):
# backend tests (events vs host clock, allocator peak, NVML match), a smoke sweep on cuda
# with energy and memory, and a calibration against the datasheet.
# Needs a CUDA build of torch in the active environment: pip install -e '.[dev]' there.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/attnbench-gpu-check}
mkdir -p "$out"
export ATTNBENCH_CACHE_DIR="$out/cache" ATTNBENCH_HISTORY="$out/history.sqlite" PYTHONUNBUFFERED=1
python - <<'PY' || { echo "no CUDA device visible to torch: nothing to check"; exit 2; }
import torch
assert torch.cuda.is_available(), "no CUDA"
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
PY
rc=0
echo "== bench env"; bench env | tail -30
echo "== pytest -m gpu"; python -m pytest -m gpu -q tests/test_cuda.py 2>&1 | tee "$out/pytest.log" || rc=1
echo "== bench calibrate --backends cuda"; bench calibrate --backends cuda --quick 2>&1 | tee "$out/calibrate.log" || rc=1
echo "== bench run --suite smoke --backends cuda"
bench run --suite smoke --backends cuda --dtypes float32,bfloat16 --out "$out/smoke" 2>&1 | tail -40 || rc=1
python - "$out/smoke" <<'PY' || rc=1
import json, sys, pathlib
recs = [json.loads(l) for l in (pathlib.Path(sys.argv[1]) / "cases.jsonl").read_text().splitlines()]
ok = [r for r in recs if r["status"] == "ok"]
print(f"{len(ok)}/{len(recs)} ok; energy non-null in {sum(r['energy_j'] is not None for r in ok)}")
for r in ok[:40]:
    f = r.get("fraction_of_peak") or {}
    print(f"{r['variant']:28} {r['dtype']:9} n={r['seq_len']:<5} {r['time_s']['median']*1e3:8.3f} ms "
          f"peak {r['peak_memory_bytes']/2**20:8.1f} MiB  energy/call {r['energy_j']}  "
          f"flops frac {f.get('flops')}  kernels {list((r.get('attention_ops') or {}))[:2]}")
assert len(ok) >= 0.8 * len(recs)
assert all(r["energy_j"] is not None for r in ok), "an ok case without energy on a GPU with NVML"
PY
echo "gpu_check: $([[ $rc -eq 0 ]] && echo passed || echo FAILED)"
exit $rc
