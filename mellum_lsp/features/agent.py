"""The agent over LSP: `mellum/agent` runs the tool loop; every edit asks the user first.

`mellum/agent` {task, context?: {textDocument, range?}, limits?: {steps?, tokens?, seconds?,
stepTokens?}, toolPlan?: [tool names], partialResultToken?} -> {conversationId, status, summary,
steps, edits, tokens, seconds, transcript}. The transcript (tool calls, results, edits, the
summary) streams like chat (partial results or `mellum/chatChunk`) and stays readable as
`mellum-chat:/<id>.md`. `toolPlan` forces the tool of the first steps (names, or {tool,
arguments} pinning some arguments; the model writes the rest): for evaluations and tests. Limits default to the `chat.agent` settings; so does
how the model writes an edit (`edit_format`: "auto" picks fill-in-the-middle when the engine
serves no chat model apart from the completion model, a call's JSON for a remote model, else a
search/replace block).

Each edit the model proposes, once validated, goes to the client as `workspace/applyEdit`, its
edits annotated "Mellum" with `needsConfirmation: true`; the answer goes back to the model.

Offers `register`, `apply_edit`, `parse_agent`, `edit_format`, `remote_chat`, `AgentRequest`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsprotocol import types
from lsprotocol.converters import get_converter
from pygls.exceptions import JsonRpcInvalidParams

from engine.rpc import EngineError

from ..agent.consent import ApplyOutcome, apply_edit_params, outcome
from ..agent.grounding import CallFormat
from ..agent.loop import AgentLoop, Limits, PlanStep, plan_steps
from ..agent.paths import PathError, WorkspaceFiles
from ..agent.tools import ProposedEdit, Toolbox
from ..edits.generate import uses_chat
from ..engine_client import EngineUnavailable
from .chat import (
    Chunks,
    SessionEngine,
    conversations,
    document_for,
    engine_session,
    failed,
    open_document,
    parse_context,
    refresh,
    selection_of,
    shown_path,
)
from .protocol import plain
from .state import MellumServer

MAX_SELECTION_CHARS = 4000
_CONVERTER = get_converter()


@dataclass(frozen=True)
class AgentRequest:
    task: str
    uri: str | None = None
    range: dict | None = None
    limits: dict | None = None
    plan: tuple[PlanStep, ...] = ()
    token: Any = None


def parse_agent(params: Any) -> AgentRequest:
    p = plain(params)
    if not isinstance(p, dict):
        raise JsonRpcInvalidParams("mellum/agent: params must be an object")
    task = p.get("task")
    if not isinstance(task, str) or not task.strip():
        raise JsonRpcInvalidParams(f"mellum/agent: task must be a non-empty string, got {task!r:.80}")
    uri, rng = parse_context(p, "mellum/agent")
    try:
        plan = plan_steps(p.get("toolPlan"))
    except ValueError as e:
        raise JsonRpcInvalidParams(f"mellum/agent: toolPlan: {e}") from None
    limits = p.get("limits")
    if limits is not None and not isinstance(limits, dict):
        raise JsonRpcInvalidParams("mellum/agent: limits must be an object")
    return AgentRequest(task.strip(), uri, rng, limits, tuple(plan), p.get("partialResultToken"))


async def apply_edit(ls: MellumServer, edit: ProposedEdit) -> ApplyOutcome:
    """Ask the client to apply `edit` (it asks the user); the answer in words the model can use."""
    if not ls.capability("workspace.apply_edit"):
        return ApplyOutcome(False, "the editor cannot apply edits (no workspace/applyEdit support)")
    doc = open_document(ls, edit.ref.path)
    current = doc.text if doc is not None else None
    if current is None:
        try:
            current = await asyncio.to_thread(Path(edit.ref.path).read_text, encoding="utf-8")
        except OSError as e:
            return ApplyOutcome(False, f"the file cannot be read any more: {e}")
    if current != edit.old:
        return ApplyOutcome(False, "the file changed while the edit was being made; read it again")
    params = apply_edit_params(
        doc.uri if doc is not None else Path(edit.ref.path).as_uri(), edit.old, edit.new,
        version=doc.version if doc is not None else None, encoding=ls.docs.encoding,
        document_changes=bool(ls.capability("workspace.workspace_edit.document_changes")),
        description=f"edit of {edit.ref.shown}",
    )  # fmt: skip
    try:
        typed = _CONVERTER.structure(params, types.ApplyWorkspaceEditParams)
        result = await ls.workspace_apply_edit_async(typed)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return ApplyOutcome(False, f"the editor could not apply it: {e}")
    return outcome(result)


def remote_chat(info: dict) -> bool:
    """Whether the engine's chat model is a remote OpenAI-compatible server (native tool calling;
    our grammars are not for it)."""
    chat = str((info.get("roles") or {}).get("chat") or "")
    return info.get("backend") == "remote" or chat.startswith(("http://", "https://"))


def edit_format(setting: str, info: dict) -> str:
    """The edit format to use: the setting, or for "auto" the one that suits the engine's models."""
    if setting != "auto":
        return setting
    if not uses_chat(info):
        return "fim"
    return "json" if remote_chat(info) else "block"


def _context(ls: MellumServer, req: AgentRequest) -> tuple[str, str | None]:
    """(the first message's note on what the user is looking at, its description)."""
    if req.uri is None:
        return "", None
    text, path, language, doc = document_for(ls, req.uri)
    shown = shown_path(ls, path, req.uri)
    selection = selection_of(doc, req.range)
    if selection is None or selection[0] == selection[1]:
        return f"The user has {shown} open.", shown
    start, end = selection
    first, last = text.count("\n", 0, start) + 1, text.count("\n", 0, max(start, end - 1)) + 1
    code = text[start:end][:MAX_SELECTION_CHARS]
    about = f"{shown}, lines {first}-{last}"
    return f"The user selected {about}:\n```{language or ''}\n{code.rstrip(chr(10))}\n```", about


async def agent(ls: MellumServer, params: Any) -> dict:
    req = parse_agent(params)
    settings = ls.settings.chat.agent
    try:
        limits = Limits(settings.max_steps, settings.max_tokens, settings.max_seconds, settings.step_tokens)
        limits = limits.merged(req.limits)
    except ValueError as e:
        raise JsonRpcInvalidParams(f"mellum/agent: {e}") from None
    roots = list(ls.workspace_ctx.roots)
    try:
        files = WorkspaceFiles(roots, text_of=lambda path: d.text if (d := open_document(ls, path)) else None)
    except PathError as e:
        raise failed(f"mellum/agent: {e}") from None
    context, about = _context(ls, req)
    session = await engine_session(ls)
    indexes = [root.index for root in ls.workspace_ctx.roots.values()]
    conversation = conversations(ls).new("agent", title=req.task.splitlines()[0][:80])
    engine = SessionEngine(session)
    chunks = Chunks(ls, conversation.id, req.token)
    loop = AgentLoop(
        engine, Toolbox(files, indexes, edit_format(settings.edit_format, session.info)), conversation,
        lambda edit: apply_edit(ls, edit), limits, edit_engine=engine,
        emit=chunks,
        call_format=CallFormat.from_handshake(session.info),
        grounded=settings.grounded and not remote_chat(session.info),
        plan=req.plan, temperature=settings.temperature, context_length=session.context_length,
    )  # fmt: skip
    async with conversation.lock:
        try:
            result = await loop.run(req.task, context, about)
        except (EngineUnavailable, EngineError) as e:
            raise failed(f"mellum/agent: {e}") from None
        finally:
            chunks.flush()
            refresh(ls, conversation)
    return {**result.to_json(), "transcript": conversation.uri}


def register(server: MellumServer) -> None:
    server.feature("mellum/agent")(agent)
