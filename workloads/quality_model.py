"""The small model `bench quality` trains: token embedding, a token shift, learned positions, a
stack of the variant's `layer`-scope blocks, a final norm and a linear head at every position.

The token shift adds to each position an embedding of the token before it (a causal
convolution of width 2, as the short convolutions Zoology pairs with attention). With it,
recalling the value that followed a key is one attention hop (the query attends to the position
whose predecessor was its key); without it a 2-layer model must first form an induction head
(attend to the previous token, then match), which takes thousands of steps: beyond the minutes
a CPU gives the quality suite. Only attention moves information further than one position, so
what the tasks measure over distance is still the attention design's.

The blocks are exactly what `bench run --scope layer` times (the implementation's build of the
variant in the layer scope: the pre-norm layer around the attention, or the design's own whole
layer such as the Universal Transformer's shared step), so the accuracy measured here belongs to
the same module whose cost the harness reports.

A design whose layer ends in one vector per sequence (HAN's document vector, (B, D)) is the
whole encoder: it is used once, and its vector is read at the one position each sequence asks
about; tasks that ask at several positions per sequence cannot be answered by it
(`single_vector_refusal`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.workloads.base import AttentionVariant, Shape


@dataclass(frozen=True)
class ModelConfig:
    """The model's size; D = heads · head_dim."""

    layers: int = 2
    model_dim: int = 128
    heads: int = 4

    def __post_init__(self) -> None:
        for name in ("layers", "model_dim", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model {name} must be a positive whole number, got {value!r}")
        if self.model_dim % self.heads:
            raise ValueError(f"model_dim {self.model_dim} is not a multiple of heads {self.heads}")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.heads

    def to_json(self) -> dict[str, Any]:
        return {"layers": self.layers, "model_dim": self.model_dim, "heads": self.heads}


# Layer-only designs whose layer returns one vector per sequence, not one per position.
SINGLE_VECTOR = ("hierarchical.han",)


def single_vector_refusal(variant: str, asked_per_row: int) -> str | None:
    """Why a design that encodes a whole sequence into one vector cannot answer this task."""
    if variant in SINGLE_VECTOR and asked_per_row != 1:
        return (
            f"{variant} encodes a sequence into one vector, so it answers one question per sequence; "
            f"this task asks {asked_per_row}"
        )
    return None


class TaskModel(nn.Module):
    """tokens (B, n) -> logits (B, n, classes). `build_block(shape)` returns one layer-scope block."""

    def __init__(
        self,
        build_block: Any,
        variant: str,
        config: ModelConfig,
        vocab_size: int,
        num_classes: int,
        shape: Shape,
    ) -> None:
        super().__init__()
        D = config.model_dim
        self.single_vector = variant in SINGLE_VECTOR
        self.embed = nn.Embedding(vocab_size, D)
        self.shift = nn.Embedding(vocab_size + 1, D)  # the previous token; index vocab_size: none (position 0)
        self.position = nn.Parameter(torch.randn(shape.seq_len, D) * 0.02)  # learned, one per position
        layers = 1 if self.single_vector else config.layers
        self.blocks = nn.ModuleList(build_block(shape) for _ in range(layers))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, num_classes)

    def forward(self, tokens: Tensor, asked: Tensor | None = None) -> Tensor:
        """tokens (B, n) int64 -> logits (B, n, classes). A single-vector design puts its
        sequence vector's logits at the asked position (`asked`: (B, n) bool, one per row)."""
        previous = F.pad(tokens[:, :-1], (1, 0), value=self.shift.num_embeddings - 1)  # (B, n)
        x = self.embed(tokens) + self.shift(previous) + self.position[: tokens.shape[1]]  # (B, n, D)
        for block in self.blocks:
            x = block(x)
        if self.single_vector:
            if asked is None:
                raise ValueError("a single-vector design needs the asked positions")
            logits = self.head(self.norm(x))  # (B, classes)
            return torch.where(asked[..., None], logits[:, None, :], 0.0)  # (B, n, classes)
        return self.head(self.norm(x))  # (B, n, classes)


def attention_modules(model: TaskModel) -> list[tuple[int, AttentionVariant]]:
    """(block index, attention variant) of each block whose attention is a variant module with
    a core form: where attention maps can be read from the (q, k) it receives."""
    found = []
    for i, block in enumerate(model.blocks):
        for module in block.modules():
            if isinstance(module, AttentionVariant) and "core" in type(module).scopes:
                found.append((i, module))
                break
    return found
