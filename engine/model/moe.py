"""Feed-forward blocks: the dense SwiGLU MLP and the sparse mixture of experts.

Legend: N = tokens (batch * time), E = experts, k = experts per token, H = hidden, I = expert width.

Router (as transformers): softmax over all E router logits in fp32 -> top-k -> renormalise when
``norm_topk_prob``. Experts are SwiGLU, ``down(silu(gate(x)) * up(x))``, with gate and up packed
as one (E, 2I, H) tensor. The forward groups the N*k (token, expert) pairs by expert and runs one
matmul per expert that was hit, so decoding one token touches only its k experts.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import MellumConfig


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Routing(NamedTuple):
    logits: torch.Tensor  # (N, E) raw router logits, for the load-balancing loss
    weights: torch.Tensor  # (N, k)
    experts: torch.Tensor  # (N, k) expert ids


def route(x: torch.Tensor, gate: torch.Tensor, top_k: int, normalise: bool) -> Routing:
    logits = F.linear(x, gate)  # (N, E)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    if normalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routing(logits, weights.to(x.dtype), experts)


def experts_forward(
    x: torch.Tensor, routing: Routing, gate_up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """x (N, H) -> (N, H): each token's k expert outputs, weighted and summed."""
    n, k = routing.experts.shape
    if n == 1:  # decoding one token: its k experts, no grouping needed
        y = torch.zeros_like(x)
        for e, w in zip(routing.experts[0].tolist(), routing.weights[0], strict=True):
            g, u = F.linear(x, gate_up[e]).chunk(2, dim=-1)
            y = y + w * F.linear(F.silu(g) * u, down[e])
        return y
    flat = routing.experts.reshape(-1)  # (N*k,)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=gate_up.shape[0]).tolist()
    token = order // k  # token of each sorted pair
    xs = x[token]  # (N*k, H) grouped by expert
    outs, begin = [], 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        g, u = F.linear(xs[begin : begin + c], gate_up[e]).chunk(2, dim=-1)  # (c, I) each
        outs.append(F.linear(F.silu(g) * u, down[e]))
        begin += c
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    out = out * routing.weights.reshape(-1)[order, None]
    return torch.zeros_like(x).index_add_(0, token, out)


class SparseMoE(nn.Module):
    def __init__(self, config: MellumConfig) -> None:
        super().__init__()
        m = config.moe
        self.top_k, self.normalise = m.top_k, m.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, m.num_experts, bias=False)  # the router
        self.gate_up_proj = nn.Parameter(
            torch.empty(m.num_experts, 2 * m.intermediate_size, config.hidden_size)
        )
        self.down_proj = nn.Parameter(torch.empty(m.num_experts, config.hidden_size, m.intermediate_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H) -> output (B, T, H), router logits (B*T, E)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = route(flat, self.gate.weight, self.top_k, self.normalise)
        return experts_forward(flat, routing, self.gate_up_proj, self.down_proj).view(shape), routing.logits
