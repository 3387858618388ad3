"""The RoFormers' building blocks, their parameters named as the community checkpoints name them.

Axial transformer layers (attention with rotary positions and per-head gates, or the linear
attention across features), RMS norms, and the per-band projections in (`BandSplit`) and out
(`MaskEstimator`). Under `torch.autocast` the norms and the rotary angles are computed in fp32
(the linear layers take autocast's precision).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """`x / |x| * sqrt(dim) * gamma` over the last dimension (the norm in fp32)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1).to(x.dtype) * self.scale * self.gamma


class Rotary(nn.Module):
    """Rotary position embedding over the sequence axis: each pair of features `(2i, 2i+1)`
    turned by `position * freqs[i]` (angles in fp32, outside autocast)."""

    def __init__(self, dim_head: int, theta: float = 10000.0):
        super().__init__()
        exponents = torch.arange(0, dim_head, 2)[:dim_head // 2].float() / dim_head
        self.freqs = nn.Parameter(1.0 / theta**exponents, requires_grad=False)

    def angles(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, sin)`, each `[length, dim_head]`, in fp32."""
        with torch.autocast(device.type, enabled=False):
            positions = torch.arange(length, device=device, dtype=torch.float32)
            turns = torch.outer(positions, self.freqs.float()).repeat_interleave(2, dim=-1)
            return turns.cos(), turns.sin()

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """`x` (`[..., length, dim_head]`) rotated, in its own dtype."""
        pairs = x.float().unflatten(-1, (-1, 2))
        swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return (x.float() * cos + swapped * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention over the sequence, with rotary positions and a sigmoid gate per
    head."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: Rotary):
        super().__init__()
        self.heads = heads
        self.rotary_embed = rotary
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        batch, length, _ = x.shape
        q, k, v = self.to_qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        cos, sin = self.rotary_embed.angles(length, x.device)
        q, k = Rotary.rotate(q, cos, sin), Rotary.rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out * self.to_gates(x).transpose(1, 2).unsqueeze(-1).sigmoid()
        return self.to_out(out.transpose(1, 2).reshape(batch, length, -1))


class LinearAttention(nn.Module):
    """Attention across features rather than positions (cross-covariance attention, El-Nouby et
    al. 2021): queries and keys l2-normed over the sequence, scaled by a learnt temperature."""

    def __init__(self, dim: int, heads: int, dim_head: int, scale: float = 8.0):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.norm = RMSNorm(dim)
        # the checkpoints' indices: a reshape stands at to_qkv.1 and at to_out.0
        self.to_qkv = nn.Sequential(nn.Linear(dim, 3 * heads * dim_head, bias=False))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(nn.Identity(), nn.Linear(heads * dim_head, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        batch, length, _ = x.shape
        q, k, v = self.to_qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 4, 1)
        q, k = (F.normalize(t.float(), dim=-1).to(t.dtype) for t in (q, k))
        q = q * self.temperature.exp()
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out[1](out.permute(0, 3, 1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    """RMS norm, a GELU layer `mult` times wider, back to `dim`."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = int(dim * mult)  # dropouts stand at net.3 and net.5 in the checkpoints
        self.net = nn.Sequential(RMSNorm(dim), nn.Linear(dim, inner), nn.GELU(), nn.Identity(),
                                 nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """`depth` residual (attention, feed-forward) pairs over `[batch, length, dim]`, then an RMS
    norm when `norm_output`."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, norm_output: bool,
                 rotary: Rotary | None = None):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head, rotary) if rotary else
                           LinearAttention(dim, heads, dim_head), FeedForward(dim)])
            for _ in range(depth))
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = attention(x) + x
            x = feed_forward(x) + x
        return self.norm(x)


class BandSplit(nn.Module):
    """`[batch, time, sum(widths)]` -> `[batch, time, bands, dim]`: each band's slice normed and
    projected to `dim`."""

    def __init__(self, dim: int, widths: tuple[int, ...]):
        super().__init__()
        self.widths = list(widths)
        self.to_features = nn.ModuleList(nn.Sequential(RMSNorm(width), nn.Linear(width, dim))
                                         for width in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = x.split(self.widths, dim=-1)
        return torch.stack([net(band) for band, net in zip(bands, self.to_features)], dim=-2)


def mlp(dim_in: int, dim_out: int, dim_hidden: int, hidden_layers: int) -> nn.Sequential:
    """Linear layers through `hidden_layers` hidden ones of `dim_hidden`, tanh between them."""
    dims = [dim_in, *[dim_hidden] * hidden_layers, dim_out]
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(dims, dims[1:])):
        layers += [nn.Tanh()] if index else []
        layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """`[batch, time, bands, dim]` -> `[batch, time, sum(widths)]`: each band's features through
    an MLP and a GLU to its slice of the complex mask."""

    def __init__(self, dim: int, widths: tuple[int, ...], hidden_layers: int, expansion: int):
        super().__init__()
        self.to_freqs = nn.ModuleList(
            nn.Sequential(mlp(dim, 2 * width, dim * expansion, hidden_layers), nn.GLU(dim=-1))
            for width in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = x.unbind(dim=-2)
        return torch.cat([net(band) for band, net in zip(bands, self.to_freqs)], dim=-1)
