"""The `layer` scope: a pre-norm transformer layer around any attention variant."""

from __future__ import annotations

from torch import Tensor, nn

from attnbench.workloads.shape import FFN_MULT, Shape
from attnbench.workloads.step_range import step_range


class PreNormLayer(nn.Module):
    """x + Attn(LN(x)) then x + FFN(LN(x)), with fused QKV and output projections.

    FFN width is 4·D with GELU, as in the standard configurations.
    """

    def __init__(self, attention: nn.Module, shape: Shape) -> None:
        super().__init__()
        D = shape.model_dim
        self.heads, self.head_dim = shape.heads, shape.head_dim
        self.attention = attention
        self.norm1 = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.norm2 = nn.LayerNorm(D)
        self.ffn = nn.Sequential(nn.Linear(D, FFN_MULT * D), nn.GELU(), nn.Linear(FFN_MULT * D, D))

    def forward(self, x: Tensor) -> Tensor:
        B, n, D = x.shape
        with step_range("layer.qkv"):
            qkv = self.qkv(self.norm1(x)).view(B, n, 3, self.heads, self.head_dim)  # (B, n, 3, h, d)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, n, d)
        with step_range("layer.attention"):
            a = self.attention(q, k, v).transpose(1, 2).reshape(B, n, D)  # (B, n, D)
        with step_range("layer.proj"):
            x = x + self.proj(a)
        with step_range("layer.ffn"):
            return x + self.ffn(self.norm2(x))

    @staticmethod
    def linear_flops(shape: Shape) -> float:
        """Projections 8nD² plus FFN 4nD·d_ff, per docs/cost-model.md, over the batch."""
        n, D = shape.seq_len, shape.model_dim
        return float(shape.batch * (8 * n * D * D + 4 * n * D * FFN_MULT * D))

    @staticmethod
    def activation_bytes(shape: Shape, itemsize: int) -> int:
        """The widest activation alive at once: the FFN hidden state (B, n, 4D) plus the residual."""
        return shape.batch * shape.seq_len * shape.model_dim * (FFN_MULT + 1) * itemsize

    @staticmethod
    def weight_bytes(shape: Shape, itemsize: int) -> int:
        D = shape.model_dim
        return (4 * D * D + 2 * FFN_MULT * D * D) * itemsize
