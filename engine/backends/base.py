"""The interface every model backend offers to generation and the engine.

A backend owns the weights; a ``Sequence`` it creates owns one token sequence's KV state (main
layers and the MTP layer). Generation talks to backends only in token ids and numpy logits, so
the same loop runs on PyTorch, ONNX Runtime or anything else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..model.config import MellumConfig


@dataclass
class Sequence:
    """KV state of one token sequence; ``ids`` are the tokens whose keys it holds."""

    ids: list[int]
    state: object  # backend-specific


class Backend(ABC):
    name: str
    config: MellumConfig
    model_dir: str

    @abstractmethod
    def new_sequence(self, margin: int = 256) -> Sequence:
        """An empty sequence whose sliding layers keep ``margin`` positions beyond the window for rollback."""

    @abstractmethod
    def forward(self, seq: Sequence, ids: list[int], logits_to_keep: int = 1) -> np.ndarray:
        """Append ``ids`` to ``seq``; return fp32 logits (logits_to_keep, vocab) of its last positions."""

    @abstractmethod
    def truncate(self, seq: Sequence, n: int) -> None:
        """Forget every position >= n (raises CacheError when a sliding layer no longer holds n)."""

    @abstractmethod
    def lowest_truncation(self, seq: Sequence) -> int:
        """The smallest length ``seq`` can be truncated to."""

    @abstractmethod
    def fork(self, seq: Sequence) -> Sequence:
        """An independent copy of ``seq`` (for the prefix cache)."""

    @abstractmethod
    def nbytes(self, seq: Sequence) -> int:
        """Bytes of memory ``seq`` holds for its KV state (allocated, not just used)."""

    @property
    def has_mtp(self) -> bool:
        return False

    def draft(self, seq: Sequence, next_token: int, n: int) -> list[int]:
        """Up to ``n`` greedy MTP drafts of the tokens that follow ``next_token`` (empty without MTP)."""
        return []

    def compact(self, seq: Sequence) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release spare capacity before ``seq`` is parked."""
