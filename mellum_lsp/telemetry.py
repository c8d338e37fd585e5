"""Local acceptance counters: how many suggestions were shown, accepted, partly accepted, rejected.

Nothing leaves the machine. Counts live in `$XDG_STATE_HOME/mellum-lsp/stats.json` (default
`~/.local/state/mellum-lsp/stats.json`); several servers may add to the same file: `flush`
adds this process's pending counts under an exclusive lock and replaces the file atomically.

Offers `state_dir`, `stats_path`, `EVENTS`, `LocalStats` (`record`, `flush`), `load_stats`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

EVENTS = ("shown", "accepted", "partially_accepted", "rejected", "typed_along")
_CHAR_EVENTS = {"accepted": "accepted_chars", "partially_accepted": "accepted_chars", "shown": "shown_chars"}


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "mellum-lsp"


def stats_path() -> Path:
    return state_dir() / "stats.json"


def _empty() -> dict:
    return {"version": 1, "totals": {}, "by_language": {}, "first_event": None, "last_event": None}


def load_stats(path: Path | None = None) -> dict:
    """The saved counts ({} fields filled in when the file is missing or unreadable)."""
    path = path or stats_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _empty()
    if not isinstance(data, dict):
        return _empty()
    out = _empty()
    out.update({k: data[k] for k in out if k in data})
    return out


class LocalStats:
    """Counts in memory until `flush`; thread-safe."""

    def __init__(self, path: Path | None = None, enabled: bool = True) -> None:
        self.path = path or stats_path()
        self.enabled = enabled
        self._pending: Counter = Counter()
        self._by_language: dict[str, Counter] = {}
        self._lock = threading.Lock()
        self.session: Counter = Counter()  # this process's counts, for tests and status

    def record(self, event: str, language: str | None = None, chars: int = 0) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; expected one of {EVENTS}")
        if not self.enabled:
            return
        with self._lock:
            for counter in (self._pending, self._by_language.setdefault(language or "other", Counter())):
                counter[event] += 1
                if event in _CHAR_EVENTS and chars > 0:
                    counter[_CHAR_EVENTS[event]] += chars
            self.session[event] += 1

    @property
    def dirty(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def flush(self) -> None:
        """Add the pending counts to the file."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
            by_language, self._by_language = self._by_language, {}
        if not pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_suffix(".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = load_stats(self.path)
            totals = Counter(data["totals"])
            totals.update(pending)
            data["totals"] = dict(totals)
            for language, counts in by_language.items():
                merged = Counter(data["by_language"].get(language, {}))
                merged.update(counts)
                data["by_language"][language] = dict(merged)
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            data["first_event"] = data["first_event"] or now
            data["last_event"] = now
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".stats-", suffix=".json")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
