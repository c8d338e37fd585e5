"""A test driver for `mellum-lsp serve` over stdio (pytest-lsp's client underneath).

`Session` starts the server, initializes it with the given capabilities and settings, records
`$/mellum/metrics` notifications and lets tests wait for one that matches (no sleeps), and
shortens the common requests. `engine_pid(socket)` is the pid of the engine listening there.
"""

from __future__ import annotations

import asyncio
import os
import socket as socketlib
import struct
import sys
from collections.abc import Callable
from typing import Any

from lsprotocol import types
from pytest_lsp import make_test_lsp_client

TIMEOUT = 120.0


def capabilities(
    *, inline: bool = True, encodings: list[str] | None = None, progress: bool = True
) -> types.ClientCapabilities:
    return types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None,
        window=types.WindowClientCapabilities(work_done_progress=progress),
        workspace=types.WorkspaceClientCapabilities(
            configuration=True,
            did_change_watched_files=types.DidChangeWatchedFilesClientCapabilities(dynamic_registration=True),
        ),
        text_document=types.TextDocumentClientCapabilities(
            synchronization=types.TextDocumentSyncClientCapabilities(did_save=True),
            completion=types.CompletionClientCapabilities(
                completion_item=types.ClientCompletionItemOptions(snippet_support=False)
            ),
            inline_completion=types.InlineCompletionClientCapabilities() if inline else None,
        ),
    )


def plain(value: Any) -> Any:
    """pygls' client turns JSON objects of untyped results into namedtuples: back to dicts."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def engine_pid(path: str) -> int:
    """The pid of the process listening on a Unix socket (SO_PEERCRED)."""
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as s:
        s.connect(path)
        creds = s.getsockopt(socketlib.SOL_SOCKET, socketlib.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


class Session:
    def __init__(self, root: str | None, settings: dict, caps: types.ClientCapabilities, env: dict) -> None:
        self.root, self.settings, self.caps, self.env = root, settings, caps, env
        self.client = make_test_lsp_client()
        self.client.set_configuration({"mellum": settings})
        self.metrics: list[dict] = []
        self.registrations: list[types.Registration] = []
        self._changed = asyncio.Condition()
        self.init_result: types.InitializeResult | None = None

        @self.client.feature("$/mellum/metrics")
        def on_metrics(params: Any) -> None:
            self.metrics.append(plain(params))
            asyncio.ensure_future(self._notify())

        @self.client.feature(types.CLIENT_REGISTER_CAPABILITY)
        def on_register(params: types.RegistrationParams) -> None:
            self.registrations.extend(params.registrations)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def start(self, init_options: Any = None) -> Session:
        env = dict(os.environ, **self.env)
        await self.client.start_io(sys.executable, "-m", "mellum_lsp.cli", "serve", env=env)
        folders = None
        if self.root:
            uri = f"file://{self.root}"
            folders = [types.WorkspaceFolder(uri=uri, name=os.path.basename(self.root))]
        self.init_result = await asyncio.wait_for(
            self.client.initialize_session(
                types.InitializeParams(
                    capabilities=self.caps,
                    workspace_folders=folders,
                    root_uri=f"file://{self.root}" if self.root else None,
                    initialization_options=init_options
                    if init_options is not None
                    else {"mellum": self.settings},
                )
            ),
            TIMEOUT,
        )
        return self

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.client.shutdown_session(), 30)
        finally:
            await self.client.stop()

    # ---- waiting -------------------------------------------------------------------------
    async def wait_metric(
        self, pred: Callable[[dict], bool], start: int = 0, timeout: float = TIMEOUT
    ) -> dict:
        """The first metrics notification (from index `start` on) that satisfies `pred`."""

        async def find() -> dict:
            async with self._changed:
                while True:
                    for m in self.metrics[start:]:
                        if pred(m):
                            return m
                    await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    # ---- requests ------------------------------------------------------------------------
    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=uri, language_id=language, version=version, text=text
                )
            )
        )

    def change(self, uri: str, version: int, changes: list) -> None:
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=changes,
            )
        )

    def insert(self, uri: str, version: int, line: int, character: int, text: str) -> None:
        at = types.Position(line=line, character=character)
        self.change(
            uri,
            version,
            [types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=text)],
        )

    def inline_params(self, uri: str, line: int, character: int) -> types.InlineCompletionParams:
        return types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )

    async def inline(self, uri: str, line: int, character: int, timeout: float = TIMEOUT):
        return await asyncio.wait_for(
            self.client.text_document_inline_completion_async(self.inline_params(uri, line, character)),
            timeout,
        )

    async def completion(self, uri: str, line: int, character: int, timeout: float = TIMEOUT):
        params = types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
        )
        return await asyncio.wait_for(self.client.text_document_completion_async(params), timeout)

    async def request(self, method: str, params: Any = None, timeout: float = TIMEOUT) -> Any:
        return plain(await asyncio.wait_for(self.client.protocol.send_request_async(method, params), timeout))

    async def indexed(self) -> dict:
        return await self.request("mellum/status", {"waitForIndex": True})

    async def last(self, uri: str = "") -> dict:
        return await self.request("mellum/lastCompletion", {"uri": uri})


def engine_settings(engine, **completion) -> dict:
    """Server settings for the session's engine (its model and socket); defined here, not in
    conftest.py, so that tests can import it whatever other conftest modules pytest loaded."""
    return {
        "model": {"path": engine.model},
        "engine": {"socket": str(engine.socket), "idleExitS": 60},
        "completion": {"debounceMs": 0, "maxTokens": 8, "prefillOnOpen": False, **completion},
        "context": {"budgetTokens": 1024},
        "debug": {"metrics": True},
    }
