"""A dispatch-level recorder: how big is every tensor an op returns? (the no-n×n checks)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class OpRecorder(TorchDispatchMode):
    """Counts aten ops and the largest number of elements any of them returns.

    With keep_calls, also keeps (op, args, output tensors) for each call; that keeps the
    tensors alive, so use it only on small inputs.
    """

    def __init__(self, keep_calls: bool = False) -> None:
        super().__init__()
        self.largest = 0
        self.ops = 0
        self.keep_calls = keep_calls
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        tensors = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        for t in tensors:
            self.largest = max(self.largest, t.numel())
        if self.keep_calls:
            self.calls.append((func, args, tensors))
        return out


def new_tensors(rec: OpRecorder) -> list[tuple[object, int]]:
    """(op, elements) of every tensor an op returned in storage of its own: neither a view of
    one of its arguments nor an argument written in place."""
    found = []
    for func, args, outs in rec.calls:
        given = {a.untyped_storage().data_ptr() for a in tree_leaves(args) if isinstance(a, torch.Tensor)}
        found += [(func, t.numel()) for t in outs if t.untyped_storage().data_ptr() not in given]
    return found
