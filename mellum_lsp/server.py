"""The language server: one `MellumServer` with every feature module registered on it.

The handlers live in `features/` (one module per LSP method group), the state they share in
`features/state.py`, the transports and `mellum-lsp serve` in `serve.py`.

| module               | methods                                                                |
| -------------------- | ---------------------------------------------------------------------- |
| features/lifecycle   | initialize, initialized, shutdown, didChangeConfiguration,             |
|                      | didChangeWorkspaceFolders (settings, indexing, file watchers)          |
| features/sync        | didOpen, didChange, didClose, didSave, didChangeWatchedFiles           |
| features/inline      | textDocument/inlineCompletion, textDocument/completion (fallback)      |
| features/commands    | workspace/executeCommand: mellum.accepted, partiallyAccepted, rejected |
| features/status      | mellum/lastCompletion, mellum/document, mellum/engineStats,            |
|                      | mellum/status                                                          |
| features/chat        | mellum/chat (+ mellum/chatChunk), mellum/chat/reset,                   |
|                      | workspace/textDocumentContent for mellum-chat:/<id>.md                 |
| features/agent       | mellum/agent: the tool loop, edits through workspace/applyEdit         |
| features/diagnostics | publishDiagnostics (after sync), textDocument/diagnostic               |
| features/code_actions| codeAction, codeAction/resolve, mellum/edit, mellum.editWithInstruction|

Offers `create_server`, `MellumServer`, `FEATURES`.
"""

from __future__ import annotations

from .features import agent, chat, code_actions, commands, diagnostics, inline, lifecycle, status, sync
from .features.state import MellumServer

FEATURES = (lifecycle, sync, inline, commands, status, chat, agent, diagnostics, code_actions)

__all__ = ["FEATURES", "MellumServer", "create_server"]


def create_server() -> MellumServer:
    server = MellumServer()
    for feature in FEATURES:
        feature.register(server)
    return server
