"""Distillation as a transform: a student with fewer heads, initialised from the teacher's most
important heads and trained briefly to match the layer (layer scope, torch eager backends)."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

from attnbench.engine.transforms.base import (
    Applied,
    Transform,
    TransformUnsupported,
    module_bytes,
    require_torch_backend,
)
from attnbench.engine.transforms.fidelity import Tolerance
from attnbench.engine.transforms.heads import heads_to_keep, make_pruned_layer, needs_layer
from attnbench.engine.transforms.registry import register_transform

if TYPE_CHECKING:
    from torch import Tensor, nn

    from attnbench.core.cases import Case

DISTILL_STEPS = 50
DISTILL_HEAD_FRACTION = 0.5  # the student keeps this share of the teacher's heads
DISTILL_TRAIN_LEN = 64  # synthetic training sequences: short, so training stays a few seconds on a CPU
DISTILL_LR = 3e-4


@register_transform
class Distill(Transform):
    name = "distill"
    summary = (
        f"a {DISTILL_HEAD_FRACTION:.0%}-heads student trained {DISTILL_STEPS} steps to match the layer (layer scope)"
    )
    # A half-heads student after 50 Adam steps on synthetic data. Measured here (layer, heads 8,
    # head_dim 64, n 256): rel_err 1.7e-2 against its teacher (what the layer adds: 8.7e-2);
    # its validation loss falls by ~20% over the steps.
    tolerance = Tolerance(rel_err=6e-2, min_cosine=0.998)

    def apply(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
        import torch

        require_torch_backend(case)
        needs_layer(module, case, "distillation")
        if case.heads < 2:
            raise TransformUnsupported("distillation to fewer heads needs at least 2 heads")
        t0 = time.perf_counter()
        keep, _ = heads_to_keep(module, DISTILL_HEAD_FRACTION)
        student = make_pruned_layer(module, keep)  # initialised from the teacher's most important heads
        teacher = copy.deepcopy(module).float().requires_grad_(False)
        gen = torch.Generator().manual_seed(seed + 9)
        D = case.heads * case.head_dim
        n = min(case.seq_len, DISTILL_TRAIN_LEN)
        val = torch.randn(1, n, D, generator=gen)
        # Only the attention projections learn (the FFN and norms are the teacher's, copied): they
        # are what changed, and training them alone keeps the 50 steps to seconds on a CPU.
        student.requires_grad_(False)
        trained = [*student.qkv.parameters(), *student.proj.parameters()]
        for p in trained:
            p.requires_grad_(True)
        opt = torch.optim.Adam(trained, lr=DISTILL_LR)
        with torch.no_grad():
            val_target = teacher(val)
            val_before = torch.nn.functional.mse_loss(student(val), val_target).item()
        losses = []
        for _ in range(DISTILL_STEPS):
            x = torch.randn(1, n, D, generator=gen)
            with torch.no_grad():
                target = teacher(x)
            loss = torch.nn.functional.mse_loss(student(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            val_after = torch.nn.functional.mse_loss(student(val), val_target).item()
        student.requires_grad_(True)
        train_s = time.perf_counter() - t0
        details = {
            "student": f"same layer, {len(keep)} of {case.heads} heads (initialised from the teacher's "
            "most important heads by output-projection norm), same attention variant",
            "kept_heads": keep,
            "objective": "MSE to the teacher's layer output",
            "data": f"synthetic N(0,1) inputs, batch 1, length {n}, seed {seed + 9}, a fresh batch per step",
            "optimizer": f"Adam lr {DISTILL_LR}",
            "trained": "qkv and proj (the attention projections); norms and FFN copied from the teacher",
            "steps": DISTILL_STEPS,
            "loss_first_step": losses[0],
            "loss_last_step": losses[-1],
            "val_loss_before": val_before,
            "val_loss_after": val_after,
            "train_s": train_s,
            "weight_bytes_before": module_bytes(module),
            "weight_bytes_after": module_bytes(student),
            "note": "flops in the record are the teacher's; the student does less work",
        }
        return Applied("distill", student, None, details, self.tolerance, apply_s=train_s, metrics_module=student)
