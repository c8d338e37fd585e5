"""Recently edited and recently viewed code, kept as snippets for the completion context.

Offers `RecentSnippet` and `RecentSnippets`, a bounded ring (most recent last) that replaces an
older snippet of the same file when their line regions overlap, so editing one function many
times keeps one entry for it. Snippets copy the text at recording time. Thread-safe (a lock).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RecentSnippet:
    path: str
    start_line: int  # 0-based
    end_line: int  # exclusive
    text: str
    kind: str  # "edit" or "view"

    def overlaps(self, other: RecentSnippet) -> bool:
        return (
            self.path == other.path and self.start_line < other.end_line and other.start_line < self.end_line
        )


class RecentSnippets:
    """The last `max_items` edited/viewed regions; `version` increases on every change."""

    def __init__(self, max_items: int = 16, context_lines: int = 8, max_chars: int = 2400) -> None:
        if max_items <= 0:
            raise ValueError(f"max_items must be positive, got {max_items}")
        self.max_items, self.context_lines, self.max_chars = max_items, context_lines, max_chars
        self._items: list[RecentSnippet] = []
        self._lock = threading.Lock()
        self.version = 0

    def record_edit(
        self, path: str, text: str, line: int, end_line: int | None = None
    ) -> RecentSnippet | None:
        """Remember the region around an edit of lines [line, end_line] (0-based, inclusive)."""
        end = line if end_line is None else end_line
        return self._record(path, text, line - self.context_lines, end + self.context_lines + 1, "edit")

    def record_view(self, path: str, text: str, start_line: int, end_line: int) -> RecentSnippet | None:
        """Remember a viewed range [start_line, end_line) (e.g. the visible part of another editor)."""
        return self._record(path, text, start_line, end_line, "view")

    def _record(self, path: str, text: str, start: int, end: int, kind: str) -> RecentSnippet | None:
        lines = text.split("\n")
        start, end = max(0, start), min(len(lines), end)
        body = "\n".join(lines[start:end])
        if len(body) > self.max_chars:
            body = body[: self.max_chars].rsplit("\n", 1)[0]
            end = start + body.count("\n") + 1
        if not body.strip():
            return None
        snippet = RecentSnippet(path, start, end, body, kind)
        self.add(snippet)
        return snippet

    def add(self, snippet: RecentSnippet) -> None:
        with self._lock:
            self._items = [s for s in self._items if not s.overlaps(snippet)]
            self._items.append(snippet)
            del self._items[: max(0, len(self._items) - self.max_items)]
            self.version += 1

    def forget(self, path: str) -> None:
        """Drop a file's snippets (closed without saving, deleted)."""
        with self._lock:
            kept = [s for s in self._items if s.path != path]
            if len(kept) != len(self._items):
                self._items = kept
                self.version += 1

    def snippets(self, exclude_path: str | None = None) -> list[RecentSnippet]:
        """Oldest first, most recent last."""
        with self._lock:
            return [s for s in self._items if s.path != exclude_path]

    def __iter__(self) -> Iterator[RecentSnippet]:
        return iter(self.snippets())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
