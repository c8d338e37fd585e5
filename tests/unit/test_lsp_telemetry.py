"""Local acceptance counters: recorded, added to the state file, shown by `mellum-lsp stats`."""

from __future__ import annotations

import json

import pytest

from mellum_lsp import stats
from mellum_lsp.telemetry import LocalStats, load_stats, stats_path


def test_counts_are_added_to_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert stats_path() == tmp_path / "mellum-lsp" / "stats.json"
    a, b = LocalStats(), LocalStats()  # two servers
    a.record("shown", "python", 10)
    a.record("accepted", "python", 10)
    b.record("shown", "go", 4)
    b.record("rejected", "go")
    a.flush()
    b.flush()
    b.flush()  # nothing pending: no change
    data = load_stats()
    assert data["totals"] == {
        "shown": 2,
        "shown_chars": 14,
        "accepted": 1,
        "accepted_chars": 10,
        "rejected": 1,
    }
    assert data["by_language"]["go"]["rejected"] == 1
    assert stats.main(["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["acceptance"] == 0.5
    assert stats.main([]) == 0
    assert "acceptance rate" in capsys.readouterr().out


def test_disabled_counters_record_nothing(tmp_path):
    s = LocalStats(tmp_path / "s.json", enabled=False)
    s.record("shown")
    s.flush()
    assert not (tmp_path / "s.json").exists()
    with pytest.raises(ValueError, match="unknown event"):
        LocalStats(tmp_path / "s.json").record("clicked")
