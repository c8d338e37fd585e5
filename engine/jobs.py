"""What the scheduler hands to whatever runs the model, and what it gets back.

- ``Job``: one request as the scheduler's single worker runs it (cancellable, with a deadline).
- ``Executor``: the interface of what executes jobs — the local ``engine.service.Engine`` and the
  ``engine.remote.RemoteEngine`` implement it; the scheduler and the RPC/HTTP servers know no other.
- ``Stats``: the counters and recent requests of an executor, behind one lock (the worker thread
  writes them, the event loop reads them); ``request_record`` is what is kept of one request.

Pure Python. Offers ``Job``, ``Executor``, ``Stats``, ``request_record``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .protocol import ProtocolError


@dataclass
class Job:
    id: int
    method: str
    params: Any
    emit: Callable[[dict], None]  # partial results; thread-safe
    finish: Callable[[dict | None, ProtocolError | None], None]  # exactly once
    document: str | None = None
    background: bool = False
    created: float = field(default_factory=time.monotonic)
    deadline: float | None = None
    cancel_reason: str | None = None
    text: str = ""  # generated so far (read by typed-ahead matching on the event loop)
    followers: list[tuple[Job, str]] = field(default_factory=list)  # (job, typed characters)
    finished: bool = False

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason

    def should_stop(self) -> str | None:
        if self.cancel_reason:
            return self.cancel_reason
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "deadline"
        return None


TOTALS = ("requests", "hits", "prompt_tokens", "reused_tokens", "computed_tokens", "generated_tokens",
          "typed_ahead", "result_cache", "cancelled", "superseded")  # fmt: skip


class Stats:
    """Totals and the last ``keep`` request records; every method is thread-safe."""

    def __init__(self, keep: int = 200) -> None:
        self._lock = threading.Lock()
        self._records: deque[dict] = deque(maxlen=keep)
        self._totals = dict.fromkeys(TOTALS, 0)
        self.started = time.time()

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._totals[what] = self._totals.get(what, 0) + n

    def add(self, record: dict) -> None:
        """Keep ``record`` (from ``request_record``) and add it to the totals."""
        with self._lock:
            self._records.append(record)
            t = self._totals
            t["requests"] += 1
            t["hits"] += record["reused_tokens"] > 0
            t["prompt_tokens"] += record["prompt_tokens"]
            t["reused_tokens"] += record["reused_tokens"]
            t["computed_tokens"] += record["computed_tokens"]
            t["generated_tokens"] += record["generated_tokens"]
            t["cancelled"] += record["stopped"] == "cancelled"
            t["superseded"] += record["stopped"] == "superseded"

    def snapshot(self, recent: int = 20) -> dict:
        """``{"uptime_s", "totals" (with "reuse_share"), "recent"}``."""
        with self._lock:
            totals = dict(self._totals)
            records = list(self._records)[-recent:]
        share = totals["reused_tokens"] / (totals["prompt_tokens"] or 1)
        return {"uptime_s": time.time() - self.started, "totals": totals | {"reuse_share": share},
                "recent": records}  # fmt: skip


def request_record(
    job: Job,
    prompt_tokens: int,
    reused: int,
    source: str,
    generated: int,
    stopped: str,
    queue_ms: float,
    total_ms: float,
    first_ms: float | None,
    snapshot: bool = False,
) -> dict:
    """What ``stats`` reports of one request (local and remote executors alike)."""
    return {
        "id": job.id,
        "method": job.method,
        "document": job.document,
        "prompt_tokens": prompt_tokens,
        "reused_tokens": reused,
        "computed_tokens": prompt_tokens - reused,
        "cache_source": source,
        "snapshot": snapshot,
        "generated_tokens": generated,
        "stopped": stopped,
        "queue_ms": round(queue_ms, 3),
        "total_ms": round(total_ms, 3),
        "first_token_ms": None if first_ms is None else round(first_ms, 3),
    }  # fmt: skip


class Executor(Protocol):
    """Runs jobs, one at a time, on the scheduler's worker thread."""

    accounting: Stats

    def handshake(self) -> dict:
        """What a client learns on connecting: model, context length, backend (no I/O)."""
        ...

    def execute(self, job: Job) -> dict:
        """The result of ``job``; raises ``ProtocolError`` for a request it cannot serve."""
        ...

    def stats(self) -> dict:
        """Counters for the ``stats`` method (no I/O)."""
        ...
