"""The engine's prefix store: KV sequences kept across keystrokes, requests and documents.

Every finished request parks its sequence (prompt + generated tokens) as its document's *tip*;
the stable part of a prompt (repository context and the file header) is also parked as a
*snapshot*, shared by every document whose prompt starts the same way. A new prompt reuses the
entry with the longest common prefix of token ids that its sliding layers can still roll back
to (window + margin), so typing only computes the new tokens and a jump to another line only
recomputes the file part. Entries are evicted least-recently-used first under a byte budget.

Lookup compares token ids vectorised (numpy) against each entry: a handful of entries, microseconds
at 32K tokens. Forks share the full layers' KV pages copy-on-write (``engine.model.paged``), so a
snapshot or a document switch copies no full-layer rows; the byte budget counts a shared page once,
split among its holders. Offers ``PrefixStore`` and ``Reuse``.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import numpy as np

from .backends.base import Backend, Sequence


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


@dataclass
class Entry:
    key: int
    seq: Sequence
    ids: np.ndarray
    document: str | None  # the tip of this document, or None for a shared snapshot
    nbytes: int
    used: int  # LRU clock


@dataclass(frozen=True)
class Reuse:
    seq: Sequence
    reused: int  # prompt tokens whose KV came from the store
    source: str  # "tip" | "snapshot" | "fork" | "none"


class PrefixStore:
    def __init__(self, backend: Backend, budget_bytes: int, margin: int = 256) -> None:
        self.backend, self.budget, self.margin = backend, budget_bytes, margin
        self._entries: dict[int, Entry] = {}
        self._keys = itertools.count()
        self._clock = itertools.count()
        self._lock = threading.Lock()
        self.evictions = 0

    def _usable(self, entry: Entry, ids: np.ndarray) -> int:
        """Tokens of ``ids`` this entry can supply (at least one prompt token is always recomputed)."""
        n = min(common_prefix(entry.ids, ids), len(ids) - 1)
        if n <= 0:
            return 0
        if n < len(entry.ids) and n < self.backend.lowest_truncation(entry.seq):
            return 0
        return n

    def acquire(self, ids: list[int], document: str | None, arr: np.ndarray | None = None) -> Reuse:
        """A sequence holding the longest reusable prefix of ``ids`` (``arr``: the same as int64, when
        the caller has it), ready to be extended.

        The document's own tip is taken out of the store (no copy); a snapshot or another
        document's tip is forked, so the original stays for others (a fork shares the full
        layers' KV pages: it costs the same at any length).
        """
        arr = np.asarray(ids, dtype=np.int64) if arr is None or len(arr) != len(ids) else arr
        with self._lock:
            best, best_n = None, 0
            for e in self._entries.values():
                n = self._usable(e, arr)
                if n > best_n or (n == best_n and best is not None and n and e.used > best.used):
                    best, best_n = e, n
            if best is None or best_n == 0:
                return Reuse(self.backend.new_sequence(self.margin), 0, "none")
            best.used = next(self._clock)
            take = best.document is not None and best.document == document
            if take:
                del self._entries[best.key]
        seq = best.seq if take else self.backend.fork(best.seq)
        if len(seq.ids) > best_n:
            self.backend.truncate(seq, best_n)
        return Reuse(seq, best_n, "tip" if take else ("snapshot" if best.document is None else "fork"))

    def park(self, seq: Sequence, document: str | None, known: np.ndarray | None = None) -> None:
        """Keep ``seq`` as ``document``'s tip (replacing the previous one). ``known``: an int64
        array equal to the start of ``seq.ids``, so only the rest is converted."""
        if known is not None and len(known) <= len(seq.ids):
            arr = np.concatenate([known, np.asarray(seq.ids[len(known) :], dtype=np.int64)])
        else:
            arr = np.asarray(seq.ids, dtype=np.int64)
        entry = Entry(next(self._keys), seq, arr, document,
                      self.backend.nbytes(seq), next(self._clock))  # fmt: skip
        with self._lock:
            if document is not None:
                for k in [k for k, e in self._entries.items() if e.document == document]:
                    del self._entries[k]
            self._entries[entry.key] = entry
            self._evict()

    def snapshot(self, seq: Sequence) -> bool:
        """Park a copy of ``seq`` as a shared snapshot unless an entry already covers it exactly."""
        arr = np.asarray(seq.ids, dtype=np.int64)
        with self._lock:
            for e in self._entries.values():
                if e.document is None and len(e.ids) == len(arr) and common_prefix(e.ids, arr) == len(arr):
                    e.used = next(self._clock)
                    return False
        copy = self.backend.fork(seq)
        self.backend.compact(copy)
        entry = Entry(next(self._keys), copy, arr, None, self.backend.nbytes(copy), next(self._clock))
        with self._lock:
            self._entries[entry.key] = entry
            self._evict()
        return True

    def _evict(self) -> None:
        """Drop least-recently-used entries until the bytes held fit the budget. Entries share KV
        pages (forks of one another), so what each holds is counted again here: a page shared by n
        holders counts 1/n for each, and evicting one raises the others' share."""
        while self._entries:
            for e in self._entries.values():
                e.nbytes = self.backend.nbytes(e.seq)
            if sum(e.nbytes for e in self._entries.values()) <= self.budget:
                return
            victim = min(self._entries.values(), key=lambda e: e.used)
            del self._entries[victim.key]
            self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> dict:
        with self._lock:
            return {
                "entries": len(self._entries),
                "snapshots": sum(e.document is None for e in self._entries.values()),
                "bytes": sum(e.nbytes for e in self._entries.values()),
                "tokens": int(sum(len(e.ids) for e in self._entries.values())),
                "budget_bytes": self.budget,
                "evictions": self.evictions,
            }
