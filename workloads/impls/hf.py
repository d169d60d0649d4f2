"""`hf`: the Hugging Face ``transformers`` layers of the three sparse designs, in the layer scope.

What runs. Each layer is the library's own attention module, configured from the variant's
parameters, placed in the native pre-norm layer in place of its Q/K/V projections and its
attention (the HF modules project Q, K and V from the hidden states themselves); the norm, the
output projection, the FFN and the residuals are the native layer's own modules:

- ``sparse.sliding_window``: ``LongformerSelfAttention`` with ``attention_window = W`` (one-sided
  W/2) and the first g tokens global (attention mask +10000), with its own global projections
  (``query_global``, ``key_global``, ``value_global``), which the native ``LongformerLayer``
  models too. The hidden states are padded to a multiple of W and the padding masked, as
  ``LongformerModel`` does. No dilation and no causal form: those cases are refused.
- ``sparse.bigbird``: ``BigBirdBlockSparseAttention`` with ``block_size = b``,
  ``num_random_blocks = r`` and ``seed``; padded to a multiple of b with the masks
  ``BigBirdModel.create_masks_for_block_sparse_attn`` builds, as ``BigBirdModel`` does. The
  module is kept in training mode, where HF draws its random blocks (numpy, seeded with
  ``seed`` on every call, so the layout is the same each call; in ``eval()`` HF uses no random
  blocks at all: every one is block 0). No causal form; the design's dense fallback
  (``attention = "full"``) is not this layer either: both refused.
- ``sparse.lsh``: Reformer's ``LSHSelfAttention`` with the chunk length, rounds, bucket count
  (``buckets``, factorised as ``[f1, f2]`` when ``bucket_factor`` is set, as the design
  resolves it), ``hash_seed = seed``, ``is_decoder = causal`` and one chunk of look-back; padded
  to a multiple of the chunk with an attention mask, as ``ReformerModel`` does.

Its own pattern. Each module's layout is HF's, which is not always the design's canonical one,
so the check before timing compares it with a float64 dense reference of *its* pattern
(``verify_module`` / ``verify_reference``): the check module feeds the HF attention hidden
states (the core inputs' q, folded to (B, n, D)) and returns its attention output before the
output projection as (B, h, n, d); the reference projects the same hidden states with the
module's own weights in float64 and applies the pattern derived from the module as configured:

- Longformer: the band |i − j| ≤ one_sided_attn_window_size and the g global keys for every
  query; the g global rows attend every key with the global projections. This is the design's.
- BigBird: the random blocks HF drew, read off its call (``_create_rand_mask_from_inputs``
  receives them), and HF's fixed blocks (row 1: blocks 0, 1, 2, last; row nb−2: 0, nb−3, nb−2,
  last; others i−1, i, i+1, 0, last; rows 0 and nb−1 every block), counted with multiplicity
  as HF concatenates them. HF's plan confines the random blocks of long sequences to the first
  2r + 5 blocks (at n = 1024, 3072, 4096, the first 1024 tokens), and draws per head: the
  design draws uniformly over all blocks, shared by the heads unless ``random_per_head``.
- Reformer: HF's hashing (rotations drawn after ``torch.manual_seed(hash_seed)``, padding in an
  extra bucket), the sort by (bucket, position), and HF's chunking of all rounds as one
  sequence: a round's first chunk looks back into the previous round's last chunk (round 0's
  into the last round's), where the design wraps within the round. Scores, self score and
  masking are the design's; a key counts once per time it is in a query's windows.

``case_metrics`` says how the pattern differs (``hf_pattern``) and the padded length HF ran.

Limits. CPU and CUDA backends (eager PyTorch with host-side steps: numpy draws, ``.item()``).
Longformer's softmax is float32 whatever the input (``dtype=torch.float32``), so float64 cases
are refused when they run. Reformer's rotations come from the device's generator, so its check
runs HF's layer on the CPU, where the reference draws the same rotations, and in float64: in
float32 HF's merge of the rounds (``exp(logits − logsumexp(logits))``, not renormalised) loses
up to about 0.5% on rows that see only themselves (causal), whose logits sit near the self
score −1e5, where float32's spacing is 0.008. The timed case runs in its own dtype and device.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import re
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.core.errors import Unsupported
from attnbench.core.registry import register_impl
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.impls.base import Implementation
from attnbench.workloads.shape import Shape
from attnbench.workloads.step_range import step_range

if TYPE_CHECKING:
    from attnbench.workloads.base import AttentionVariant

INSTALL_HINT = "pip install 'attnbench[hf]'"
MIN_VERSION = (4, 40)
VARIANTS = {
    "sparse.sliding_window": "LongformerSelfAttention",
    "sparse.bigbird": "BigBirdBlockSparseAttention",
    "sparse.lsh": "Reformer's LSHSelfAttention",
}
BACKEND_REASONS = {
    "onnxruntime": (
        "the Hugging Face layers run eager PyTorch with host-side steps (BigBird's numpy random draw, "
        ".item() on Longformer's and Reformer's masks) that an exported ONNX graph cannot hold"
    ),
    "xla": (
        "the Hugging Face layers read tensors on the host in every call (.item(), nonzero, BigBird's "
        "numpy draw), which torch-xla's lazy graphs cannot trace"
    ),
}
# Refused by the driver (supports_dtype); the module raises it too if called in float64 anyway.
LONGFORMER_FLOAT64 = "HF's LongformerSelfAttention computes its softmax in float32, so it has no float64 form"
LONGFORMER_GLOBAL = 10000.0  # attention mask: > 0 global, 0 local, < 0 masked (LongformerSelfAttention)
BIGBIRD_MAX_POSITIONS = 4096  # BigBirdConfig's default; HF's fixed plans at 1024/3072/4096 read it
NUMPY_SEEDS = 2**32  # np.random.seed takes 0 .. 2**32 − 1


# --- availability ---------------------------------------------------------------------------------
def transformers_version() -> str | None:
    """The installed transformers' version, or None when it cannot be imported (absent, or its
    import blocked). Cheap: finds the package without importing it."""
    try:
        if importlib.util.find_spec("transformers") is None:
            return None
        return importlib.metadata.version("transformers")
    except (ImportError, ValueError):  # a blocked import, or a module without a spec or metadata
        return None


def _release(version: str) -> tuple[int, int]:
    major, minor, *_ = [*(int(x) for x in re.findall(r"\d+", version)[:2]), 0, 0]
    return major, minor


# --- shapes ------------------------------------------------------------------------------------------
def padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def fold(q: Tensor) -> Tensor:
    """(B, h, n, d) -> (B, n, h·d): the heads side by side, as hidden states."""
    B, h, n, d = q.shape
    return q.transpose(1, 2).reshape(B, n, h * d)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, n, h·d) -> (B, h, n, d)."""
    B, n, D = x.shape
    return x.view(B, n, heads, D // heads).transpose(1, 2)


def _linear64(x: Tensor, layer: nn.Linear, heads: int) -> Tensor:
    """The layer's projection of float64 x, split into heads: (B, h, n, d) float64."""
    bias = None if layer.bias is None else layer.bias.detach().to("cpu", torch.float64)
    return split_heads(F.linear(x, layer.weight.detach().to("cpu", torch.float64), bias), heads)


def counted_attention(scores: Tensor, count: Tensor, v: Tensor) -> Tensor:
    """Σ_j c_ij·exp(s_ij)·v_j / Σ_j c_ij·exp(s_ij) in float64: c_ij, how many times key j is in
    query i's windows (0: never), as a softmax over concatenated windows counts a repeated key."""
    count = count.to(torch.float64)
    top = scores.masked_fill(count == 0, float("-inf")).amax(dim=-1, keepdim=True)
    w = count * torch.exp((scores - top).masked_fill(count == 0, 0.0))
    return (w @ v) / w.sum(dim=-1, keepdim=True)


# --- the HF attention modules ---------------------------------------------------------------------------
class HFAttention(nn.Module):
    """(B, n, D) normalised hidden states -> (B, n, D) attention output before the output
    projection, by the HF module `hf` (which projects Q, K and V itself)."""

    pattern_note: ClassVar[str] = ""

    def __init__(self, params: Any, shape: Shape) -> None:
        super().__init__()
        self.params = params
        self.heads = shape.heads
        self.padded_len: int | None = None  # the length of the last call, after HF's padding

    def multiple(self) -> int:
        """HF takes lengths that are a multiple of this."""
        raise NotImplementedError

    def call(self, hidden: Tensor, n: int) -> Tensor:
        """The HF module on hidden states padded to a multiple, n of them real: (B, N, D)."""
        raise NotImplementedError

    def reference(self, x: Tensor) -> Tensor:
        """Float64 (B, n, D) hidden states -> the float64 (B, h, n, d) output of this module's pattern."""
        raise NotImplementedError

    def forward(self, hidden: Tensor) -> Tensor:
        n = hidden.shape[1]
        N = padded(n, self.multiple())
        self.padded_len = N
        if n < N:  # HF's model pads the same way; the padding is masked and dropped
            hidden = F.pad(hidden, (0, 0, 0, N - n))
        out = self.call(hidden, n)
        return out[:, :n] if n < N else out


class HFLongformer(HFAttention):
    pattern_note = (
        "the design's: band of ±W/2 (HF attention_window = W) and the first g tokens global, global rows "
        "with their own projections; the sequence padded to a multiple of W, as LongformerModel does"
    )

    def __init__(self, params: Any, shape: Shape) -> None:
        super().__init__(params, shape)
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

        config = LongformerConfig(
            hidden_size=shape.model_dim,
            num_attention_heads=shape.heads,
            attention_window=[params.window],  # one layer, layer_id 0
            attention_probs_dropout_prob=0.0,
            num_hidden_layers=1,
        )
        self.hf = LongformerSelfAttention(config, layer_id=0)
        self.global_tokens = params.global_tokens

    def multiple(self) -> int:
        return self.params.window

    def call(self, hidden: Tensor, n: int) -> Tensor:
        if hidden.dtype == torch.float64:
            # Its softmax is float32 (dtype=torch.float32): a float64 case would be float32-accurate.
            raise Unsupported(LONGFORMER_FLOAT64)
        B, N, _ = hidden.shape
        g = min(self.global_tokens, n)
        mask = hidden.new_zeros(B, N)
        mask[:, n:] = -LONGFORMER_GLOBAL
        mask[:, :g] = LONGFORMER_GLOBAL
        return self.hf(
            hidden,
            attention_mask=mask,
            is_index_masked=mask < 0,
            is_index_global_attn=mask > 0,
            is_global_attn=g > 0,
        )[0]

    def reference(self, x: Tensor) -> Tensor:
        hf, h = self.hf, self.heads
        n = x.shape[1]
        g = min(self.global_tokens, n)
        w = hf.one_sided_attn_window_size
        q, k, v = (_linear64(x, layer, h) for layer in (hf.query, hf.key, hf.value))
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        out = counted_attention(scores, ((i - j).abs() <= w) | (j < g), v)
        if g:  # the global rows: every key, with the global projections
            qg = _linear64(x[:, :g], hf.query_global, h)
            kg, vg = _linear64(x, hf.key_global, h), _linear64(x, hf.value_global, h)
            out[:, :, :g] = torch.softmax(qg @ kg.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ vg
        return out


class HFBigBird(HFAttention):
    pattern_note = (
        "HF's random blocks: its numpy draw (training mode, seeded with seed) per head, which for "
        "n > (2r+5)·b lies among the first 2r+5 blocks (at n = 1024/3072/4096 among the first 1024 "
        "tokens); the design draws uniformly over all blocks (shared by the heads unless "
        "random_per_head); sequence padded to a multiple of b, as BigBirdModel does"
    )

    def __init__(self, params: Any, shape: Shape) -> None:
        super().__init__(params, shape)
        from transformers import BigBirdConfig
        from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

        config = BigBirdConfig(
            hidden_size=shape.model_dim,
            num_attention_heads=shape.heads,
            block_size=params.block,
            num_random_blocks=params.random_blocks,
            attention_type="block_sparse",
            max_position_embeddings=max(BIGBIRD_MAX_POSITIONS, padded(shape.seq_len, params.block)),
            num_hidden_layers=1,
        )
        self.hf = BigBirdBlockSparseAttention(config, seed=params.seed)
        self.hf.train()  # where HF draws random blocks (in eval() it uses none)
        self.rand_attn: Tensor | None = None  # (B, h, nb − 2, r): the random blocks of the last call
        original = self.hf._create_rand_mask_from_inputs

        def record(from_blocked: Tensor, to_blocked: Tensor, rand_attn: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            self.rand_attn = rand_attn  # what HF drew for this call, as it gathers by it
            return original(from_blocked, to_blocked, rand_attn, *args, **kwargs)

        self.hf._create_rand_mask_from_inputs = record

    def multiple(self) -> int:
        return self.params.block

    def call(self, hidden: Tensor, n: int) -> Tensor:
        from transformers.models.big_bird.modeling_big_bird import BigBirdModel

        B, N, _ = hidden.shape
        # HF's fixed plans for n = 1024/3072/4096 draw over max_position_embeddings: at least N.
        self.hf.max_seqlen = max(BIGBIRD_MAX_POSITIONS, N)
        mask = hidden.new_ones(B, N)
        mask[:, n:] = 0
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(mask, self.params.block)
        return self.hf(
            hidden,
            band_mask=band,
            from_mask=from_mask,
            to_mask=to_mask,
            from_blocked_mask=blocked,
            to_blocked_mask=blocked,
        )[0]

    def block_counts(self, nb: int) -> Tensor:
        """(h, nb, nb) int64: how many times query block i gathers key block j in HF's layout,
        from the random blocks of the last call."""
        assert self.rand_attn is not None
        rand = self.rand_attn[0].to("cpu", torch.long)  # batch rows share the draw
        h = rand.shape[0]
        count = torch.zeros(h, nb, nb, dtype=torch.long)
        count[:, 0] = count[:, -1] = 1  # the global query blocks: every key block
        for i in range(1, nb - 1):
            if i == 1:
                fixed = [0, 1, 2, nb - 1]
            elif i == nb - 2:
                fixed = [0, nb - 3, nb - 2, nb - 1]
            else:
                fixed = [i - 1, i, i + 1, 0, nb - 1]
            count[:, i, fixed] += 1
            count[:, i].scatter_add_(1, rand[:, i - 1], torch.ones_like(rand[:, i - 1]))
        return count

    def reference(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        b = self.params.block
        N = padded(n, b)
        hf = self.hf
        with torch.no_grad():  # HF's own call at this length: the random blocks it draws
            param = hf.query.weight
            self(x.to(param.device, param.dtype))
        xp = F.pad(x, (0, 0, 0, N - n))
        q, k, v = (_linear64(xp, layer, self.heads) for layer in (hf.query, hf.key, hf.value))
        count = self.block_counts(N // b).repeat_interleave(b, 1).repeat_interleave(b, 2)  # (h, N, N)
        count[:, :, n:] = 0  # padding keys
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return counted_attention(scores, count, v)[:, :, :n]


class HFReformerLSH(HFAttention):
    pattern_note = (
        "HF's hashing (rotations drawn after torch.manual_seed(seed), not the design's generator) and "
        "chunking: rounds are chunked as one sequence, so a round's first chunk looks back into the "
        "previous round's last chunk, where the design wraps within the round; padding tokens hashed "
        "to an extra bucket"
    )

    def __init__(self, params: Any, shape: Shape) -> None:
        super().__init__(params, shape)
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import LSHSelfAttention

        config = ReformerConfig(
            hidden_size=shape.model_dim,
            num_attention_heads=shape.heads,
            attention_head_size=shape.head_dim,
            attn_layers=["lsh"],
            lsh_attn_chunk_length=params.chunk,
            num_hashes=params.hashes,
            num_buckets=self.num_buckets(shape.seq_len),
            hash_seed=params.seed,
            is_decoder=params.causal,
            lsh_num_chunks_before=1,
            lsh_num_chunks_after=0,
            lsh_attention_probs_dropout_prob=0.0,
        )
        self.hf = LSHSelfAttention(config)
        if params.causal:
            self.pattern_note = (
                f"{self.pattern_note}; in float32 its merge of the rounds loses up to about 0.5% on rows "
                "that see only themselves"
            )

    def num_buckets(self, n: int) -> int | list[int]:
        """The variant's bucket count at length n, in HF's form: an int, or [f1, f2] factorised."""
        from attnbench.workloads.sparse.lsh import LSHAttention

        factors = LSHAttention._factors(self.params, n)
        return factors[0] if len(factors) == 1 else list(factors)

    def multiple(self) -> int:
        return self.params.chunk

    def call(self, hidden: Tensor, n: int) -> Tensor:
        B, N, _ = hidden.shape
        self.hf.num_buckets = self.num_buckets(n)  # auto buckets are settled per length, as the design does
        mask = None
        if n < N:
            mask = torch.ones(B, N, dtype=torch.long, device=hidden.device)
            mask[:, n:] = 0
        return self.hf(hidden, attention_mask=mask).hidden_states

    def buckets(self, vectors: Tensor, pad: Tensor | None) -> Tensor:
        """HF's buckets for its (B, h, N, d) shared-QK vectors, in their dtype: (B, h, R, N);
        padding (pad, (B, N) bool) in the extra bucket. Its draw is reproduced on the CPU's
        generator, which is left as it was."""
        hf = self.hf
        factors = [hf.num_buckets] if isinstance(hf.num_buckets, int) else list(hf.num_buckets)
        h, d = vectors.shape[1], vectors.shape[-1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hf.hash_seed)
            rotations = torch.randn((h, d, hf.num_hashes, sum(factors) // 2), dtype=vectors.dtype)
        rotated = torch.einsum("bmtd,mdhr->bmhtr", vectors, rotations)  # (B, h, R, N, Σf/2)
        buckets, col, place = None, 0, 1
        for f in factors:
            part = rotated[..., col : col + f // 2]
            got = torch.argmax(torch.cat([part, -part], dim=-1), dim=-1) * place
            buckets = got if buckets is None else buckets + got
            col, place = col + f // 2, place * f
        assert buckets is not None
        if pad is not None:
            buckets = buckets.masked_fill(pad[:, None, None, :], place)
        return buckets

    def counts(self, vectors: Tensor, pad: Tensor | None) -> Tensor:
        """(B, h, N, N) int64: how many times key j is in query i's windows over all rounds."""
        hf = self.hf
        B, h, N, _ = vectors.shape
        c, R = hf.chunk_length, hf.num_hashes
        if c >= N:  # HF's standard self-attention: no hashing, every key once
            return torch.ones(B, h, N, N, dtype=torch.long)
        buckets = self.buckets(vectors, pad)  # (B, h, R, N)
        order = torch.argsort(buckets * N + torch.arange(N), dim=-1)  # by (bucket, position)
        # All rounds as one sorted sequence, cut into chunks; each sees itself and the chunk
        # before it in that sequence (the first, the very last).
        chunks = order.reshape(B, h, R * N // c, c)
        keys = torch.cat([chunks.roll(1, dims=2), chunks], dim=-1)  # (B, h, C, 2c)
        pairs = chunks[..., :, None] * N + keys[..., None, :]  # (B, h, C, c, 2c): i·N + j
        pairs = pairs + (torch.arange(B * h) * N * N).view(B, h, 1, 1, 1)
        return torch.bincount(pairs.reshape(-1), minlength=B * h * N * N).view(B, h, N, N)

    def reference(self, x: Tensor) -> Tensor:
        B, n, _ = x.shape
        hf, h = self.hf, self.heads
        N = padded(n, hf.chunk_length)
        hf.num_buckets = self.num_buckets(n)
        xp = F.pad(x, (0, 0, 0, N - n))
        pad = None
        if n < N:
            pad = torch.zeros(B, N, dtype=torch.bool)
            pad[:, n:] = True
        param = hf.query_key.weight
        with torch.no_grad():  # hashed as HF hashes: its own projection, in its dtype
            vectors = split_heads(hf.query_key(xp.to(param.device, param.dtype)), h).cpu()
        count = self.counts(vectors, pad)
        count[..., n:] = 0  # padding keys
        if hf.is_decoder:
            count.masked_fill_(torch.ones(N, N, dtype=torch.bool).triu(1), 0)
        qk, v = _linear64(xp, hf.query_key, h), _linear64(xp, hf.value, h)
        d = qk.shape[-1]
        keys = qk * torch.rsqrt(qk.square().mean(dim=-1, keepdim=True) + 1e-6) / math.sqrt(d)
        scores = qk @ keys.transpose(-1, -2)  # no 1/√d: the keys are unit length
        own = hf.self_mask_value_float16 if param.dtype == torch.float16 else hf.self_mask_value_float32
        scores.diagonal(dim1=-2, dim2=-1).fill_(float(own))
        return counted_attention(scores, count, v)[:, :, :n]


HF_MODULES: dict[str, type[HFAttention]] = {
    "sparse.sliding_window": HFLongformer,
    "sparse.bigbird": HFBigBird,
    "sparse.lsh": HFReformerLSH,
}


# --- the layer and the check module ---------------------------------------------------------------------
class HFLayer(nn.Module):
    """The native pre-norm layer with the HF attention in place of its Q/K/V projections and
    attention: x + proj(HF(LN(x))), then x + FFN(LN(x)), with the native layer's own modules."""

    def __init__(self, attention: HFAttention, native: nn.Module) -> None:
        super().__init__()
        self.attention = attention
        self.norm1, self.proj, self.norm2, self.ffn = native.norm1, native.proj, native.norm2, native.ffn

    def forward(self, x: Tensor) -> Tensor:
        with step_range("layer.attention"):  # HF's projections included
            a = self.attention(self.norm1(x))
        with step_range("layer.proj"):
            x = x + self.proj(a)
        with step_range("layer.ffn"):
            return x + self.ffn(self.norm2(x))


class HFCheck(nn.Module):
    """The check before timing: (B, h, n, d) q (k and v unused) -> the HF attention's output for
    hidden states fold(q), as (B, h, n, d). With `on_cpu` the HF layer always runs on the CPU in
    float64 (kept out of .to(): held unregistered), where its reference reproduces its draws."""

    def __init__(self, attention: HFAttention, on_cpu: bool) -> None:
        super().__init__()
        self.on_cpu = on_cpu
        if on_cpu:
            self._held = (attention.double(),)  # a tuple: not a submodule, so .to() leaves it
        else:
            self.attention = attention

    @property
    def hf_attention(self) -> HFAttention:
        return self._held[0] if self.on_cpu else self.attention

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        attention = self.hf_attention
        x = fold(q)
        if self.on_cpu:
            return split_heads(attention(x.to("cpu", torch.float64)), q.shape[1]).to(q.device, q.dtype)
        return split_heads(attention(x), q.shape[1])


def _find(module: nn.Module) -> HFAttention | None:
    if isinstance(module, HFCheck):
        return module.hf_attention
    return next((m for m in module.modules() if isinstance(m, HFAttention)), None)


@register_impl
class HFImpl(Implementation):
    name = "hf"
    summary = "Hugging Face transformers layers (Longformer, BigBird, Reformer LSH) in the layer scope"

    @classmethod
    def availability(cls) -> str | None:
        version = transformers_version()
        if version is None:
            return f"the Hugging Face transformers library is not installed ({INSTALL_HINT})"
        if _release(version) < MIN_VERSION:
            need = ".".join(map(str, MIN_VERSION))
            return f"transformers {version} is older than {need}, which hf needs ({INSTALL_HINT})"
        return None

    @classmethod
    def supports(cls, variant: type[AttentionVariant], params: Any, scope: str, backend: str) -> str | None:
        if backend in BACKEND_REASONS:
            return BACKEND_REASONS[backend]
        if backend not in ("cpu", "cuda"):
            return f"the Hugging Face layers run on the cpu and cuda backends (eager PyTorch), not {backend}"
        return _refusal(variant, params, scope)

    @classmethod
    def supports_dtype(cls, variant: type[AttentionVariant], params: Any, dtype: str) -> str | None:
        if variant.name == "sparse.sliding_window" and dtype == "float64":
            return LONGFORMER_FLOAT64
        return None

    @classmethod
    def build(cls, variant: type[AttentionVariant], params: Any, shape: Shape, scope: str) -> nn.Module:
        reason = _refusal(variant, params, scope)
        if reason:
            raise Unsupported(reason)
        native = variant.build(params, shape, scope)
        holder = getattr(native, "layer", native)  # LongformerLayer wraps a PreNormLayer
        return HFLayer(HF_MODULES[variant.name](params, shape), holder)

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        attention = _find(module)
        if attention is None:
            return {}
        metrics: dict[str, Any] = {"hf_pattern": attention.pattern_note, "transformers": transformers_version()}
        if attention.padded_len is not None:
            metrics["hf_padded_len"] = attention.padded_len
        return metrics

    @classmethod
    def verify_module(cls, variant: type[AttentionVariant], params: Any, shape: Shape) -> nn.Module:
        reason = _refusal(variant, params, "layer")
        if reason:
            raise Unsupported(reason)
        return HFCheck(HF_MODULES[variant.name](params, shape), on_cpu=variant.name == "sparse.lsh")

    @classmethod
    def verify_reference(cls, module: nn.Module, defined: AttentionVariant, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        attention = _find(module)
        if attention is None:
            raise TypeError(f"hf checks an HFCheck module, not {type(module).__name__}")
        return attention.reference(fold(q.to("cpu", torch.float64)))

    @classmethod
    def peak_estimate(
        cls,
        variant: type[AttentionVariant],
        params: Any,
        shape: Shape,
        scope: str,
        itemsize: int,
        mode: str,
        sdpa: SdpaChoice = MATH,
    ) -> int | None:
        """The native case's estimate plus HF's materialised scores, generously: all of a call's
        windows at once (Longformer's chunked (2w × 2w) products, BigBird's gathered blocks,
        Reformer's (c × 2c) chunks of every round), in float32 at least, four copies."""
        base = variant.case_peak_estimate(params, shape, scope, itemsize, mode, sdpa)
        B, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
        wide = max(itemsize, 4)
        if variant.name == "sparse.sliding_window":
            N = padded(n, params.window)
            scores = B * h * N * 2 * params.window + B * h * N * min(params.global_tokens, n)
        elif variant.name == "sparse.bigbird":
            N = padded(n, params.block)
            scores = B * h * N * (5 + params.random_blocks) * params.block + 2 * B * h * params.block * N
        elif variant.name == "sparse.lsh":
            N = padded(n, params.chunk)
            scores = B * h * params.hashes * N * 2 * params.chunk
        else:
            return None
        gathered = 8 * B * h * N * d * (getattr(params, "hashes", 1) + 1)
        return base + 4 * (scores * wide + gathered * itemsize) * (2 if mode == "train" else 1)


def _refusal(variant: type[AttentionVariant], params: Any, scope: str) -> str | None:
    """Why hf cannot run this variant, parameters and scope (the backend aside), or None."""
    name = variant.name
    if name not in VARIANTS:
        have = ", ".join(f"{layer} for {v}" for v, layer in VARIANTS.items())
        return f"transformers has no layer of {name} for hf to run (hf runs {have})"
    if scope != "layer":
        return (
            f"HF's {VARIANTS[name]} projects Q, K and V from the hidden states itself, so hf runs in the "
            "layer scope only (--scopes layer)"
        )
    if name == "sparse.sliding_window":
        if params.dilation > 1:
            return f"HF's LongformerSelfAttention has no dilation, so dilation={params.dilation} cannot be expressed"
        if params.causal:
            return "HF's LongformerSelfAttention has no causal form (its band is two-sided), so no causal=true"
    if name == "sparse.bigbird":
        if params.causal:
            return "HF's BigBirdBlockSparseAttention has no causal form (HF's BigBird decoders use full attention)"
        if params.attention == "full":
            return (
                f"at this length BigBird runs full attention (n ≤ (5 + 2r)·b = {params.full_threshold} under auto; "
                "HF's BigBirdModel switches to original_full there), not the block-sparse layer hf runs"
            )
        if not 0 <= params.seed < NUMPY_SEEDS:
            return f"HF's BigBird seeds numpy's generator, which takes 0 ≤ seed < 2**32, not {params.seed}"
    return None
