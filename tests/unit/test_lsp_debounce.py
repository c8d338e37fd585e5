"""The adaptive debounce policy: short after a pause, longer while typing fast."""

from __future__ import annotations

import pytest

from mellum_lsp.features.debounce import DebouncePolicy


def typed(policy: DebouncePolicy, doc: str, times: list[float]) -> None:
    for t in times:
        policy.keystroke(doc, t)


def test_no_recent_keystroke_means_a_short_delay():
    p = DebouncePolicy(base_ms=75)
    assert p.delay_ms("a", 10.0) == 25.0  # an explicit request: nothing typed
    typed(p, "a", [10.0])
    assert p.delay_ms("a", 12.0) == 25.0  # 2 s later: a pause


def test_first_keystroke_of_a_burst_waits_the_base_delay():
    p = DebouncePolicy(base_ms=75)
    typed(p, "a", [10.0])
    assert p.delay_ms("a", 10.001) == 75.0


def test_fast_typing_waits_longer_up_to_the_maximum():
    p = DebouncePolicy(base_ms=75)
    typed(p, "a", [10.0 + 0.12 * i for i in range(10)])  # 120 ms per key
    assert p.typing_interval_ms("a") == pytest.approx(120.0)
    assert p.delay_ms("a", 11.081) == pytest.approx(180.0)  # 1.5 x 120 ms
    typed(p, "b", [10.0 + 0.03 * i for i in range(10)])  # 30 ms per key: 45 ms, below the base
    assert p.delay_ms("b", 10.271) == 75.0
    q = DebouncePolicy(base_ms=75, max_ms=150)
    typed(q, "a", [10.0 + 0.2 * i for i in range(10)])
    assert q.delay_ms("a", 11.801) == 150.0


def test_slow_typing_counts_as_pausing():
    p = DebouncePolicy(base_ms=75)
    typed(p, "a", [10.0 + 0.6 * i for i in range(5)])  # 600 ms per key
    assert p.delay_ms("a", 12.401) == 25.0


def test_documents_are_measured_separately_and_a_pause_resets_the_burst():
    p = DebouncePolicy(base_ms=75)
    typed(p, "a", [10.0, 10.1, 10.2])
    typed(p, "b", [10.0])
    assert p.typing_interval_ms("a") == pytest.approx(100.0)
    assert p.typing_interval_ms("b") is None
    typed(p, "a", [20.0])
    assert p.typing_interval_ms("a") is None and p.delay_ms("a", 20.001) == 75.0


def test_zero_base_disables_waiting():
    p = DebouncePolicy(base_ms=0)
    typed(p, "a", [10.0, 10.1])
    assert p.delay_ms("a", 10.1) == 0.0
