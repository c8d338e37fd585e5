"""Generation over any backend: prefill, decode one token, sample, and the plain generate loop.

Offers ``SamplingParams``, ``Sampler`` (greedy / temperature / top-k / top-p in numpy),
``log_softmax``, ``prefill``, ``decode_one_token`` and ``generate``. Speculative decoding lives
in ``engine.speculative`` and must give the same greedy tokens as ``generate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .backends.base import Backend, Sequence


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class Sampler:
    """Picks the next token from raw logits (vocab,)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        p = self.params
        if p.greedy:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / p.temperature
        if p.top_k:
            kth = np.partition(z, -p.top_k)[-p.top_k]
            z = np.where(z < kth, -np.inf, z)
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        if p.top_p < 1:
            order = np.argsort(-probs)
            cum = np.cumsum(probs[order])
            cut = order[np.searchsorted(cum, p.top_p) + 1 :]  # keep the smallest set reaching top_p
            probs[cut] = 0
            probs /= probs.sum()
        return int(self.rng.choice(len(probs), p=probs))


def prefill(backend: Backend, seq: Sequence, ids: list[int], chunk: int = 1024) -> np.ndarray:
    """Feed ``ids`` in chunks (bounding attention memory); return the logits of the last position."""
    if not ids:
        raise ValueError("prefill needs at least one token")
    logits = None
    for i in range(0, len(ids), chunk):
        logits = backend.forward(seq, ids[i : i + chunk], logits_to_keep=1)
    return logits[-1]


def decode_one_token(backend: Backend, seq: Sequence, token: int) -> np.ndarray:
    return backend.forward(seq, [token], logits_to_keep=1)[-1]


@dataclass
class GenerateResult:
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stopped: str = "length"  # "length" | "stop" | "cancelled" | "deadline"


def generate(
    backend: Backend,
    prompt_ids: list[int],
    params: SamplingParams,
    seq: Sequence | None = None,
    should_stop: Callable[[], str | None] | None = None,
    on_token: Callable[[int], None] | None = None,
) -> GenerateResult:
    """Plain autoregressive generation. ``seq`` may already hold a prefix of ``prompt_ids``."""
    seq = seq if seq is not None else backend.new_sequence()
    sampler = Sampler(params)
    out = GenerateResult()
    t0 = time.perf_counter()
    logits = prefill(backend, seq, prompt_ids[len(seq.ids) :]) if len(seq.ids) < len(prompt_ids) else None
    if logits is None:
        raise ValueError("the sequence already holds the whole prompt; nothing to predict from")
    out.prefill_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for i in range(params.max_new_tokens):
        token = sampler(logits)
        out.ids.append(token)
        out.logprobs.append(float(log_softmax(logits)[token]))
        if on_token:
            on_token(token)
        if token in params.stop_ids:
            out.stopped = "stop"
            break
        reason = should_stop() if should_stop else None
        if reason:
            out.stopped = reason
            break
        if i + 1 < params.max_new_tokens:
            logits = decode_one_token(backend, seq, token)
    out.decode_s = time.perf_counter() - t1
    return out
