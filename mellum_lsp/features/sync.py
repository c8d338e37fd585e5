"""Document sync and file notifications.

- `didOpen`/`didChange`/`didClose`/`didSave`: incremental sync into our `DocumentStore` in the
  negotiated position encoding; the workspace index follows (edits are re-indexed once they
  pause, a closed file is read from disk again), and so does the debounce's typing rhythm.
  With `completion.prefillOnOpen` an opened document's context is sent to a connected engine.
- `workspace/didChangeWatchedFiles`: files created, changed or deleted outside the editor.

Offers `register`, `apply_changes`, `watched_changes`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from lsprotocol import types

from ..documents import Document, DocumentError
from .inline import snapshot_at
from .pipeline import Snapshot
from .state import MellumServer
from .workspace import uri_to_path

log = logging.getLogger(__name__)


# ---- pure ----------------------------------------------------------------------------------
def apply_changes(
    doc: Document, changes: Sequence[types.TextDocumentContentChangeEvent]
) -> tuple[int, int] | None:
    """Apply `changes` in order; the first and last line they touched (None when there were none).
    Raises `DocumentError` for a change that does not fit the document."""
    first, last = None, 0
    for change in changes:
        start, end = doc.apply_change(change)
        lo, hi = doc.position_at(start)[0], doc.position_at(end)[0]
        first = lo if first is None else min(first, lo)
        last = max(last, hi)
    return None if first is None else (first, last)


def watched_changes(events: Sequence[types.FileEvent]) -> list[tuple[str, bool]]:
    """(path, deleted) of each file event with a file:// URI."""
    changes = []
    for event in events:
        path = uri_to_path(event.uri)
        if path is not None:
            changes.append((path, event.type == types.FileChangeType.Deleted))
    return changes


# ---- handlers ------------------------------------------------------------------------------
async def prefill(ls: MellumServer, snap: Snapshot) -> None:
    """Warm the engine's cache with the context of `snap`'s document."""
    result = await ls.completions.prefill(snap)
    if result is not None:
        ls.notify_metrics({"event": "prefill", "uri": snap.uri, **result})


def did_open(ls: MellumServer, params: types.DidOpenTextDocumentParams) -> None:
    d = params.text_document
    ls.docs.open(d.uri, d.text, d.version, d.language_id)
    if ls.settings.completion.prefill_on_open and ls.engines.connected:
        snap, _ = snapshot_at(ls.docs, ls.workspace_ctx, d.uri, types.Position(line=0, character=0))
        ls.spawn(prefill(ls, snap))


def did_change(ls: MellumServer, params: types.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    try:
        doc = ls.docs.get(uri)
        lines = apply_changes(doc, params.content_changes)
        doc.version = params.text_document.version
    except DocumentError as e:
        log.warning("didChange ignored: %s", e)
        ls.window_log_message(types.LogMessageParams(type=types.MessageType.Warning, message=str(e)))
        return
    ls.debounce.keystroke(uri, time.monotonic())
    if lines is not None:
        ls.workspace_ctx.edited(uri_to_path(uri), *lines)


def did_close(ls: MellumServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.docs.close(uri)
    ls.completions.forget(uri)
    ls.workspace_ctx.closed(uri_to_path(uri))


def did_save(ls: MellumServer, params: types.DidSaveTextDocumentParams) -> None:
    uri = params.text_document.uri
    text = ls.docs.get(uri).text if uri in ls.docs else params.text
    ls.workspace_ctx.saved(uri_to_path(uri), text)


def did_change_watched(ls: MellumServer, params: types.DidChangeWatchedFilesParams) -> None:
    ls.workspace_ctx.files_changed(watched_changes(params.changes))


def register(server: MellumServer) -> None:
    server.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)
    server.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    server.feature(types.TEXT_DOCUMENT_DID_CLOSE)(did_close)
    server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))(did_save)
    server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)(did_change_watched)
