"""``mellum-lsp stats``: print the local acceptance counters (they never leave this machine)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .telemetry import load_stats, stats_path


def acceptance(totals: dict) -> float | None:
    shown = totals.get("shown", 0)
    return None if not shown else (totals.get("accepted", 0) + totals.get("partially_accepted", 0)) / shown


def format_stats(data: dict, path: Path) -> str:
    totals = data["totals"]
    lines = [f"mellum-lsp local statistics ({path})"]
    if not totals:
        lines.append("  no suggestions recorded yet")
        return "\n".join(lines)
    rate = acceptance(totals)
    for key in ("shown", "accepted", "partially_accepted", "rejected", "typed_along", "accepted_chars"):
        lines.append(f"  {key.replace('_', ' '):<20} {totals.get(key, 0):>8}")
    if rate is not None:
        lines.append(f"  {'acceptance rate':<20} {rate:>8.1%}")
    if data["by_language"]:
        lines.append("  by language:")
        for language, counts in sorted(data["by_language"].items()):
            r = acceptance(counts)
            lines.append(
                f"    {language:<12} shown {counts.get('shown', 0):>6}  accepted {counts.get('accepted', 0):>6}"
                + (f"  ({r:.0%})" if r is not None else "")
            )
    lines.append(f"  since {data['first_event']}, last event {data['last_event']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp stats", description=__doc__)
    p.add_argument("--json", action="store_true", help="print the raw counters as JSON")
    p.add_argument("--file", type=Path, help="the stats file (default: the user's state dir)")
    p.add_argument("--reset", action="store_true", help="delete the counters")
    a = p.parse_args(argv)
    path = a.file or stats_path()
    if a.reset:
        path.unlink(missing_ok=True)
        print(f"removed {path}")
        return 0
    data = load_stats(path)
    if a.json:
        print(json.dumps(data | {"path": str(path), "acceptance": acceptance(data["totals"])}))
    else:
        print(format_stats(data, path))
    return 0
