"""Adaptive computation: the Universal Transformer and its ACT form.

Both are whole-model workloads (scope "layer" only): the input is the hidden state
x (B, n, D) and one shared PreNormLayer (attention + FFN + norms) is applied repeatedly,
a learned step embedding added before each application (no positional signal).

``adaptive.universal`` applies the layer ``steps`` times. Its attention is any registered
variant with a core form (``attention``, default ``full.sdpa``), built with that variant's
default parameters, so a Universal Transformer over, say, sliding-window attention is one
parameter away.

``adaptive.act`` adds Adaptive Computation Time (Graves 2016) per token, with the halting
arithmetic of tensor2tensor's Universal Transformer (``universal_transformer_act``, act_type
"basic"): a halting unit p = sigmoid(w·LN(h) + b) on the step's input h = state + step
embedding, threshold 1 − ε (ε = 0.01), remainders, and the output blend
acc ← w·layer(h) + (1 − w)·acc, the update weight w being p while a token runs, its remainder
on the step it halts and 0 afterwards. ``ponder_mean`` is the mean of t2t's ponder times
(n_updates) and ``remainder_mean`` that of its remainders. ``halting`` says what a halted
token is:

- ``frozen`` (default): its state stops changing and it keeps serving as key and value with
  the keys/values computed from its last step's input. This is the Universal Transformer
  paper's own description (a halted symbol's state "is simply copied to the next step"), and
  what depth-adaptive transformers do; it is what lets ``gather`` skip halted tokens. A token
  still running at ``max_steps`` is forced to halt there with its remainder (Graves's cap on
  N(t)), so every token's update weights sum to 1.
- ``t2t``: tensor2tensor's function. Every position is transformed at every step (the loop
  carries all positions' transformed state), so running tokens attend to halted tokens'
  current keys and values, and halting only stops a token's output blend from changing. The
  loop runs until every token has halted or ``max_steps``; as in t2t, a token still running
  at ``max_steps`` gets no remainder (its weights sum to less than 1, its remainder is 0).
  No work is skipped, so it runs with ``execution=mask`` only, and its useful FLOPs are its
  executed ones: every token, every step the loop takes.

``frozen`` is the default because it is what the paper describes, what every case computed
before ``halting`` existed (their case ids stand), and the semantics under which halting saves
work. Deliberate differences from t2t under both: the halting unit reads a layer-normed state
(so its logit can be calibrated, below), the step signal is a learned embedding, and there is
no dropout and no final layer norm.

Execution (``execution``, default ``auto``: ``gather`` under frozen, ``mask`` under t2t; the
case records the resolved value). Under frozen both modes compute the same function:

- ``gather``: each step gathers the still-running tokens' rows (per batch row,
  padded to the largest running count), computes their halting unit, QKV projection,
  attention of their queries against all n keys/values, output projection and FFN, and
  scatters the results back. The inner variant's forward takes equal query and key
  lengths, so the gathered queries use torch's scaled_dot_product_attention on
  (running queries, all keys) directly. This is why ``attention`` is limited to the dense
  variants (full.naive, full.sdpa, full.chunked, with their default, non-causal parameters),
  which all compute that function.
- ``mask``: every token is computed every step with the inner variant; under frozen the
  updates of halted tokens are masked out (their keys and values come from a cache of their
  last step), as naive implementations do; under t2t every update is kept.

Halting control. Random weights halt arbitrarily, so the halting unit is set up to hit a
target: all weights are drawn from ``torch.manual_seed(seed)`` (``seed`` is a parameter,
recorded with the case); w ~ N(0, σ²/D) with σ = 1, so on the layer-normed state the logit
is b + σ·z with z ≈ N(0, 1) across tokens, nearly constant over a token's steps; and b is
the bias for which the halting process with logits b + σ·z (one z per token held over the
steps, 8192 samples from a generator seeded with ``seed``) has mean ponder steps
``target_steps`` (bisection; ``target_steps`` = 1 gives the largest bias searched, where
every token halts after one step). It holds for either ``halting``: both count a token's
steps alike, up to the one where it halts or reaches max_steps. Real inputs give a mean
near the target, with per-token variation; ``case_metrics`` records what actually happened
in the last call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.core.registry import get_workload, register_workload
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.base import (
    FFN_MULT,
    TRAIN_FLOP_FACTOR_ATTENTION,
    TRAIN_FLOP_FACTOR_LINEAR,
    AttentionVariant,
    Shape,
    step_range,
)
from attnbench.workloads.layer import PreNormLayer

ACT_EPSILON = 0.01
HALTING_LOGIT_STD = 1.0
CALIBRATION_SAMPLES = 8192
BIAS_RANGE = (-30.0, 30.0)
DENSE_ATTENTION = ("full.naive", "full.sdpa", "full.chunked")


def _inner_class(name: str) -> type[AttentionVariant]:
    try:
        cls = get_workload(name)
    except Exception as exc:  # UserError for unknown names
        raise ValueError(f"attention: {exc}") from None
    if "core" not in cls.scopes:
        raise ValueError(f"attention must be a variant with a core form, not {name}")
    return cls


def _inner_params(name: str, shape: Shape) -> Any:
    cls = _inner_class(name)
    return cls.make_params(cls.resolve_params(cls.default_params(), shape))


def _train_factor(attention: float, linear: float, mode: str) -> float:
    if mode == "train":
        return attention * TRAIN_FLOP_FACTOR_ATTENTION + linear * TRAIN_FLOP_FACTOR_LINEAR
    return attention + linear


def _per_token_linear_flops(D: int) -> float:
    """QKV + output projections and the FFN for one token, as PreNormLayer.linear_flops."""
    return float(8 * D * D + 4 * D * FFN_MULT * D)


class _Adaptive(AttentionVariant):
    """Common plumbing: whole-model workloads taking x (B, n, D)."""

    family: ClassVar[str] = "adaptive"
    scopes: ClassVar[tuple[str, ...]] = ("layer",)

    @classmethod
    def build(cls, params: Any, shape: Shape, scope: str) -> nn.Module:
        if scope not in cls.scopes:
            raise ValueError(f"{cls.name} is a whole-model workload; it has no {scope!r} scope")
        return cls(params, shape)

    @classmethod
    def make_inputs(
        cls, shape: Shape, scope: str, dtype: torch.dtype, device: torch.device, generator: torch.Generator
    ) -> tuple[Tensor, ...]:
        return super().make_inputs(shape, "layer", dtype, device, generator)  # x: (B, n, D)

    def reference(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - no core form
        raise NotImplementedError(f"{self.name} has no core form to check against a reference")

    @classmethod
    def _parts(cls, params: Any, shape: Shape, executed: bool) -> tuple[float, float]:
        """(attention FLOPs, linear-layer FLOPs) of one forward call."""
        raise NotImplementedError

    @classmethod
    def flops(cls, params: Any, shape: Shape) -> float:
        return sum(cls._parts(params, shape, executed=False))

    @classmethod
    def executed_flops(cls, params: Any, shape: Shape) -> float:
        return sum(cls._parts(params, shape, executed=True))

    @classmethod
    def case_flops(cls, params: Any, shape: Shape, scope: str, mode: str, executed: bool = False) -> float:
        return _train_factor(*cls._parts(params, shape, executed), mode)

    @classmethod
    def _layer_peak(
        cls, inner: type[AttentionVariant], ip: Any, shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice = MATH
    ) -> int:
        """Peak of one layer application (inner attention plus layer activations)."""
        return inner.peak_bytes_estimate(ip, shape, itemsize, train, sdpa) + PreNormLayer.activation_bytes(
            shape, itemsize
        ) * (4 if train else 2)


# ------------------------------------------------------------------------------------------
# Universal Transformer
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UniversalParams:
    steps: int = 6
    attention: str = "full.sdpa"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        _inner_class(self.attention)


@register_workload
class UniversalTransformer(_Adaptive):
    """One shared pre-norm layer applied `steps` times, a learned step embedding added before each."""

    name: ClassVar[str] = "adaptive.universal"
    summary: ClassVar[str] = "Universal Transformer: one shared layer applied T times with a step embedding"
    Params: ClassVar[type] = UniversalParams

    def __init__(self, params: UniversalParams, shape: Shape) -> None:
        super().__init__(params, shape)
        inner = _inner_class(params.attention)
        self.layer = PreNormLayer(inner(_inner_params(params.attention, shape), shape), shape)
        self.step_embedding = nn.Parameter(0.1 * torch.randn(params.steps, shape.model_dim))  # (T, D)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        # x: (B, n, D)
        for t in range(self.params.steps):
            with step_range("universal.step"):  # the shared layer's own ranges nest inside
                x = self.layer(x + self.step_embedding[t])
        return x

    @classmethod
    def _parts(cls, params: UniversalParams, shape: Shape, executed: bool) -> tuple[float, float]:
        """(attention, linear) FFLOPs of one forward call, all steps."""
        inner = _inner_class(params.attention)
        ip = _inner_params(params.attention, shape)
        attention = inner.executed_flops(ip, shape) if executed else inner.flops(ip, shape)
        return params.steps * attention, params.steps * PreNormLayer.linear_flops(shape)

    @classmethod
    def working_bytes(cls, params: UniversalParams, shape: Shape, itemsize: int) -> int:
        inner = _inner_class(params.attention)
        ip = _inner_params(params.attention, shape)
        state = shape.batch * shape.seq_len * shape.model_dim * itemsize  # x + step embedding
        return inner.working_bytes(ip, shape, itemsize) + PreNormLayer.activation_bytes(shape, itemsize) + state

    @classmethod
    def case_min_bytes(cls, params: Any, shape: Shape, scope: str, itemsize: int) -> int:
        return cls.working_bytes(params, shape, itemsize)

    @classmethod
    def peak_bytes_estimate(
        cls, params: UniversalParams, shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice = MATH
    ) -> int:
        inner = _inner_class(params.attention)
        ip = _inner_params(params.attention, shape)
        one = cls._layer_peak(inner, ip, shape, itemsize, train, sdpa)
        # Training keeps every step's activations for backward.
        return one * (params.steps if train else 1) + PreNormLayer.weight_bytes(shape, itemsize) * (3 if train else 1)

    @classmethod
    def case_peak_estimate(
        cls, params: Any, shape: Shape, scope: str, itemsize: int, mode: str, sdpa: SdpaChoice = MATH
    ) -> int:
        return cls.peak_bytes_estimate(params, shape, itemsize, mode == "train", sdpa)

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        return {"steps": module.params.steps}


# ------------------------------------------------------------------------------------------
# Adaptive Computation Time
# ------------------------------------------------------------------------------------------


def expected_ponder_steps(bias: float, max_steps: int, z: Tensor) -> float:
    """Mean ponder steps of the ACT halting process with logits bias + σ·z[:, t]; z: (S, max_steps)."""
    p = torch.sigmoid(bias + HALTING_LOGIT_STD * z)  # (S, max_steps)
    threshold = 1.0 - ACT_EPSILON
    cum = torch.cumsum(p, dim=1)
    # Halts at the first step where the cumulative probability exceeds the threshold,
    # or is forced to at max_steps.
    over = cum > threshold
    over[:, -1] = True
    steps = over.to(torch.int64).argmax(dim=1) + 1
    return steps.double().mean().item()


def calibrate_halting_bias(target_steps: float, max_steps: int, seed: int) -> float:
    """The halting bias whose modelled mean ponder steps is target_steps (deterministic in seed)."""
    g = torch.Generator().manual_seed(seed)
    # A token's state changes little from step to step, so its halting logit does too: one z
    # per token, held across the steps.
    z = torch.randn(CALIBRATION_SAMPLES, 1, generator=g, dtype=torch.float64).expand(-1, max_steps)
    lo, hi = BIAS_RANGE  # mean steps decreases as the bias grows
    if expected_ponder_steps(hi, max_steps, z) >= target_steps:
        return hi
    if expected_ponder_steps(lo, max_steps, z) <= target_steps:
        return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if expected_ponder_steps(mid, max_steps, z) > target_steps:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


HALTING = ("frozen", "t2t")
EXECUTION = ("auto", "gather", "mask")


@dataclass(frozen=True)
class ACTParams:
    max_steps: int = 12
    target_steps: float = 3.0
    halting: str = "frozen"
    execution: str = "auto"
    seed: int = 0
    attention: str = "full.sdpa"

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if not 1.0 <= self.target_steps <= self.max_steps:
            raise ValueError(f"target_steps must lie in [1, max_steps={self.max_steps}], got {self.target_steps}")
        if self.halting not in HALTING:
            raise ValueError(f"halting must be one of {', '.join(HALTING)}, got {self.halting!r}")
        if self.execution not in EXECUTION:
            raise ValueError(f"execution must be one of {', '.join(EXECUTION)}, got {self.execution!r}")
        if self.halting == "t2t" and self.execution == "gather":
            raise ValueError(
                "execution=gather skips halted tokens, which halting=t2t still transforms; use execution=mask (or auto)"
            )
        if self.attention not in DENSE_ATTENTION:
            raise ValueError(
                f"attention must be one of {', '.join(DENSE_ATTENTION)} (the gather path computes dense "
                f"attention for the running queries), got {self.attention!r}"
            )

    @property
    def resolved_execution(self) -> str:
        """The execution that runs: auto is gather where halted tokens may be skipped (frozen),
        mask where they may not (t2t)."""
        if self.execution != "auto":
            return self.execution
        return "mask" if self.halting == "t2t" else "gather"


def act_update(
    halting: Tensor, remainders: Tensor, n_updates: Tensor, p: Tensor, running: Tensor, force_halt: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step of tensor2tensor's ACT bookkeeping (universal_transformer_act), all (B, n).

    p is the step's halting probability, 0 where not running; running = halting < 1 at the
    start of the step. force_halt halts every running token (frozen's last step). Returns the
    new halting, remainders and n_updates, and the update weight w (B, n, 1): p while running,
    the remainder on the halting step, 0 once halted.
    """
    threshold = 1.0 - ACT_EPSILON
    reach = halting + p * running.to(p.dtype)
    new_halted = (reach > threshold) & running
    still = (reach <= threshold) & running
    if force_halt:
        new_halted = new_halted | still
        still = torch.zeros_like(still)
    still_f, new_f = still.to(p.dtype), new_halted.to(p.dtype)
    halting = halting + p * still_f
    remainders = remainders + new_f * (1.0 - halting)
    halting = halting + new_f * remainders
    # A halting token lands on halting + (1 - halting), which rounds to exactly 1.0 in binary
    # floating point; make it so regardless, since "running" is halting < 1.0.
    halting = torch.where(new_halted, torch.ones_like(halting), halting)
    n_updates = n_updates + running.to(torch.int64)
    w = (p * still_f + new_f * remainders).unsqueeze(-1)
    return halting, remainders, n_updates, w


@register_workload
class ACTUniversalTransformer(_Adaptive):
    """Universal Transformer with Adaptive Computation Time; see the module docstring."""

    name: ClassVar[str] = "adaptive.act"
    summary: ClassVar[str] = (
        "Universal Transformer with ACT: halted tokens frozen (gather skips them) or, halting=t2t, "
        "still transformed every step as in tensor2tensor"
    )
    Params: ClassVar[type] = ACTParams
    # Every case before `halting` existed froze halted tokens.
    neutral_params: ClassVar[dict[str, Any]] = {"halting": "frozen"}

    def __init__(self, params: ACTParams, shape: Shape) -> None:
        super().__init__(params, shape)
        D = shape.model_dim
        self.execution = params.resolved_execution
        self.inner_params = _inner_params(params.attention, shape)
        if getattr(self.inner_params, "causal", False):
            raise ValueError("adaptive.act's gather path computes non-causal dense attention")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            inner = _inner_class(params.attention)(self.inner_params, shape)
            self.layer = PreNormLayer(inner, shape)
            self.step_embedding = nn.Parameter(0.1 * torch.randn(params.max_steps, D))  # (T, D)
            self.halt_norm = nn.LayerNorm(D, elementwise_affine=False)
            self.halt = nn.Linear(D, 1)
            with torch.no_grad():
                self.halt.weight.normal_(0.0, HALTING_LOGIT_STD / math.sqrt(D))
        self.halting_bias = calibrate_halting_bias(params.target_steps, params.max_steps, params.seed)
        with torch.no_grad():
            self.halt.bias.fill_(self.halting_bias)
        self.last: dict[str, Any] = {}
        # t2t's extra output of the last call, (ponder_times, remainders), each (B, n).
        self.ponder: tuple[Tensor, Tensor] | None = None

    @classmethod
    def resolve_params(cls, values: dict[str, Any], shape: Shape) -> dict[str, Any]:
        """Records the execution that runs, so "auto" and the mode it picks are one case."""
        return {**values, "execution": cls.make_params(values).resolved_execution}

    # --- one step's pieces ---------------------------------------------------------------
    def _qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h: (B, m, D) -> q, k, v each (B, m, heads, d)."""
        B, m, _ = h.shape
        qkv = self.layer.qkv(self.layer.norm1(h)).view(B, m, 3, self.shape.heads, self.shape.head_dim)
        return qkv.unbind(2)

    def _finish(self, h: Tensor, a: Tensor) -> Tensor:
        """Residual, output projection and FFN: h (B, m, D), a (B, m, D) attention output."""
        h = h + self.layer.proj(a)
        return h + self.layer.ffn(self.layer.norm2(h))

    def _halting(self, h: Tensor) -> Tensor:
        return torch.sigmoid(self.halt(self.halt_norm(h))).squeeze(-1)  # (B, m)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if self.params.halting == "t2t":
            return self._forward_t2t(x)
        return self._forward_frozen(x)

    def _forward_frozen(self, x: Tensor) -> Tensor:
        B, n, D = x.shape
        h_, d_ = self.shape.heads, self.shape.head_dim
        T = self.params.max_steps
        gather = self.execution == "gather"
        dev = x.device

        state = x  # (B, n, D); frozen for halted tokens
        acc = torch.zeros_like(x)  # the ACT output blend
        k_cache = x.new_zeros(B, n, h_, d_)  # keys/values of each token's last computed step
        v_cache = x.new_zeros(B, n, h_, d_)
        halting = x.new_zeros(B, n)
        remainders = x.new_zeros(B, n)
        n_updates = torch.zeros(B, n, dtype=torch.int64, device=dev)
        rows_executed = 0  # token rows run through the layer, padding included
        keys_useful = 0.0  # Σ over computed (token, step) of the keys its query may see
        steps_run = 0

        for t in range(T):
            running = halting < 1.0  # (B, n): still running at the start of this step
            # (tokens halt by reaching exactly 1.0 = halting + remainder)
            if not bool(running.any()):
                break
            steps_run += 1
            inp = state + self.step_embedding[t]  # (B, n, D)
            if gather:
                with step_range("act.gather"):
                    counts = running.sum(dim=1)  # (B,)
                    m = int(counts.max())
                    # Running tokens first, in position order; padding rows are halted tokens.
                    order = torch.argsort((~running).to(torch.int8), dim=1, stable=True)[:, :m]  # (B, m)
                    valid = running.gather(1, order)  # (B, m)
                    idx_d = order.unsqueeze(-1).expand(B, m, D)
                    h_g = inp.gather(1, idx_d)  # (B, m, D)
                with step_range("act.halting"):
                    p = x.new_zeros(B, n).scatter(1, order, self._halting(h_g) * valid)
                with step_range("act.qkv"):
                    q, k, v = self._qkv(h_g)  # (B, m, h, d)
                    idx_kv = order[:, :, None, None].expand(B, m, h_, d_)
                    keep = valid[:, :, None, None]
                    k_cache = k_cache.scatter(1, idx_kv, torch.where(keep, k, k_cache.gather(1, idx_kv)))
                    v_cache = v_cache.scatter(1, idx_kv, torch.where(keep, v, v_cache.gather(1, idx_kv)))
                with step_range("act.attention"):
                    a = F.scaled_dot_product_attention(
                        q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2)
                    )  # (B, h, m, d): running queries against all n keys
                with step_range("act.proj_ffn"):
                    trans_g = self._finish(h_g, a.transpose(1, 2).reshape(B, m, D))  # (B, m, D)
                rows_executed += B * m
            else:
                with step_range("act.halting"):
                    p = self._halting(inp) * running
                with step_range("act.qkv"):
                    q, k, v = self._qkv(inp)  # (B, n, h, d)
                    keep = running[:, :, None, None]
                    k_cache = torch.where(keep, k, k_cache)
                    v_cache = torch.where(keep, v, v_cache)
                with step_range("act.attention"):
                    a = self.layer.attention(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2))
                with step_range("act.proj_ffn"):
                    trans = self._finish(inp, a.transpose(1, 2).reshape(B, n, D))  # (B, n, D)
                rows_executed += B * n
            keys_useful += float(running.sum()) * n

            # tensor2tensor's ACT bookkeeping, with a forced halt at the last step.
            with step_range("act.bookkeeping"):
                halting, remainders, n_updates, w = act_update(
                    halting, remainders, n_updates, p, running, force_halt=t == T - 1
                )
                if gather:
                    w_g = w.gather(1, order.unsqueeze(-1))  # (B, m, 1); 0 on padding rows
                    acc_g = acc.gather(1, idx_d)
                    acc = acc.scatter(1, idx_d, trans_g * w_g + acc_g * (1.0 - w_g))
                    st_g = state.gather(1, idx_d)
                    state = state.scatter(1, idx_d, torch.where(valid.unsqueeze(-1), trans_g, st_g))
                else:
                    acc = trans * w + acc * (1.0 - w)
                    state = torch.where(running.unsqueeze(-1), trans, state)

        token_steps = float(n_updates.sum())
        self._record(x, n_updates, remainders, token_steps, rows_executed, keys_useful, steps_run)
        return acc

    def _forward_t2t(self, x: Tensor) -> Tensor:
        """tensor2tensor's basic ACT loop: every position transformed every step."""
        B, n, D = x.shape
        T = self.params.max_steps
        threshold = 1.0 - ACT_EPSILON

        state = x  # (B, n, D): every position's latest transformed state, halted or not
        acc = torch.zeros_like(x)  # t2t's previous_state: the ACT output blend
        halting = x.new_zeros(B, n)
        remainders = x.new_zeros(B, n)
        n_updates = torch.zeros(B, n, dtype=torch.int64, device=x.device)
        steps_run = 0

        for t in range(T):
            # t2t's should_continue: some position below the threshold with steps left
            # (inside this loop every position has n_updates <= t < max_steps).
            if not bool((halting < threshold).any()):
                break
            steps_run += 1
            inp = state + self.step_embedding[t]  # (B, n, D)
            running = halting < 1.0  # (B, n)
            with step_range("act.halting"):
                p = self._halting(inp) * running
            with step_range("act.qkv"):
                q, k, v = self._qkv(inp)  # (B, n, h, d): halted tokens' current keys and values too
            with step_range("act.attention"):
                a = self.layer.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            with step_range("act.proj_ffn"):
                state = self._finish(inp, a.transpose(1, 2).reshape(B, n, D))  # (B, n, D)
            with step_range("act.bookkeeping"):
                # No forced halt: t2t leaves a token still running at max_steps without a remainder.
                halting, remainders, n_updates, w = act_update(
                    halting, remainders, n_updates, p, running, force_halt=False
                )
                acc = state * w + acc * (1.0 - w)

        # Every token is transformed, and its keys and values used, at every step the loop takes.
        token_steps = float(steps_run * B * n)
        self._record(x, n_updates, remainders, token_steps, steps_run * B * n, token_steps * n, steps_run)
        return acc

    # --- figures ---------------------------------------------------------------------------
    def _record(
        self,
        x: Tensor,
        n_updates: Tensor,
        remainders: Tensor,
        token_steps: float,
        rows_executed: int,
        keys_useful: float,
        steps_run: int,
    ) -> None:
        """token_steps: (token, step) pairs the function needs computed; rows_executed: rows run."""
        B, n, D = x.shape
        shape = Shape(B, self.shape.heads, self.shape.head_dim, n)
        per_row = _per_token_linear_flops(D) + 2.0 * D  # layer linears + halting unit
        useful_attn, useful_lin = 4.0 * D * keys_useful, per_row * token_steps
        if self.execution == "gather":
            exec_attn = 4.0 * D * n * rows_executed  # each gathered query against all n keys
        else:
            inner = _inner_class(self.params.attention)
            exec_attn = steps_run * inner.executed_flops(self.inner_params, shape)
        exec_lin = per_row * rows_executed
        train = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        mode = "train" if train else "forward"
        counts = torch.bincount(n_updates.flatten().cpu(), minlength=self.params.max_steps + 1)
        self.ponder = (n_updates.detach(), remainders.detach())
        self.last = {
            "halting": self.params.halting,
            "execution": self.execution,
            "target_steps": self.params.target_steps,
            "max_steps": self.params.max_steps,
            "seed": self.params.seed,
            "halting_bias": self.halting_bias,
            "ponder_mean": float(n_updates.double().mean()),
            "ponder_max": int(n_updates.max()),
            "ponder_histogram": [int(c) for c in counts[: self.params.max_steps + 1]],
            "remainder_mean": float(remainders.detach().double().mean()),
            "steps_run": steps_run,
            "mode": mode,
            "flops": float(_train_factor(useful_attn, useful_lin, mode)),
            "flops_executed": float(_train_factor(exec_attn, exec_lin, mode)),
        }

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        """The last call's ponder figures; histogram[k] = tokens that took k steps (k = 0..max_steps)."""
        return dict(getattr(module, "last", {}))

    # --- analytic estimates (the measured figures replace them in the record) --------------
    @classmethod
    def _parts(cls, params: ACTParams, shape: Shape, executed: bool) -> tuple[float, float]:
        """(attention, linear) FLOPs of one forward call. Frozen: useful at the target mean
        ponder steps; executed `mask` assumes the loop runs to max_steps (an upper bound).
        t2t: every token at every step, useful and executed, up to max_steps (an upper bound)."""
        inner = _inner_class(params.attention)
        ip = _inner_params(params.attention, shape)
        per_row = _per_token_linear_flops(shape.model_dim) + 2.0 * shape.model_dim
        tokens = shape.batch * shape.seq_len
        if params.halting == "t2t" or (executed and params.resolved_execution == "mask"):
            steps = float(params.max_steps)
        else:
            steps = params.target_steps
        attention = inner.executed_flops(ip, shape) if executed else inner.flops(ip, shape)
        return steps * attention, steps * per_row * tokens

    @classmethod
    def working_bytes(cls, params: ACTParams, shape: Shape, itemsize: int) -> int:
        inner = _inner_class(params.attention)
        ip = _inner_params(params.attention, shape)
        tokens_d = shape.batch * shape.seq_len * shape.model_dim * itemsize
        # state, accumulator and step input, plus (frozen) the key and value caches, plus one
        # layer's activations.
        held = (3 if params.halting == "t2t" else 5) * tokens_d
        return inner.working_bytes(ip, shape, itemsize) + PreNormLayer.activation_bytes(shape, itemsize) + held

    @classmethod
    def case_min_bytes(cls, params: Any, shape: Shape, scope: str, itemsize: int) -> int:
        return cls.working_bytes(params, shape, itemsize)

    @classmethod
    def peak_bytes_estimate(
        cls, params: ACTParams, shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice = MATH
    ) -> int:
        inner = _inner_class(params.attention)
        ip = _inner_params(params.attention, shape)
        tokens_d = shape.batch * shape.seq_len * shape.model_dim * itemsize
        one = cls._layer_peak(inner, ip, shape, itemsize, train, sdpa) + 8 * tokens_d
        # Training keeps every step's activations; halting may run to max_steps.
        steps = params.max_steps if train else 1
        return one * steps + PreNormLayer.weight_bytes(shape, itemsize) * (3 if train else 1)

    @classmethod
    def case_peak_estimate(
        cls, params: Any, shape: Shape, scope: str, itemsize: int, mode: str, sdpa: SdpaChoice = MATH
    ) -> int:
        return cls.peak_bytes_estimate(params, shape, itemsize, mode == "train", sdpa)
