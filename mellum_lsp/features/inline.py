"""Completions: `textDocument/inlineCompletion` (LSP 3.18), and `textDocument/completion` as one AI
item for clients without inline completion (`completion.fallback`).

Both handlers share `suggest_at`: a snapshot of the document at the cursor (taken before any
later change is applied), the cursor noted for recently viewed code, and the suggestion from
`CompletionService`. They differ only in how the answer is counted and shown (`items.py`).

Offers `register`, `snapshot_at`, `suggest_at`, `use_fallback`, `shown_event`.
"""

from __future__ import annotations

import time

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from ..documents import Document, DocumentError, DocumentStore
from . import items
from .completions import Suggestion
from .pipeline import Snapshot, language_of
from .state import MellumServer
from .workspace import WorkspaceContext, uri_to_path


# ---- pure ----------------------------------------------------------------------------------
def snapshot_at(
    docs: DocumentStore, workspace: WorkspaceContext, uri: str, position: types.Position
) -> tuple[Snapshot, Document]:
    """The document's text and cursor offset now; InvalidParams for an unknown document or a
    position outside it."""
    try:
        doc = docs.get(uri)
        offset = doc.offset_at(position, strict=True)
    except DocumentError as e:
        raise JsonRpcInvalidParams(str(e)) from None
    path = uri_to_path(uri)
    root = workspace.root_for(path)
    rel = root.relpath(path) if root is not None else None
    language = language_of(doc.language_id, path, None)
    return Snapshot(uri, doc.text, offset, path, rel, language, doc.version), doc


def use_fallback(mode: str, client_has_inline: bool) -> bool:
    """Whether `textDocument/completion` answers with a suggestion (`completion.fallback`)."""
    if mode == "auto":
        return not client_has_inline
    return mode == "always"


def shown_event(s: Suggestion) -> str | None:
    """The local counter an answer adds to: none when empty; a rest served while the user types
    along is "typed_along" (the same suggestion still shown), anything else "shown"."""
    if not s.text:
        return None
    return "typed_along" if s.served == "typed_along" else "shown"


# ---- the shared work -----------------------------------------------------------------------
async def suggest_at(
    ls: MellumServer, uri: str, position: types.Position, invoked: bool
) -> tuple[Suggestion, Document]:
    """The suggestion at `position`, counted as shown; `invoked`: asked for explicitly."""
    started = time.monotonic()
    snap, doc = snapshot_at(ls.docs, ls.workspace_ctx, uri, position)
    ls.workspace_ctx.cursor_at(snap.path, position.line)
    s = await ls.completions.suggest(snap, started, invoked=invoked)
    if (event := shown_event(s)) is not None:
        ls.counters.record(event, snap.language, len(s.text))
    return s, doc


def _command(s: Suggestion) -> types.Command:
    return items.feedback_command(s.id, s.snapshot.uri, s.text, s.snapshot.language)


# ---- handlers ------------------------------------------------------------------------------
async def inline_completion(ls: MellumServer, params: types.InlineCompletionParams):
    invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    s, doc = await suggest_at(ls, params.text_document.uri, params.position, invoked)
    return items.inline_list(s.text, doc, s.snapshot.offset, _command(s))


async def completion(ls: MellumServer, params: types.CompletionParams):
    uri, has_inline = params.text_document.uri, ls.capability("text_document.inline_completion") is not None
    if not use_fallback(ls.settings.completion.fallback, has_inline):
        snapshot_at(ls.docs, ls.workspace_ctx, uri, params.position)  # a bad document is still an error
        return types.CompletionList(is_incomplete=False, items=[])
    trigger = params.context.trigger_kind if params.context is not None else None
    invoked = trigger == types.CompletionTriggerKind.Invoked
    s, doc = await suggest_at(ls, uri, params.position, invoked)
    return items.completion_list(s.text, doc, s.snapshot.offset, _command(s))


def register(server: MellumServer) -> None:
    server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())(inline_completion)
    fallback_options = types.CompletionOptions(resolve_provider=False)
    server.feature(types.TEXT_DOCUMENT_COMPLETION, fallback_options)(completion)
