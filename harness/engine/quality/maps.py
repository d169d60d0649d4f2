"""Attention maps of a trained model (`bench quality --maps`): the probabilities each layer's
attention gives one held-out example, per head, not just its pattern.

The (q, k) each attention module receives are captured with a forward pre-hook (a module called
several times in one forward, the Universal Transformer's shared step, keeps its last call), and the
probabilities come from the variant's own definition (`AttentionVariant.probabilities`, in
float64: the masked softmax, LSH's round-counted shared-QK weights, Transformer-XL's content and
position scores). Maps are averaged over f × f cells down to at most MAP_SIZE × MAP_SIZE, so
a stored map stays small at any length; the record says f.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.core.quality_record import QualityJob
from attnbench.workloads.quality_model import TaskModel, attention_modules
from attnbench.workloads.tasks import IGNORE, Task

MAP_SIZE = 128
MAP_HELD_OUT_SEED = 7  # the example drawn for the maps: the same for every design at a length
DIGITS = 5


def pooled(probs: Tensor, size: int = MAP_SIZE) -> tuple[Tensor, int]:
    """(h, n, n) -> (h, m, m) with m = ⌈n/f⌉ ≤ size, each cell the mean of f × f probabilities."""
    n = probs.shape[-1]
    f = -(-n // size)
    if f == 1:
        return probs, 1
    pad = -n % f
    x = F.pad(probs, (0, pad, 0, pad))  # zeros: padded cells hold no probability
    return F.avg_pool2d(x[:, None], f)[:, 0], f


def attention_maps(
    model: TaskModel, task: Task, job: QualityJob, device: torch.device
) -> tuple[dict[str, Any] | None, str | None]:
    """({layers: [{layer, heads: [[row, ...], ...]}], pool, asked, ...}, None), or (None, why not)."""
    found = attention_modules(model)
    if not found:
        return None, (
            f"the {job.case.impl} implementation of {job.case.variant} has no attention module whose "
            "probabilities this project can compute (maps need a variant with a core form)"
        )
    captured: dict[int, tuple[Tensor, Tensor]] = {}
    hooks = []
    for index, module in found:

        def grab(_module: Any, args: tuple, index: int = index) -> None:
            captured[index] = (args[0].detach(), args[1].detach())

        hooks.append(module.register_forward_pre_hook(grab))
    batch = task.generate(job.case.batch, torch.Generator().manual_seed(MAP_HELD_OUT_SEED))
    tokens, targets = batch.tokens.to(device), batch.targets.to(device)
    asked = targets != IGNORE
    model.eval()
    try:
        with torch.no_grad():
            predicted = model(tokens, asked).argmax(-1)
    finally:
        for hook in hooks:
            hook.remove()
        model.train()
    layers, f = [], 1
    for index, module in found:
        if index not in captured:  # the block computed its attention without calling this module
            continue  # (ACT's gather path calls scaled_dot_product_attention on the running tokens)
        q, k = captured[index]
        with torch.no_grad():
            probs = module.probabilities(q[:1].cpu(), k[:1].cpu())[0]  # (h, n, n), example 0
        small, f = pooled(probs)
        layers.append(
            {
                "layer": index,
                "heads": [[[round(float(x), DIGITS) for x in row] for row in head.tolist()] for head in small],
            }
        )
    if not layers:
        return None, (
            f"{job.case.variant} computes its attention without calling a variant module "
            "(e.g. ACT's gather path attends from the running tokens directly), so there are no (q, k) to map"
        )
    where = asked[0].nonzero().flatten().tolist()
    return {
        "task": job.task,
        "variant": job.case.variant,
        "impl": job.case.impl,
        "seq_len": job.case.seq_len,
        "seed": job.seed,
        "pool": f,
        "asked_positions": where,
        "answers": targets[0, where].tolist(),
        "predicted": predicted[0, where].tolist(),
        "layers": layers,
    }, None
