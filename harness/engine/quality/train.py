"""What a `bench quality` worker does: train one small model on one task, then evaluate it.

Runs inside the isolated worker process (attnbench.engine.worker, phase "quality"), so the
executor's timeouts, memory guard and isolation apply as to any case. The model is
attnbench.workloads.quality_model.TaskModel over the case's layer-scope block, built by the
case's implementation (native, flex, hf, ...). Every training step is timed on the backend's
own timer (which synchronises the device before reading the clock); the batch is generated
before the step, outside its time. The first step (lazy initialisation, compilation) is kept
apart from the steady-state steps. Peak memory is measured by `memory_phase`, in a worker of its
own, because the CPU meter changes how its process allocates (attnbench.backends.cpu).

Determinism: the weights come from `torch.manual_seed(seed)`, the training batches from a
generator seeded with the seed, the held-out set from one seeded with HELD_OUT_SEED + seed
(the same held-out questions for every design at a seed, so designs are compared on the same
questions). On one machine and thread count the same seed gives the same accuracy
(tests/test_quality_train.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.backends.base import DTYPES, Backend
from attnbench.core.errors import Unsupported
from attnbench.core.quality_record import QualityJob
from attnbench.core.registry import get_impl
from attnbench.core.settings import RunSettings
from attnbench.core.stats import betainc, summarize
from attnbench.engine.build import load_case
from attnbench.workloads.base import AttentionVariant, Shape
from attnbench.workloads.quality_model import ModelConfig, TaskModel, single_vector_refusal
from attnbench.workloads.tasks import IGNORE, Task, TaskBatch, get_task

TRAINING_BACKENDS = ("cpu", "cuda")
TRAINING_DTYPES = ("float32", "float64")
HELD_OUT_SEED = 1_000_003
LEARNED_P = 0.01  # one-sided binomial p below which the accuracy beats chance
WARMUP_FRACTION = 0.1  # of the steps: the learning rate rises linearly, then decays (cosine) to 10%
GRAD_CLIP = 1.0
CURVE_POINTS = 50  # loss-curve points kept per job

FirstCallReport = Callable[[float | None], None]


def make_task(job: QualityJob) -> Task:
    cls = get_task(job.task)
    return cls(cls.make_params(dict(job.task_params)), job.case.seq_len)


def _refusal(job: QualityJob, backend: Backend) -> str | None:
    case = job.case
    if case.backend not in TRAINING_BACKENDS:
        return f"bench quality trains on {' or '.join(TRAINING_BACKENDS)}; {case.backend} runs inference graphs"
    if case.dtype not in TRAINING_DTYPES:
        return f"bench quality trains in {' or '.join(TRAINING_DTYPES)}, not {case.dtype}"
    if case.transform != "none":
        return f"transform {case.transform} applies to a built module for timing; bench quality trains untransformed"
    return None


def build_model(job: QualityJob, task: Task, backend: Backend) -> tuple[TaskModel, type[AttentionVariant]]:
    """The seeded model on the backend's device, in the case's dtype."""
    from attnbench.core.registry import get_workload

    case = job.case
    cls = get_workload(case.variant)
    params = cls.make_params(case.params_dict)
    impl = get_impl(case.impl)
    config = ModelConfig(layers=job.layers, model_dim=job.model_dim, heads=case.heads)
    shape = Shape(case.batch, case.heads, case.head_dim, case.seq_len)
    torch.manual_seed(job.seed)
    model = TaskModel(
        lambda s: impl.build(cls, params, s, "layer"), case.variant, config, task.vocab_size, task.num_classes, shape
    )
    return model.to(backend.device, DTYPES[case.dtype]), cls


def _prepare(
    job: QualityJob, settings: RunSettings, backend: Backend | None = None
) -> tuple[Backend, Task, dict[str, Any]]:
    if backend is None:
        _, backend = load_case(job.case, settings)
    reason = _refusal(job, backend)
    if reason:
        raise Unsupported(reason)
    backend_settings = backend.setup(job.case)
    task = make_task(job)
    probe = task.generate(1, torch.Generator().manual_seed(0))
    reason = single_vector_refusal(job.case.variant, int((probe.targets != IGNORE).sum()))
    if reason:
        raise Unsupported(reason)
    return backend, task, backend_settings


def _to(batch: TaskBatch, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    tokens, targets = batch.tokens.to(device), batch.targets.to(device)
    return tokens, targets, targets != IGNORE


def _loss(model: TaskModel, tokens: Tensor, targets: Tensor, asked: Tensor) -> Tensor:
    logits = model(tokens, asked)  # (B, n, classes)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


def _lr_factor(step: int, steps: int) -> float:
    warm = max(1, int(WARMUP_FRACTION * steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def binomial_tail(correct: int, asked: int, p: float) -> float:
    """P(X ≥ correct) for X ~ Binomial(asked, p): the chance of doing this well by guessing."""
    if correct <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    return betainc(correct, asked - correct + 1, p)  # the regularised incomplete beta identity


def distance_bins(n: int) -> list[tuple[int, int]]:
    """[lo, hi) dependency-distance bins: powers of two from 1 up to n."""
    bins, lo = [], 1
    while lo < n:
        bins.append((lo, min(2 * lo, n)))
        lo *= 2
    return bins


def evaluate(model: TaskModel, task: Task, job: QualityJob, device: torch.device) -> dict[str, Any]:
    """Held-out accuracy (whole batches of the training batch size), per distance where defined."""
    gen = torch.Generator().manual_seed(HELD_OUT_SEED + job.seed)
    B, n = job.case.batch, job.case.seq_len
    batches = max(1, -(-job.eval_examples // B))
    bins = distance_bins(n)
    by_bin = [[0, 0] for _ in bins]
    correct = asked_total = 0
    model.eval()
    with torch.no_grad():
        for _ in range(batches):
            batch = task.generate(B, gen)
            tokens, targets, asked = _to(batch, device)
            hit = (model(tokens, asked).argmax(-1) == targets) & asked  # (B, n)
            correct += int(hit.sum())
            asked_total += int(asked.sum())
            dist, asked_cpu, hit_cpu = batch.distances, asked.cpu(), hit.cpu()
            if bool((dist[asked_cpu] >= 0).any()):
                for i, (lo, hi) in enumerate(bins):
                    inside = asked_cpu & (dist >= lo) & (dist < hi)
                    by_bin[i][0] += int(inside.sum())
                    by_bin[i][1] += int((hit_cpu & inside).sum())
    model.train()
    chance = task.chance()
    accuracy = correct / asked_total if asked_total else None
    p = binomial_tail(correct, asked_total, chance) if asked_total else None
    by_distance = [
        {"lo": lo, "hi": hi, "asked": a, "correct": c} for (lo, hi), (a, c) in zip(bins, by_bin, strict=True) if a
    ]
    return {
        "accuracy": accuracy,
        "chance": chance,
        "asked": asked_total,
        "eval_examples": batches * B,
        "learned": None if p is None else p < LEARNED_P,
        "learned_p": p,
        "by_distance": by_distance or None,
    }


def quality_phase(job: QualityJob, settings: RunSettings, first_call: FirstCallReport | None = None) -> dict[str, Any]:
    """Train, evaluate and (with job.maps) read attention maps; the record's fields as a dict."""
    began = time.perf_counter()
    backend, task, backend_settings = _prepare(job, settings)
    model, _ = build_model(job, task, backend)
    device = backend.device
    opt = torch.optim.AdamW(model.parameters(), lr=job.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, job.steps))
    gen = torch.Generator().manual_seed(job.seed)
    timer = backend.timer()
    losses: list[float] = []
    samples: list[float] = []
    first_step_s = None
    diverged_at = None
    current: dict[str, Tensor] = {}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = _loss(model, current["tokens"], current["targets"], current["asked"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        sched.step()
        current["loss"] = loss.detach()

    model.train()
    for i in range(job.steps):
        generated = time.perf_counter()
        if i == 0 and first_call is not None:
            first_call(None)
        current["tokens"], current["targets"], current["asked"] = _to(task.generate(job.case.batch, gen), device)
        seconds = timer.time(step, 1)
        if i == 0:
            first_step_s = seconds
            if first_call is not None:  # the executor's limit scales with a whole step, its batch included
                first_call(time.perf_counter() - generated)
        else:
            samples.append(seconds)
        loss = float(current["loss"])
        losses.append(loss)
        if not math.isfinite(loss):
            diverged_at = i
            break
    train_wall_s = time.perf_counter() - began
    every = max(1, len(losses) // CURVE_POINTS)
    curve = [[i, losses[i]] for i in range(0, len(losses), every)]
    tail = losses[-max(1, len(losses) // 10) :]
    result: dict[str, Any] = {
        "steps_done": len(losses),
        "diverged_at": diverged_at,
        "loss_first": losses[0] if losses else None,
        "loss_final": sum(tail) / len(tail) if tail and diverged_at is None else None,
        "loss_curve": curve,
        "step_time_s": summarize(samples).to_json() if samples else None,
        "first_step_s": first_step_s,
        "train_wall_s": train_wall_s,
        "device": {**backend.describe(), "settings": backend_settings},
    }
    if diverged_at is not None:
        result["status"] = "diverged"
        result["reason"] = f"the training loss was {losses[-1]} at step {diverged_at}; not evaluated"
        result["chance"] = task.chance()
        return result
    result.update(evaluate(model, task, job, device))
    result["status"] = "ok"
    if result["learned"] is False:
        result["reason"] = (
            f"did not beat chance: accuracy {result['accuracy']:.3f} against {result['chance']:.3f} "
            f"(one-sided binomial p = {result['learned_p']:.2g} over {result['asked']} held-out answers)"
        )
    if job.maps:
        from attnbench.engine.quality.maps import attention_maps

        result["maps_data"], result["maps_reason"] = attention_maps(model, task, job, device)
    return result


def memory_phase(job: QualityJob, settings: RunSettings, first_call: FirstCallReport | None = None) -> dict[str, Any]:
    """Peak memory of one training step (after one unmeasured step), in a worker of its own."""
    _, backend = load_case(job.case, settings)
    meter = backend.memory_meter()
    meter.prepare_process()
    backend, task, _ = _prepare(job, settings, backend)
    model, _ = build_model(job, task, backend)
    opt = torch.optim.AdamW(model.parameters(), lr=job.lr)
    gen = torch.Generator().manual_seed(job.seed)
    batches = [_to(task.generate(job.case.batch, gen), backend.device) for _ in range(2)]

    def one(tokens: Tensor, targets: Tensor, asked: Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        _loss(model, tokens, targets, asked).backward()
        opt.step()

    if first_call is not None:
        first_call(None)
    began = time.perf_counter()
    one(*batches[0])  # optimizer state and lazy initialisation belong to no measurement
    backend.synchronize()
    if first_call is not None:
        first_call(time.perf_counter() - began)
    meter.start()
    one(*batches[1])
    reading = meter.stop()
    return {
        "peak_memory_bytes": reading.peak_bytes,
        "memory_method": reading.method,
        "memory_reason": reading.reason,
    }
