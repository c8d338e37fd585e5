"""Adaptive debounce: how long a completion request waits before it goes to the engine.

A request made while the user types fast would be superseded by the next keystroke anyway, so it
waits long enough to see whether another keystroke comes; a request made when the user pauses
goes out almost at once. Per document, `DebouncePolicy` keeps an exponentially weighted mean of
the intervals between keystrokes of the current burst (a gap over `pause_ms` starts a new one):

- no keystroke in the last `pause_ms` (an explicit request, a cursor move): `min_ms`;
- the first keystroke of a burst (nothing to measure yet): `base_ms`;
- typing faster than `fast_ms` per key: 1.5 x the mean interval, within [`base_ms`, `max_ms`];
- typing slower than that (every keystroke is a pause): `min_ms`.

Pure: times are passed in (seconds, monotonic). Offers `DebouncePolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Burst:
    last: float
    mean_ms: float | None = None
    keys: int = 1


@dataclass
class DebouncePolicy:
    base_ms: float = 75.0
    min_ms: float | None = None  # default base / 3
    max_ms: float | None = None  # default base * 3
    fast_ms: float = 250.0
    pause_ms: float = 1000.0
    alpha: float = 0.4  # weight of the newest interval in the mean
    _docs: dict[str, _Burst] = field(default_factory=dict)

    @property
    def low(self) -> float:
        return self.base_ms / 3 if self.min_ms is None else self.min_ms

    @property
    def high(self) -> float:
        return self.base_ms * 3 if self.max_ms is None else self.max_ms

    def keystroke(self, document: str, now: float) -> None:
        burst = self._docs.get(document)
        if burst is None or (now - burst.last) * 1e3 > self.pause_ms:
            self._docs[document] = _Burst(now)
            return
        interval = max(0.0, (now - burst.last) * 1e3)
        burst.mean_ms = (
            interval if burst.mean_ms is None else (1 - self.alpha) * burst.mean_ms + self.alpha * interval
        )
        burst.last, burst.keys = now, burst.keys + 1

    def typing_interval_ms(self, document: str) -> float | None:
        burst = self._docs.get(document)
        return None if burst is None else burst.mean_ms

    def delay_ms(self, document: str, now: float) -> float:
        if self.base_ms <= 0:
            return 0.0
        burst = self._docs.get(document)
        if burst is None or (now - burst.last) * 1e3 > self.pause_ms:
            return self.low
        if burst.mean_ms is None:
            return self.base_ms
        if burst.mean_ms < self.fast_ms:
            return min(self.high, max(self.base_ms, 1.5 * burst.mean_ms))
        return self.low

    def forget(self, document: str) -> None:
        self._docs.pop(document, None)
