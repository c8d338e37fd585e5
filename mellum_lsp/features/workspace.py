"""Repository context per workspace folder: one `RepoIndex`, `ContextCache` and `RecentSnippets`
for each root, kept current from the editor's notifications.

- `WorkspaceContext.set_roots` / `build`: index new roots (in a worker thread).
- `edited` (debounced), `saved`, `closed`, `files_changed`: incremental index updates; edits also
  feed the recent-snippet ring, and moving to another document records the region around the
  previous document's cursor as recently viewed.
- `chunks(snapshot, budget)`: the context chunks of one request (`build_context`, in a thread).

Offers `WorkspaceRoot`, `WorkspaceContext`, `uri_to_path`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

from ..context import ContextCache, ContextChunk, RecentSnippets, RepoIndex, build_context
from ..context.index import BuildStats

log = logging.getLogger(__name__)


def uri_to_path(uri: str) -> str | None:
    """The filesystem path of a file:// URI; None for other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return os.path.normpath(unquote(parsed.path))


@dataclass
class WorkspaceRoot:
    root: str
    index: RepoIndex
    cache: ContextCache = field(default_factory=ContextCache)
    recent: RecentSnippets = field(default_factory=RecentSnippets)
    built: asyncio.Event = field(default_factory=asyncio.Event)
    stats: BuildStats | None = None

    def relpath(self, path: str) -> str | None:
        return self.index.relpath(path)


@dataclass
class _PendingEdit:
    first_line: int
    last_line: int
    timer: asyncio.TimerHandle | None = None


class WorkspaceContext:
    """Indexes and context caches of the workspace folders."""

    def __init__(self, text_of: Callable[[str], str | None], debounce_s: float = 0.5) -> None:
        self.text_of = text_of  # current text of an open document by path, None when not open
        self.debounce_s = debounce_s
        self.roots: dict[str, WorkspaceRoot] = {}
        self._pending: dict[str, _PendingEdit] = {}
        self._cursor: tuple[str, int] | None = None  # (path, line) of the last completion
        self._tasks: set[asyncio.Task] = set()

    # ---- roots ---------------------------------------------------------------------------
    def set_roots(self, paths: list[str]) -> list[WorkspaceRoot]:
        """Keep exactly these roots; returns the new ones (to be built)."""
        wanted = {os.path.abspath(p) for p in paths if p and os.path.isdir(p)}
        for gone in set(self.roots) - wanted:
            del self.roots[gone]
        added = []
        for path in sorted(wanted - set(self.roots)):
            self.roots[path] = root = WorkspaceRoot(path, RepoIndex(path))
            added.append(root)
        return added

    def root_for(self, path: str | None) -> WorkspaceRoot | None:
        """The innermost root containing `path`."""
        if path is None:
            return None
        best = None
        for root in self.roots.values():
            if root.relpath(path) is not None and (best is None or len(root.root) > len(best.root)):
                best = root
        return best

    async def build(self, root: WorkspaceRoot) -> BuildStats:
        try:
            root.stats = await asyncio.to_thread(root.index.build)
            log.info("indexed %s: %s files in %.2f s", root.root, root.stats.files, root.stats.seconds)
            return root.stats
        finally:
            root.built.set()

    # ---- updates -------------------------------------------------------------------------
    def _spawn(self, fn, *args) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def edited(self, path: str | None, first_line: int, last_line: int) -> None:
        """A document changed around these lines; re-index it once edits pause."""
        root = self.root_for(path)
        if root is None:
            return
        pending = self._pending.get(path)
        if pending is None:
            pending = self._pending[path] = _PendingEdit(first_line, last_line)
        else:
            pending.first_line = min(pending.first_line, first_line)
            pending.last_line = max(pending.last_line, last_line)
            if pending.timer is not None:
                pending.timer.cancel()
        pending.timer = asyncio.get_running_loop().call_later(self.debounce_s, self._flush, path)

    def _flush(self, path: str) -> None:
        pending = self._pending.pop(path, None)
        root = self.root_for(path)
        text = self.text_of(path)
        if pending is None or root is None or text is None:
            return
        root.recent.record_edit(path, text, pending.first_line, pending.last_line)
        self._spawn(root.index.update_file, path, text)

    def saved(self, path: str | None, text: str | None) -> None:
        root = self.root_for(path)
        if root is None:
            return
        pending = self._pending.get(path)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
            self._flush(path)
        elif text is not None:
            self._spawn(root.index.update_file, path, text)

    def closed(self, path: str | None) -> None:
        """The editor closed the file: the file on disk is what counts again."""
        root = self.root_for(path)
        if root is None:
            return
        pending = self._pending.pop(path, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
        self._spawn(root.index.update_file, path, None)

    def files_changed(self, changes: list[tuple[str, bool]]) -> None:
        """(path, deleted) from workspace/didChangeWatchedFiles; open documents are left alone."""
        for path, deleted in changes:
            root = self.root_for(path)
            if root is None:
                continue
            if deleted:
                root.recent.forget(path)
                self._spawn(root.index.remove_file, path)
            elif self.text_of(path) is None:
                self._spawn(root.index.update_file, path, None)

    def cursor_at(self, path: str | None, line: int) -> None:
        """A completion was asked for here; leaving a document records where its cursor was."""
        if path is None:
            return
        previous, self._cursor = self._cursor, (path, line)
        if previous is None or previous[0] == path:
            return
        root = self.root_for(previous[0])
        text = self.text_of(previous[0])
        if root is not None and text is not None:
            root.recent.record_view(previous[0], text, max(0, previous[1] - 12), previous[1] + 12)

    # ---- context -------------------------------------------------------------------------
    async def chunks(self, path: str | None, text: str, offset: int, budget: int) -> list[ContextChunk]:
        root = self.root_for(path)
        if root is None or budget <= 0:
            return []
        return await asyncio.to_thread(
            build_context, root.index, path, text, offset, budget, None, root.recent, cache=root.cache
        )

    async def drain(self) -> None:
        """Wait for the index updates started so far (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
