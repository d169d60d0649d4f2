"""Time Hugging Face's Longformer, BigBird and Reformer self-attention against attnbench's
sparse variants at the same configuration, on this machine, in one process.

transformers is not a dependency of attnbench. Run this in an environment that has it:

    python -m venv /tmp/hf && /tmp/hf/bin/pip install 'torch>=2.4,<2.14' transformers
    /tmp/hf/bin/pip install --no-deps -e . && /tmp/hf/bin/pip install psutil rich
    /tmp/hf/bin/python tools/compare_hf.py --seq-lens 4096,8192 --out /tmp/hf.json

Both sides include their input projections (HF's self-attention modules project Q, K, V
themselves; ours get the same nn.Linear layers in front), float32, forward, eval mode,
no gradients, the same thread count, and are timed by the harness's own warm-up and
adaptive sampling (median of samples, each a block of calls of at least 20 ms).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
from torch import nn

from attnbench.backends.cpu import PerfCounterTimer
from attnbench.core.registry import get_workload
from attnbench.core.settings import SamplingPolicy
from attnbench.engine.timing import sample, warm_up
from attnbench.workloads.base import Shape

D, H = 512, 8


class Projected(nn.Module):
    """Q, K, V projections in front of one of our variants (LSH shares Q and K)."""

    def __init__(self, variant: str, params: dict, n: int, shared_qk: bool = False) -> None:
        super().__init__()
        cls = get_workload(variant)
        shape = Shape(1, H, D // H, n)
        values = cls.resolve_params({**cls.default_params(), **params}, shape)
        self.attention = cls(cls.make_params(values), shape)
        self.q = nn.Linear(D, D)
        self.k = None if shared_qk else nn.Linear(D, D)
        self.v = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, n, H, D // H).transpose(1, 2)  # (B, h, n, d)

        q = heads(self.q(x))
        k = q if self.k is None else heads(self.k(x))
        return self.attention(q, k, heads(self.v(x)))


def hf_longformer(n: int, window: int) -> tuple[nn.Module, tuple]:
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    cfg = LongformerConfig(hidden_size=D, num_attention_heads=H, attention_window=[window])
    module = LongformerSelfAttention(cfg, layer_id=0)
    mask = torch.zeros(1, n)  # 0: local attention everywhere, no global tokens
    kwargs = dict(attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=mask > 0, is_global_attn=False)
    return module, kwargs


def hf_bigbird(n: int, block: int, random_blocks: int) -> tuple[nn.Module, tuple]:
    from transformers import BigBirdConfig, BigBirdModel
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

    cfg = BigBirdConfig(
        hidden_size=D, num_attention_heads=H, block_size=block, num_random_blocks=random_blocks,
        attention_type="block_sparse", max_position_embeddings=max(4096, n),
    )  # fmt: skip
    module = BigBirdBlockSparseAttention(cfg, seed=0)
    blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(torch.ones(1, n), block)
    kwargs = dict(band_mask=band, from_mask=from_mask, to_mask=to_mask, from_blocked_mask=blocked,
                  to_blocked_mask=blocked)  # fmt: skip
    return module, kwargs


def hf_reformer(n: int, chunk: int, hashes: int) -> tuple[nn.Module, tuple]:
    from transformers import ReformerConfig
    from transformers.models.reformer.modeling_reformer import LSHSelfAttention

    buckets = max(2, 2 * math.ceil(n / chunk / 2) * 1)  # ≈ 2n/c, even; as ours resolves it
    cfg = ReformerConfig(
        hidden_size=D, num_attention_heads=H, attention_head_size=D // H, lsh_attn_chunk_length=chunk,
        num_buckets=buckets, num_hashes=hashes, lsh_num_chunks_before=1, lsh_num_chunks_after=0,
        is_decoder=False, max_position_embeddings=n, hash_seed=0,
    )  # fmt: skip
    return LSHSelfAttention(cfg), {}


def time_module(fn, budget: float) -> dict:
    timer = PerfCounterTimer()
    policy = SamplingPolicy(budget_s=budget)
    warm = warm_up(fn, timer, policy)
    m = sample(fn, timer, policy, warm.last_call_s)
    return {"median_s": m.stats.median, "ci95": [m.stats.ci95_low, m.stats.ci95_high], "n": m.stats.n,
            "stable": m.stable}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-lens", default="4096,8192")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--only", default="longformer,bigbird,reformer")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pairs = {
        "longformer": (lambda n: hf_longformer(n, 512), "sparse.sliding_window", {"window": 512}, False),
        "bigbird": (lambda n: hf_bigbird(n, 64, 3), "sparse.bigbird", {"block": 64, "random_blocks": 3}, False),
        "reformer": (lambda n: hf_reformer(n, 64, 2), "sparse.lsh", {"chunk": 64, "hashes": 2}, True),
    }
    rows = []
    for name in args.only.split(","):
        make_hf, variant, params, shared = pairs[name]
        for n in (int(s) for s in args.seq_lens.split(",")):
            x = torch.randn(1, n, D)
            hf, kwargs = make_hf(n)
            ours = Projected(variant, params, n, shared_qk=shared)
            hf.eval()
            ours.eval()
            with torch.no_grad():
                t_hf = time_module(lambda hf=hf, kwargs=kwargs, x=x: hf(x, **kwargs), args.budget)
                t_ours = time_module(lambda ours=ours, x=x: ours(x), args.budget)
            row = {"pair": name, "variant": variant, "params": params, "seq_len": n, "threads": args.threads,
                   "hf": t_hf, "ours": t_ours, "speedup": t_hf["median_s"] / t_ours["median_s"]}  # fmt: skip
            rows.append(row)
            print(f"{name:10s} n={n:6d}  HF {t_hf['median_s'] * 1e3:9.1f} ms   {variant} "
                  f"{t_ours['median_s'] * 1e3:9.1f} ms   ours is {row['speedup']:.2f}x faster", flush=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
