"""The session: initialize, initialized, shutdown; settings; the workspace folders and their indexes.

- `initialize`: the position encoding (`documents.choose_encoding`) and `initializationOptions`.
- `initialized`: index the workspace folders, pull `workspace/configuration` (section `mellum`),
  register file watchers, connect to the engine (in the background).
- `workspace/didChangeConfiguration`: pull the configuration again (or take the pushed settings);
  `workspace/didChangeWorkspaceFolders`: index the new folders.
- `apply_settings(ls, source, raw)`: one settings source changed; problems are shown with
  `window/showMessage`, the parts that depend on settings are updated.
- Indexing is reported with server-initiated `window/workDoneProgress`.

Offers `register`, `apply_settings`, `root_paths`, `watcher_registration`, `WATCH_GLOB`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from lsprotocol import types

from ..documents import DocumentStore, choose_encoding
from ..settings import section
from .state import MellumServer
from .workspace import uri_to_path

log = logging.getLogger(__name__)
WATCH_GLOB = "**/*.{py,pyi,js,mjs,cjs,jsx,ts,mts,cts,tsx,go,rs,java,c,h,cc,cpp,cxx,hh,hpp,hxx}"


# ---- pure ----------------------------------------------------------------------------------
def root_paths(folder_uris: Iterable[str], root_uri: str | None) -> list[str]:
    """The filesystem paths of the workspace folders (else of the root URI); non-file URIs dropped."""
    paths = [uri_to_path(uri) for uri in folder_uris]
    if not paths and root_uri:
        paths = [uri_to_path(root_uri)]
    return [p for p in paths if p]


def watcher_registration() -> types.RegistrationParams:
    """`client/registerCapability` for file watchers on the source files we index."""
    options = types.DidChangeWatchedFilesRegistrationOptions(
        watchers=[types.FileSystemWatcher(glob_pattern=WATCH_GLOB)]
    )
    registration = types.Registration(
        id="mellum-watch", method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES, register_options=options
    )
    return types.RegistrationParams(registrations=[registration])


# ---- settings ------------------------------------------------------------------------------
def apply_settings(ls: MellumServer, source: str, raw: Any) -> None:
    """Settings from `source` ("cli", "init" or "config") changed to `raw`."""
    settings, problems = ls.layers.set(source, raw)
    if problems:
        ls.show("settings: " + "; ".join(problems))
    ls.settings = settings
    ls.debounce.base_ms = settings.completion.debounce_ms
    ls.counters.stats.enabled = settings.telemetry.enabled
    ls.workspace_ctx.debounce_s = settings.context.index_debounce_ms / 1e3
    ls.engines.configure(settings)


async def pull_configuration(ls: MellumServer) -> None:
    if not ls.capability("workspace.configuration"):
        return
    try:
        result = await ls.workspace_configuration_async(
            types.ConfigurationParams(items=[types.ConfigurationItem(section="mellum")])
        )
    except Exception as e:
        log.warning("workspace/configuration failed: %s", e)
        return
    if result and isinstance(result[0], dict):
        apply_settings(ls, "config", result[0])


# ---- indexing ------------------------------------------------------------------------------
def reindex(ls: MellumServer) -> None:
    """Index the workspace folders not indexed yet (after those already under way)."""
    previous = ls.indexing

    async def run() -> None:
        if previous is not None:
            await asyncio.wait([previous])
        await index_roots(ls)

    ls.indexing = ls.spawn(run())


async def index_roots(ls: MellumServer) -> None:
    try:
        folders = [f.uri for f in ls.workspace.folders.values()]
        root_uri = ls.workspace.root_uri
    except RuntimeError:  # no workspace (not initialized)
        folders, root_uri = [], None
    added = ls.workspace_ctx.set_roots(root_paths(folders, root_uri))
    if not added:
        return
    async with ls.progress("Mellum: indexing", ", ".join(r.root for r in added)) as report:
        files = 0
        for i, root in enumerate(added):
            report(f"{root.root}", int(100 * i / len(added)))
            stats = await ls.workspace_ctx.build(root)
            files += stats.files
        report.end_message = f"indexed {files} files"


async def register_watchers(ls: MellumServer) -> None:
    if not ls.capability("workspace.did_change_watched_files.dynamic_registration"):
        return
    try:
        await ls.client_register_capability_async(watcher_registration())
    except Exception as e:
        log.warning("could not register file watchers: %s", e)


# ---- handlers ------------------------------------------------------------------------------
def initialize(ls: MellumServer, params: types.InitializeParams) -> None:
    general = params.capabilities.general
    ls.docs = DocumentStore(choose_encoding(general.position_encodings if general else None))
    apply_settings(ls, "init", section(params.initialization_options))


async def initialized(ls: MellumServer, params: types.InitializedParams) -> None:
    reindex(ls)
    try:
        await pull_configuration(ls)
        await register_watchers(ls)
        ls.spawn(ls.engines.connect())
    finally:
        ls.started.set()


async def shutdown(ls: MellumServer, params: None) -> None:
    await ls.close()


async def did_change_configuration(ls: MellumServer, params: types.DidChangeConfigurationParams) -> None:
    if ls.capability("workspace.configuration"):
        await pull_configuration(ls)
    elif isinstance(params.settings, dict):
        apply_settings(ls, "config", section(params.settings))


def did_change_folders(ls: MellumServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
    reindex(ls)


def register(server: MellumServer) -> None:
    server.feature(types.INITIALIZE)(initialize)
    server.feature(types.INITIALIZED)(initialized)
    server.feature(types.SHUTDOWN)(shutdown)
    server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(did_change_configuration)
    server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)(did_change_folders)
