"""Code actions end to end: a real client over stdio, the real server and engine — the embedded model,
or an engine whose model outputs are read from a file (`engine/scripted.py`) to force an answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest
from lsp_client import Session, engine_settings, plain
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from mellum_lsp.edits import python_compile_problem

pytestmark = pytest.mark.slow

BROKEN = "import os\n\n\ndef add(a, b)\n    total = a + b\n    return total\n\n\nprint(add(1, 2))\n"


def caps(
    *,
    resolve: bool = True,
    annotations: bool = True,
    tags: bool = True,
    disabled: bool = True,
    pull: bool = False,
) -> types.ClientCapabilities:
    return types.ClientCapabilities(
        window=types.WindowClientCapabilities(work_done_progress=True),
        workspace=types.WorkspaceClientCapabilities(
            configuration=True,
            workspace_edit=types.WorkspaceEditClientCapabilities(
                document_changes=annotations,
                change_annotation_support=types.ChangeAnnotationsSupportOptions(groups_on_label=True)
                if annotations
                else None,
            ),
        ),
        text_document=types.TextDocumentClientCapabilities(
            synchronization=types.TextDocumentSyncClientCapabilities(did_save=True),
            inline_completion=types.InlineCompletionClientCapabilities(),
            diagnostic=types.DiagnosticClientCapabilities() if pull else None,
            code_action=types.CodeActionClientCapabilities(
                code_action_literal_support=types.ClientCodeActionLiteralOptions(
                    code_action_kind=types.ClientCodeActionKindOptions(value_set=["", "quickfix", "refactor"])
                ),
                is_preferred_support=True,
                disabled_support=disabled,
                data_support=True,
                resolve_support=types.ClientCodeActionResolveOptions(properties=["edit"])
                if resolve
                else None,
                honors_change_annotations=annotations,
                tag_support=types.CodeActionTagOptions(value_set=[types.CodeActionTag.LlmGenerated])
                if tags
                else None,
            ),
        ),
    )


def settings_for(socket: Path, model: str) -> dict:
    return {"model": {"path": model}, "engine": {"socket": str(socket), "idleExitS": 60},
            "completion": {"prefillOnOpen": False}, "context": {"budgetTokens": 1024},
            "debug": {"metrics": True}}  # fmt: skip


def unique_uri(workspace: Path, name: str) -> str:
    return (workspace / "inventory" / f"{name}_{uuid.uuid4().hex[:6]}.py").as_uri()


def offset(text: str, position) -> int:
    lines = text.split("\n")
    return sum(len(x) + 1 for x in lines[: position["line"]]) + position["character"]


def text_edits(edit: dict, uri: str) -> list[dict]:
    if edit.get("documentChanges"):
        (change,) = edit["documentChanges"]
        assert change["textDocument"]["uri"] == uri
        return change["edits"]
    return edit["changes"][uri]


def apply(text: str, edits: list[dict]) -> str:
    for e in sorted(edits, key=lambda e: offset(text, e["range"]["start"]), reverse=True):
        start, end = offset(text, e["range"]["start"]), offset(text, e["range"]["end"])
        text = text[:start] + e["newText"] + text[end:]
    return text


async def diagnostics_of(lsp: Session, uri: str, timeout: float = 30.0) -> list[types.Diagnostic]:
    """The diagnostics the server pushed for `uri` (waiting for the first push)."""

    async def wait() -> list[types.Diagnostic]:
        while uri not in lsp.client.diagnostics:
            await lsp.client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        return list(lsp.client.diagnostics[uri])

    return await asyncio.wait_for(wait(), timeout)


async def actions(
    lsp: Session, uri: str, rng: types.Range, diagnostics=(), only=None
) -> list[types.CodeAction]:
    params = types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=rng,
        context=types.CodeActionContext(diagnostics=list(diagnostics), only=only),
    )  # fmt: skip
    return await asyncio.wait_for(lsp.client.text_document_code_action_async(params), 60)


def command_of(action) -> str:
    """The command an action runs. (lsprotocol's client structures a CodeAction that carries a
    command as a `Command` whose `command` is the whole object's text.)"""
    if isinstance(action, types.Command):
        return action.command
    return action.command.command if action.command is not None else ""


def dump(lsp: Session, value) -> dict:
    return json.loads(json.dumps(lsp.client.protocol._converter.unstructure(value)))


# ---- a scripted engine ------------------------------------------------------------------------
@contextlib.contextmanager
def scripted_engine(private_dir: Path, model: str, script: dict, chat: bool = False):
    """An engine process answering from `script`; with `chat`, its chat role is another model
    (so edits go through chat)."""
    name = uuid.uuid4().hex[:6]
    path = private_dir / f"script-{name}.json"
    path.write_text(json.dumps(script))
    socket = private_dir / f"s{name}.sock"
    cmd = [sys.executable, "-m", "engine", "serve", "--model", model, "--scripted", str(path),
           "--socket", str(socket), "--idle-exit", "60"]  # fmt: skip
    if chat:
        chat_dir = private_dir / f"chat-{name}"
        chat_dir.mkdir()
        shutil.copy(Path(model) / "config.json", chat_dir / "config.json")
        (chat_dir / "model.safetensors").symlink_to(Path(model) / "model.safetensors")  # never loaded
        cmd += ["--chat-model", str(chat_dir)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("ready "):
                break
        else:
            pytest.fail(f"the scripted engine did not start (exit code {proc.wait()})")
        yield socket
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


@contextlib.asynccontextmanager
async def session(workspace: Path, settings: dict, capabilities, env: dict):
    lsp = await Session(str(workspace), settings, capabilities, env).start()
    try:
        yield lsp
    finally:
        await lsp.stop()


# ---- the embedded model -------------------------------------------------------------------------
async def test_a_missing_colon_is_diagnosed_and_fixed_with_a_confirmed_annotated_edit(
    engine, workspace, server_env
):
    async with session(workspace, engine_settings(engine), caps(), server_env) as lsp:
        assert lsp.init_result.capabilities.code_action_provider.resolve_provider is True
        uri = unique_uri(workspace, "colon")
        lsp.open(uri, BROKEN)
        (diagnostic,) = await diagnostics_of(lsp, uri)
        assert diagnostic.source == "mellum" and "expected ':'" in diagnostic.message
        assert diagnostic.range.start.line == 3 and diagnostic.severity == types.DiagnosticSeverity.Error
        listed = await actions(lsp, uri, diagnostic.range, [diagnostic])
        fix = listed[0]
        assert fix.title == f"Fix with Mellum: {diagnostic.message}" and fix.kind == "quickfix"
        assert fix.is_preferred and fix.edit is None and fix.data is not None
        assert [int(t) for t in fix.tags] == [1]  # LLMGenerated
        assert any("mellum.explain" in command_of(a) for a in listed)
        resolved = await asyncio.wait_for(lsp.client.code_action_resolve_async(fix), 60)
        assert resolved.disabled is None, resolved.disabled
        edit = dump(lsp, resolved.edit)
        assert edit["changeAnnotations"]["mellum"] == {"label": "Mellum", "needsConfirmation": True,
                                                       "description": edit["changeAnnotations"]["mellum"]["description"]}  # fmt: skip
        edits = text_edits(edit, uri)
        assert edits and all(e["annotationId"] == "mellum" for e in edits)
        fixed = apply(BROKEN, edits)
        assert python_compile_problem(fixed) is None, fixed
        assert fixed.splitlines()[3].startswith("def add(a, b)")
        reports = [r for token, rs in lsp.client.progress_reports.items() for r in rs]
        assert any(getattr(r, "kind", None) == "begin" and "Fix with Mellum" in r.title for r in reports)
        assert any(getattr(r, "kind", None) == "end" for r in reports)
        m = await lsp.wait_metric(lambda m: m.get("event") == "edit" and m["uri"] == uri)
        assert m["ok"] and m["via"] == "fim" and m["candidates_tried"] >= 1


async def test_pull_diagnostics_for_clients_that_pull(engine, workspace, server_env):
    async with session(workspace, engine_settings(engine), caps(pull=True), server_env) as lsp:
        assert lsp.init_result.capabilities.diagnostic_provider is not None
        uri = unique_uri(workspace, "pull")
        lsp.open(uri, BROKEN)
        params = types.DocumentDiagnosticParams(text_document=types.TextDocumentIdentifier(uri=uri))
        report = await asyncio.wait_for(lsp.client.text_document_diagnostic_async(params), 30)
        (item,) = report.items
        assert item.source == "mellum" and "expected ':'" in item.message
        params.previous_result_id = report.result_id
        again = await asyncio.wait_for(lsp.client.text_document_diagnostic_async(params), 30)
        assert again.kind == "unchanged" and again.result_id == report.result_id
        lsp.change(
            uri, 2, [types.TextDocumentContentChangeWholeDocument(text=BROKEN.replace("b)\n", "b):\n"))]
        )
        fixed = await asyncio.wait_for(lsp.client.text_document_diagnostic_async(params), 30)
        assert fixed.kind == "full" and list(fixed.items) == []
        assert uri not in lsp.client.diagnostics  # a pulling client gets no pushes as well


async def test_diagnostics_follow_changes_after_a_pause(engine, workspace, server_env):
    async with session(workspace, engine_settings(engine), caps(), server_env) as lsp:
        uri = unique_uri(workspace, "follow")
        lsp.open(uri, BROKEN.replace("b)\n", "b):\n"))
        assert await diagnostics_of(lsp, uri) == []
        lsp.insert(uri, 2, 5, 0, "x = [1, 2\n")
        while not lsp.client.diagnostics[uri]:
            await asyncio.wait_for(
                lsp.client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS), 30
            )
        (d,) = lsp.client.diagnostics[uri]
        assert "'[' was never closed" in d.message and d.range.start.line == 5


async def test_clients_without_resolve_get_the_edits_in_the_listing(engine, workspace, server_env):
    capabilities = caps(resolve=False, annotations=False, tags=False)
    async with session(workspace, engine_settings(engine), capabilities, server_env) as lsp:
        uri = unique_uri(workspace, "eager")
        lsp.open(uri, BROKEN)
        (diagnostic,) = await diagnostics_of(lsp, uri)
        listed = await actions(lsp, uri, diagnostic.range, [diagnostic], only=["quickfix"])
        (fix,) = listed
        assert fix.tags is None and fix.data is None
        assert fix.disabled is None, fix.disabled
        edit = dump(lsp, fix.edit)
        assert "documentChanges" not in edit and "changeAnnotations" not in edit  # plain edits
        assert python_compile_problem(apply(BROKEN, text_edits(edit, uri))) is None


async def test_a_one_line_quickfix_resolves_fast(engine, workspace, server_env):
    """Quickfixes of one-line syntax errors on the embedded model: the time from the resolve
    request to its answer (printed; the target is a p50 under 1 s)."""
    module = (Path(sysconfig.get_paths()["stdlib"]) / "posixpath.py").read_text()  # held out of training
    lines = module.split("\n")
    headers = [
        i
        for i, ln in enumerate(lines)
        if ln.lstrip().startswith(("def ", "if ", "for ")) and ln.endswith(":")
    ]
    times, fixed = [], 0
    async with session(workspace, engine_settings(engine), caps(), server_env) as lsp:
        for n, i in enumerate(headers[:8]):
            broken = "\n".join(lines[:i] + [lines[i][:-1]] + lines[i + 1 :])
            uri = unique_uri(workspace, f"speed{n}")
            lsp.open(uri, broken)
            diagnostics = await diagnostics_of(lsp, uri)
            assert diagnostics, lines[i]
            (fix, *_) = await actions(lsp, uri, diagnostics[0].range, diagnostics[:1], only=["quickfix"])
            t0 = time.monotonic()
            resolved = await asyncio.wait_for(lsp.client.code_action_resolve_async(fix), 60)
            times.append(time.monotonic() - t0)
            if resolved.edit is not None:
                fixed += (
                    python_compile_problem(apply(broken, text_edits(dump(lsp, resolved.edit), uri))) is None
                )
    p50 = statistics.median(times)
    print(
        f"quickfix resolve p50 {p50 * 1e3:.0f} ms over {len(times)}: {[round(t * 1e3) for t in times]}, fixed {fixed}"
    )
    assert fixed >= len(times) - 2
    assert p50 < 2.0  # generous for a busy CI machine; measured ~0.5 s here


# ---- forced model outputs -----------------------------------------------------------------------
async def test_a_candidate_that_breaks_the_file_is_never_offered(model, private_dir, workspace, server_env):
    breaking = [")", "(a, b) -> int", "\n    x = ("]
    with scripted_engine(private_dir, model[0], {"complete": breaking}) as socket:
        async with session(workspace, settings_for(socket, model[0]), caps(), server_env) as lsp:
            uri = unique_uri(workspace, "breaking")
            lsp.open(uri, BROKEN)
            (diagnostic,) = await diagnostics_of(lsp, uri)
            (fix, *_) = await actions(lsp, uri, diagnostic.range, [diagnostic])
            resolved = await asyncio.wait_for(lsp.client.code_action_resolve_async(fix), 60)
            assert resolved.edit is None
            assert (
                resolved.disabled is not None and "no safe edit in 8 candidates" in resolved.disabled.reason
            )
            stats = await lsp.request("mellum/engineStats")
            asked = [r for r in stats["scripted"]["requests"] if r["method"] == "complete"]
            assert len(asked) == 8 and all(r["prefix_chars"] + r["suffix_chars"] < 4000 for r in asked)
            assert [r["temperature"] > 0 for r in asked][:2] == [False, False]


async def test_the_first_valid_candidate_is_offered_after_broken_ones(
    model, private_dir, workspace, server_env
):
    # The answers cycle over the plans (an insertion at the line's end, the whole line re-written):
    # "((" on both first, then ":" at the line's end.
    with scripted_engine(private_dir, model[0], {"complete": ["((", "((", ":"]}) as socket:
        async with session(workspace, settings_for(socket, model[0]), caps(), server_env) as lsp:
            uri = unique_uri(workspace, "second")
            lsp.open(uri, BROKEN)
            (diagnostic,) = await diagnostics_of(lsp, uri)
            (fix, *_) = await actions(lsp, uri, diagnostic.range, [diagnostic])
            resolved = await asyncio.wait_for(lsp.client.code_action_resolve_async(fix), 60)
            assert apply(BROKEN, text_edits(dump(lsp, resolved.edit), uri)) == BROKEN.replace("b)\n", "b):\n")
            m = await lsp.wait_metric(lambda m: m.get("event") == "edit" and m["uri"] == uri)
            assert m["candidates_tried"] >= 3


SELECTED = "def total(items):\n    result = 0\n    for item in items:\n        result = result + item\n    return result\n"


async def test_a_refactoring_on_a_selection_stays_inside_it(model, private_dir, workspace, server_env):
    outside = "<<<<<<< SEARCH\n    return result\n=======\n    return result or 0\n>>>>>>> REPLACE\n"
    inside = (
        "<<<<<<< SEARCH\n        result = result + item\n=======\n        result += item\n>>>>>>> REPLACE\n"
    )
    with scripted_engine(private_dir, model[0], {"chat": [outside, inside]}, chat=True) as socket:
        async with session(workspace, settings_for(socket, model[0]), caps(), server_env) as lsp:
            uri = unique_uri(workspace, "selection")
            lsp.open(uri, SELECTED)
            selection = types.Range(
                start=types.Position(line=2, character=0), end=types.Position(line=4, character=0)
            )
            listed = await actions(lsp, uri, selection, only=["refactor"])
            simplify = next(a for a in listed if a.title == "Simplify selection with Mellum")
            assert simplify.kind == "refactor.rewrite" and simplify.disabled is None
            resolved = await asyncio.wait_for(lsp.client.code_action_resolve_async(simplify), 60)
            edits = text_edits(dump(lsp, resolved.edit), uri)
            for e in edits:
                assert 2 <= e["range"]["start"]["line"] and e["range"]["end"]["line"] <= 4, e
            assert apply(SELECTED, edits) == SELECTED.replace("result = result + item", "result += item")
            m = await lsp.wait_metric(lambda m: m.get("event") == "edit" and m["uri"] == uri)
            assert m["via"] == "chat" and m["candidates_tried"] == 2
            stats = await lsp.request("mellum/engineStats")
            chats = [r for r in stats["scripted"]["requests"] if r["method"] == "chat"]
            assert len(chats) == 2 and all(r["grammar"] for r in chats)


async def test_mellum_edit_with_an_instruction(model, private_dir, workspace, server_env):
    answer = "<<<<<<< SEARCH\n    return result\n=======\n    return int(result)\n>>>>>>> REPLACE\n"
    with scripted_engine(private_dir, model[0], {"chat": [answer]}, chat=True) as socket:
        async with session(workspace, settings_for(socket, model[0]), caps(), server_env) as lsp:
            uri = unique_uri(workspace, "instruct")
            lsp.open(uri, SELECTED)
            at = {"line": 4, "character": 4}
            params = {"textDocument": {"uri": uri}, "range": {"start": at, "end": at},
                      "instruction": "return an int"}  # fmt: skip
            result = await lsp.request("mellum/edit", params)
            assert result["reason"] == ""
            assert apply(SELECTED, text_edits(result["edit"], uri)) == SELECTED.replace(
                "return result", "return int(result)"
            )
            with pytest.raises(JsonRpcException):
                await lsp.request("mellum/edit", dict(params, instruction=" "))
            # the command: the client asked the user for the instruction; the edit comes back
            # through workspace/applyEdit, still annotated for confirmation
            applied: list[dict] = []

            @lsp.client.feature(types.WORKSPACE_APPLY_EDIT)
            def on_apply(params: types.ApplyWorkspaceEditParams):
                applied.append(dump(lsp, params))
                return types.ApplyWorkspaceEditResult(applied=True)

            listed = await actions(lsp, uri, types.Range(start=types.Position(line=4, character=4),
                                                         end=types.Position(line=4, character=4)))  # fmt: skip
            command = next(a for a in listed if "mellum.editWithInstruction" in command_of(a))
            assert command.title == "Edit with instruction…"
            args = dict(params, instruction="return an int")
            answer = await lsp.request(types.WORKSPACE_EXECUTE_COMMAND,
                                       types.ExecuteCommandParams(command="mellum.editWithInstruction",
                                                                  arguments=[args]))  # fmt: skip
            assert answer == {"applied": True, "reason": ""}
            (request,) = applied
            assert (
                request["label"] == "Mellum"
                and request["edit"]["changeAnnotations"]["mellum"]["needsConfirmation"]
            )
            assert apply(SELECTED, text_edits(request["edit"], uri)) == SELECTED.replace(
                "return result", "return int(result)"
            )


async def test_an_edit_shares_the_context_completion_sent(engine, workspace, server_env):
    """After a completion at the cursor, a fix there sends the same context chunks (by key, held
    by the engine), and the engine's cache serves that part of the prompt."""
    async with session(workspace, engine_settings(engine), caps(), server_env) as lsp:
        await lsp.indexed()
        uri = unique_uri(workspace, "shared")
        text = "from .store import Store\n\n\ndef count(store: Store) -> int\n    return len(store)\n"
        lsp.open(uri, text)
        (diagnostic,) = await diagnostics_of(lsp, uri)
        cursor = diagnostic.range.start
        await lsp.inline(uri, cursor.line, cursor.character)
        completion = await lsp.last(uri)
        assert completion["context"]["chunks"] >= 1
        (fix, *_) = await actions(
            lsp, uri, types.Range(start=cursor, end=cursor), [diagnostic], only=["quickfix"]
        )
        start = len(lsp.metrics)
        await asyncio.wait_for(lsp.client.code_action_resolve_async(fix), 60)
        m = await lsp.wait_metric(lambda m: m.get("event") == "edit" and m["uri"] == uri, start)
        assert m["context_chunks"] == completion["context"]["chunks"]
        first = m["cache"][0]
        assert first["reused_tokens"] > 0 and first["reused_tokens"] < first["prompt_tokens"]


async def test_cancelling_a_resolve_cancels_the_engine_request(model, private_dir, workspace, server_env):
    with scripted_engine(private_dir, model[0], {"complete": [":"], "delay_ms": 20_000}) as socket:
        async with session(workspace, settings_for(socket, model[0]), caps(), server_env) as lsp:
            uri = unique_uri(workspace, "cancel")
            lsp.open(uri, BROKEN)
            (diagnostic,) = await diagnostics_of(lsp, uri)
            (fix, *_) = await actions(lsp, uri, diagnostic.range, [diagnostic])
            start = len(lsp.metrics)
            pending = asyncio.ensure_future(
                lsp.client.protocol.send_request_async(types.CODE_ACTION_RESOLVE, fix, msg_id="resolve-me")
            )
            await lsp.wait_metric(
                lambda m: m.get("event") == "engine_request" and m["method"] == "complete", start
            )
            while not (await lsp.request("mellum/engineStats"))["scripted"]["requests"]:
                await asyncio.sleep(0.01)  # until the engine's worker has taken it
            t0 = time.monotonic()
            lsp.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="resolve-me"))
            with pytest.raises(JsonRpcException) as error:
                await asyncio.wait_for(pending, 30)
            assert error.value.code == types.LSPErrorCodes.RequestCancelled
            event = await lsp.wait_metric(lambda m: m.get("event") == "engine_cancelled", start)
            assert event["outcome"] == "cancelled"
            assert time.monotonic() - t0 < 10  # long before the 20 s answer
            stats = await lsp.request("mellum/engineStats")
            assert stats["totals"]["cancelled"] >= 1
            assert plain(stats["recent"])[-1]["stopped"] == "cancelled"
