"""Custom requests that show the server's state (for editors' status bars, tests and debugging).

- `mellum/lastCompletion` {uri?}: the metrics of the last answer (for `uri`, else any document);
- `mellum/document` {uri}: the server's copy of an open document (to check synchronisation);
- `mellum/engineStats`: the engine's `stats` (connecting, or starting it, first);
- `mellum/status` {waitForIndex?}: version, position encoding, engine, indexes, settings
  problems, this session's counters; with `waitForIndex` it answers once the indexes are built.

Offers `register`, `status_report`, `document_report`, `param`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams

from ..documents import Document
from ..engine_client import EngineUnavailable
from .protocol import plain
from .state import MellumServer
from .workspace import WorkspaceRoot


# ---- pure ----------------------------------------------------------------------------------
def param(params: Any, name: str) -> Any:
    """A custom request's parameter `name`; None when absent or when params are not an object."""
    params = plain(params)
    return params.get(name) if isinstance(params, dict) else None


def document_report(doc: Document) -> dict:
    return {"text": doc.text, "version": doc.version, "lineCount": doc.line_count}


def status_report(
    version: str,
    encoding: str,
    engine: dict | None,
    roots: list[WorkspaceRoot],
    settings_problems: tuple[str, ...],
    session: dict,
) -> dict:
    return {
        "version": version,
        "positionEncoding": encoding,
        "engine": engine,
        "roots": {r.root: {"built": r.built.is_set(), "files": len(r.index)} for r in roots},
        "settingsProblems": list(settings_problems),
        "session": session,
    }


# ---- handlers ------------------------------------------------------------------------------
def last_completion(ls: MellumServer, params: Any) -> dict | None:
    return ls.completions.last_metrics.get(param(params, "uri") or "")


def document(ls: MellumServer, params: Any) -> dict:
    uri = param(params, "uri")
    if not isinstance(uri, str) or uri not in ls.docs:
        raise JsonRpcInvalidParams(f"mellum/document: {uri!r} is not an open document")
    return document_report(ls.docs.get(uri))


async def engine_stats(ls: MellumServer, params: Any) -> Any:
    try:
        session = await ls.engines.get()
        return await session.request("stats")
    except EngineUnavailable as e:
        raise JsonRpcException(message=str(e), code=types.LSPErrorCodes.RequestFailed) from None


async def status(ls: MellumServer, params: Any) -> dict:
    if param(params, "waitForIndex"):
        await ls.started.wait()
        while ls.indexing is not None and not ls.indexing.done():
            await asyncio.wait([ls.indexing])
        await ls.workspace_ctx.drain()
    return status_report(
        ls.version, ls.docs.encoding, ls.engines.status(), list(ls.workspace_ctx.roots.values()),
        ls.layers.problems, ls.counters.session,
    )  # fmt: skip


def register(server: MellumServer) -> None:
    server.feature("mellum/lastCompletion")(last_completion)
    server.feature("mellum/document")(document)
    server.feature("mellum/engineStats")(engine_stats)
    server.feature("mellum/status")(status)
