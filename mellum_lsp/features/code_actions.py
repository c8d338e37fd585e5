"""Code actions that fix and refactor: listed at once, computed on demand, validated before they are
offered, and confirmed by the user before they land.

- `textDocument/codeAction`: `edits.actions.list_actions` over the request's selection, its
  diagnostics (ours and other servers') and `only` filter: "Fix with Mellum: <message>" quickfixes
  (the best one `isPreferred`), refactorings, "Edit with instruction…" (the command
  `mellum.editWithInstruction`, whose argument gains the user's `instruction`) and "Explain with
  Mellum" (the command `mellum.explain` with `{textDocument, range}`, served by the chat feature).
  Clients that resolve `edit` get the actions without edits (each names itself in `data`); for
  the others the edits are computed here, best first, within `EAGER_DEADLINE_S`.
- `codeAction/resolve`: the edit, with work-done progress; cancelling the request cancels the
  engine's work. An action without a valid candidate comes back disabled with the reason.
- `mellum/edit` {textDocument, range, instruction}: `{edit: WorkspaceEdit}` or `{edit: null, reason}`.
- `mellum.editWithInstruction` [{textDocument, range, instruction}]: the edit, applied with
  `workspace/applyEdit` (the client still asks the user to confirm it).
Every edit is a `WorkspaceEdit` whose changes carry the change annotation "Mellum" with
`needsConfirmation` (`documentChanges` of `AnnotatedTextEdit`s when the client supports change
annotations, else plain edits); actions are tagged `LLMGenerated` for clients that list that tag.
The edits come from `edits.generate` against the engine's completion or chat model.

Pure: `workspace_edit`, `action_data`, `action_of`, `request_diagnostic`. Offers `register`,
`compute_edit`, `EAGER_DEADLINE_S`, `ANNOTATION`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from ..documents import Document, DocumentError
from ..edits import Action, Diagnostic, Scope, TextEdit, edit_scope, list_actions
from ..edits.actions import REWRITE
from ..edits.generate import (
    EditRequest,
    EditResult,
    GenerateOptions,
    generate_edit,
    unsupported_reason,
    uses_chat,
)
from ..engine_client import EngineUnavailable
from .pipeline import context_budget, language_of
from .protocol import plain
from .state import MellumServer
from .workspace import uri_to_path

log = logging.getLogger(__name__)
ANNOTATION = "mellum"
LLM_GENERATED = 1  # CodeActionTag.LLMGenerated (LSP 3.18, proposed), compared by value
_TAG = getattr(types, "CodeActionTag", None)  # an lsprotocol without LSP 3.18 has no tags to send
EAGER_DEADLINE_S = 3.0  # for clients without resolve support: all edits of one request
EDIT_COMMAND = "mellum.editWithInstruction"
EXPLAIN_COMMAND = "mellum.explain"
_SEVERITIES = {1: 1, 2: 2, 3: 3, 4: 4}


# ---- pure ----------------------------------------------------------------------------------
def _range(doc: Document, start: int, end: int) -> types.Range:
    (l0, c0), (l1, c1) = doc.position_at(start), doc.position_at(end)
    return types.Range(start=types.Position(line=l0, character=c0), end=types.Position(line=l1, character=c1))


def request_diagnostic(doc: Document, d: types.Diagnostic) -> Diagnostic:
    """An LSP diagnostic of the request as character offsets."""
    start = doc.offset_at(d.range.start, strict=False)
    end = doc.offset_at(d.range.end, strict=False)
    severity = _SEVERITIES.get(int(d.severity), 1) if d.severity is not None else 1
    code = d.code if isinstance(d.code, str | int) else None
    return Diagnostic(min(start, end), max(start, end), d.message, severity, d.source, code)


def action_data(uri: str, version: int | None, cursor: int, action: Action) -> dict:
    """What `codeAction/resolve` needs to compute the action: the action itself, on this version."""
    return {
        "mellum": 1,
        "uri": uri,
        "version": version,
        "cursor": cursor,
        "action": dataclasses.asdict(action),
    }


def action_of(data: dict) -> Action:
    """The `Action` of `action_data`; ValueError when the data is not ours or is malformed."""
    raw = data.get("action") if isinstance(data, dict) and data.get("mellum") == 1 else None
    if not isinstance(raw, dict):
        raise ValueError("the code action's data is not a Mellum action")
    try:
        diagnostic = raw.get("diagnostic")
        return Action(
            title=raw["title"], kind=raw["kind"], operation=raw["operation"], scope=Scope(**raw["scope"]),
            target=(int(raw["target"][0]), int(raw["target"][1])),
            diagnostic=Diagnostic(**diagnostic) if isinstance(diagnostic, dict) else None,
            is_preferred=bool(raw.get("is_preferred")), instruction=raw.get("instruction"),
        )  # fmt: skip
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"malformed Mellum action data: {e!r}") from None


def workspace_edit(
    doc: Document, edits: Sequence[TextEdit], title: str, *, annotations: bool, document_changes: bool
) -> types.WorkspaceEdit:
    """`edits` (offsets into `doc`'s text) as a WorkspaceEdit on `doc`'s version, annotated "Mellum"
    with `needsConfirmation` when the client supports annotations."""
    if annotations:
        annotation = types.ChangeAnnotation(
            label="Mellum",
            needs_confirmation=True,
            description=f"{title} (generated, validated before offered)",
        )
        annotated = [
            types.AnnotatedTextEdit(
                range=_range(doc, e.start, e.end), new_text=e.new_text, annotation_id=ANNOTATION
            )
            for e in edits
        ]
        change = types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=doc.uri, version=doc.version),
            edits=annotated,
        )
        return types.WorkspaceEdit(document_changes=[change], change_annotations={ANNOTATION: annotation})
    plain_edits = [types.TextEdit(range=_range(doc, e.start, e.end), new_text=e.new_text) for e in edits]
    if document_changes:
        change = types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=doc.uri, version=doc.version),
            edits=plain_edits,
        )
        return types.WorkspaceEdit(document_changes=[change])
    return types.WorkspaceEdit(changes={doc.uri: plain_edits})


# ---- client capabilities ---------------------------------------------------------------------
def _resolves_edits(ls: MellumServer) -> bool:
    support = ls.capability("text_document.code_action.resolve_support")
    return support is not None and "edit" in (support.properties or [])


def _tags(ls: MellumServer) -> list | None:
    support = ls.capability("text_document.code_action.tag_support")
    values = [int(v) for v in (support.value_set or [])] if support is not None else []
    return [_TAG(LLM_GENERATED)] if _TAG is not None and LLM_GENERATED in values else None


def _edit_for(ls: MellumServer, doc: Document, result: EditResult) -> types.WorkspaceEdit:
    annotations = ls.capability("workspace.workspace_edit.change_annotation_support") is not None
    document_changes = bool(ls.capability("workspace.workspace_edit.document_changes"))
    return workspace_edit(
        doc, result.edits, result.action.title, annotations=annotations and document_changes,
        document_changes=document_changes,
    )  # fmt: skip


def _disabled_support(ls: MellumServer) -> bool:
    return bool(ls.capability("text_document.code_action.disabled_support"))


# ---- computing an edit ------------------------------------------------------------------------
def edit_options(ls: MellumServer, deadline_s: float | None = None) -> GenerateOptions:
    """The generation options (the defaults; a deadline when the caller has one)."""
    options = GenerateOptions()
    if deadline_s is not None:
        options = dataclasses.replace(
            options, deadline_ms=max(1.0, min(options.deadline_ms, deadline_s * 1e3))
        )
    return options


async def _held_chunks(ls: MellumServer, session: Any, doc: Document, path: str | None, cursor: int) -> list:
    """The context chunks completion would send at `cursor`, up to the first one the engine does
    not hold yet: the context the engine has (and likely has computed) is shared, none is computed
    cold for an edit."""
    settings = ls.settings
    if not settings.context.enabled:
        return []
    text = doc.text
    budget = context_budget(session.context_length, settings.completion.max_tokens, text[:cursor], text[cursor:],
                            settings.context.budget_tokens)  # fmt: skip
    try:
        chunks = await ls.workspace_ctx.chunks(path, text, cursor, budget)
    except Exception:
        log.exception("building the context failed; editing without it")
        return []
    held = []
    for chunk in chunks:
        if chunk.key not in session.held.chunk_keys:
            break
        held.append(chunk)
    return held


async def compute_edit(
    ls: MellumServer,
    doc: Document,
    action: Action,
    cursor: int,
    *,
    instruction: str | None = None,
    options: GenerateOptions | None = None,
    on_attempt: Callable | None = None,
) -> tuple[EditResult, Document]:
    """The action's edit on the document's text now, and the snapshot it applies to."""
    snapshot = Document(doc.uri, doc.text, doc.version, doc.language_id, doc.encoding)
    path = uri_to_path(doc.uri)
    root = ls.workspace_ctx.root_for(path)
    rel = (root.relpath(path) if root is not None else None) or (path.rsplit("/", 1)[-1] if path else None)
    language = language_of(doc.language_id, path, snapshot.text)
    t0 = time.monotonic()
    try:
        session = await ls.engines.get()
    except EngineUnavailable as e:
        ls.engines.report(e)
        return EditResult(action, None, [], f"no engine: {e}", ""), snapshot
    chunks = await _held_chunks(ls, session, snapshot, path, cursor)
    req = EditRequest(snapshot.text, language, action, doc.uri, rel, instruction, chunks)
    result = await generate_edit(session, req, options or edit_options(ls), on_attempt)
    ls.notify_metrics({
        "event": "edit", "uri": doc.uri, "operation": action.operation, "title": action.title, "ok": result.ok,
        "via": result.via, "candidates_tried": result.candidates_tried, "reason": result.reason,
        "context_chunks": len(chunks), "timing": dict(result.timing, handler_ms=round((time.monotonic() - t0) * 1e3, 3)),
        "cache": [a.cache for a in result.attempts],
    })  # fmt: skip
    return result, snapshot


# ---- listing --------------------------------------------------------------------------------
def _command_args(doc: Document, start: int, end: int) -> dict:
    return {"textDocument": {"uri": doc.uri}, "range": _range(doc, start, end)}


def _code_action(
    ls: MellumServer, doc: Document, action: Action, cursor: int, lsp_diagnostics: dict, chat: bool | None
) -> types.CodeAction | None:
    """The listed action (without its edit); None when it cannot be made and the client cannot
    show a disabled action."""
    tags = _tags(ls)
    start, end = action.target
    if action.operation == "explain":
        command = types.Command(
            title=action.title, command=EXPLAIN_COMMAND, arguments=[_command_args(doc, start, end)]
        )
        return types.CodeAction(
            title=action.title, kind=types.CodeActionKind.Empty, command=command, tags=tags
        )
    if action.operation == "instruction":
        command = types.Command(
            title=action.title, command=EDIT_COMMAND, arguments=[_command_args(doc, start, end)]
        )
        return types.CodeAction(title=action.title, kind=action.kind, command=command, tags=tags)
    why = unsupported_reason(action, chat) if chat is not None else ""
    if why and not _disabled_support(ls):
        return None
    diagnostics = [lsp_diagnostics[action.diagnostic]] if action.diagnostic in lsp_diagnostics else None
    return types.CodeAction(
        title=action.title, kind=action.kind, diagnostics=diagnostics, is_preferred=action.is_preferred or None,
        disabled=types.CodeActionDisabled(reason=why) if why else None,
        data=action_data(doc.uri, doc.version, cursor, action), tags=tags,
    )  # fmt: skip


def _known_chat(ls: MellumServer) -> bool | None:
    """Whether edits go to a chat model, when the engine has told (None before it has)."""
    session = ls.engines.session
    if session is None or not session.info:
        return None
    return uses_chat(session.info, edit_options(ls).mode)


async def code_action(ls: MellumServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    try:
        doc = ls.docs.get(params.text_document.uri)
        start = doc.offset_at(params.range.start, strict=False)
        end = doc.offset_at(params.range.end, strict=False)
        diagnostics = {request_diagnostic(doc, d): d for d in params.context.diagnostics}
    except DocumentError as e:
        raise JsonRpcInvalidParams(str(e)) from None
    language = language_of(doc.language_id, uri_to_path(doc.uri), doc.text)
    only = [str(k) for k in params.context.only] if params.context.only is not None else None
    actions = list_actions(
        doc.text, language, (min(start, end), max(start, end)), list(diagnostics), only=only
    )
    chat = _known_chat(ls)
    listed = [
        (a, c) for a in actions if (c := _code_action(ls, doc, a, start, diagnostics, chat)) is not None
    ]
    if _resolves_edits(ls):
        return [c for _, c in listed]
    return await _eager(ls, doc, listed, start)


async def _eager(
    ls: MellumServer, doc: Document, listed: list[tuple[Action, types.CodeAction]], cursor: int
) -> list[types.CodeAction]:
    """The edits of the listed actions, computed now, best first, within `EAGER_DEADLINE_S`."""
    deadline = time.monotonic() + EAGER_DEADLINE_S
    out = []
    for action, item in listed:
        if item.command is not None or item.disabled is not None:
            out.append(item)
            continue
        left = deadline - time.monotonic()
        if left <= 0.05:
            reason = f"not computed: Mellum had {EAGER_DEADLINE_S:g} s for this request's edits"
        else:
            result, snapshot = await compute_edit(ls, doc, action, cursor, options=edit_options(ls, left))
            if result.ok:
                item.edit, item.data = _edit_for(ls, snapshot, result), None
                out.append(item)
                continue
            reason = result.reason
        if _disabled_support(ls):
            item.disabled, item.data = types.CodeActionDisabled(reason=reason), None
            out.append(item)
    return out


# ---- resolving -------------------------------------------------------------------------------
async def resolve(ls: MellumServer, item: types.CodeAction) -> types.CodeAction:
    data = plain(item.data)
    try:
        action = action_of(data)
        doc = ls.docs.get(data["uri"])
    except (ValueError, DocumentError) as e:
        raise JsonRpcInvalidParams(f"codeAction/resolve: {e}") from None
    if doc.version != data.get("version"):
        return _failed(ls, item, "the document changed since the actions were listed; ask for them again")
    async with ls.progress(f"Mellum: {action.title}", "asking the model") as report:

        def on_attempt(attempt, n: int, total: int) -> None:
            verdict = "valid" if attempt.ok else "rejected"
            report(f"candidate {n}/{total} ({attempt.via}): {verdict}", int(100 * n / total))

        result, snapshot = await compute_edit(
            ls, doc, action, int(data.get("cursor") or 0), on_attempt=on_attempt
        )
        report.end_message = "edit ready" if result.ok else result.reason
    if not result.ok:
        return _failed(ls, item, result.reason)
    item.edit = _edit_for(ls, snapshot, result)
    return item


def _failed(ls: MellumServer, item: types.CodeAction, reason: str) -> types.CodeAction:
    """The action disabled with `reason` (shown as a message to clients that cannot show that)."""
    item.disabled = types.CodeActionDisabled(reason=reason)
    if not _disabled_support(ls):
        ls.show(f"{item.title}: {reason}", types.MessageType.Info)
    return item


# ---- edits with an instruction ------------------------------------------------------------------
def _instruction_action(ls: MellumServer, raw: Any, method: str) -> tuple[Document, Action, int]:
    args = plain(raw)
    if isinstance(args, list | tuple):
        args = args[0] if args else None
    if not isinstance(args, dict):
        raise JsonRpcInvalidParams(f"{method}: expected {{textDocument, range, instruction}}, got {args!r}")
    instruction = args.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise JsonRpcInvalidParams(
            f"{method}: needs a non-empty 'instruction' (the client asks the user for it)"
        )
    uri = (args.get("textDocument") or {}).get("uri")
    rng = args.get("range") or {}
    try:
        doc = ls.docs.get(uri)
        start = doc.offset_at(types.Position(**rng["start"]), strict=False)
        end = doc.offset_at(types.Position(**rng["end"]), strict=False)
    except (DocumentError, KeyError, TypeError) as e:
        raise JsonRpcInvalidParams(
            f"{method}: {e!r} (expected textDocument.uri of an open document and a range)"
        ) from None
    start, end = min(start, end), max(start, end)
    language = language_of(doc.language_id, uri_to_path(doc.uri), doc.text)
    scope = edit_scope(doc.text, language, (start, end))
    title = f"Edit with Mellum: {instruction.strip()[:60]}"
    action = Action(title, REWRITE, "instruction", scope, (start, end) if end > start else scope.span,
                    instruction=instruction.strip())  # fmt: skip
    return doc, action, start


async def edit_request(ls: MellumServer, params: Any) -> dict:
    doc, action, cursor = _instruction_action(ls, params, "mellum/edit")
    result, snapshot = await compute_edit(ls, doc, action, cursor, instruction=action.instruction)
    if not result.ok:
        return {"edit": None, "reason": result.reason}
    return {"edit": _edit_for(ls, snapshot, result), "reason": ""}


async def edit_command(ls: MellumServer, *args: Any) -> dict:
    doc, action, cursor = _instruction_action(ls, list(args), EDIT_COMMAND)
    result, snapshot = await compute_edit(ls, doc, action, cursor, instruction=action.instruction)
    if not result.ok:
        ls.show(f"{action.title}: {result.reason}", types.MessageType.Info)
        return {"applied": False, "reason": result.reason}
    answer = await ls.workspace_apply_edit_async(
        types.ApplyWorkspaceEditParams(edit=_edit_for(ls, snapshot, result), label="Mellum")
    )
    return {"applied": bool(answer.applied), "reason": answer.failure_reason or ""}


def register(server: MellumServer) -> None:
    kinds = [
        types.CodeActionKind.QuickFix,
        types.CodeActionKind.RefactorRewrite,
        types.CodeActionKind.RefactorExtract,
    ]
    options = types.CodeActionOptions(code_action_kinds=kinds, resolve_provider=True)
    server.feature(types.TEXT_DOCUMENT_CODE_ACTION, options)(code_action)
    server.feature(types.CODE_ACTION_RESOLVE)(resolve)
    server.feature("mellum/edit")(edit_request)
    server.command(EDIT_COMMAND)(edit_command)
