"""``mellum-lsp demo``: replay typing into the sample project through the real server and engine.

A copy of `mellum_lsp/samples/` is opened in a language server spawned over stdio (this process
is its LSP client); a new function is typed into `inventory/report.py` one character at a time,
and after each keystroke the inline suggestion is shown with its latency, how it was served and
the share of the prompt the engine's KV cache reused (from `mellum/lastCompletion`). The server
keeps its state (acceptance counters, engine logs) in a scratch folder: the demo's suggestions
are not counted in the user's own statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

SAMPLES = Path(__file__).parent / "samples"
TARGET = "inventory/report.py"
SCRIPT = '''

def restock_list(store: Store, threshold: int = 5) -> list[str]:
    """Names of the items to restock, cheapest first."""
    items = low_stock(store, threshold)
    return [item.name for item in sorted(items, key=lambda item: item.price)]
'''


def plain(value: Any) -> Any:
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text


def make_client(say, settings=lambda: None) -> LanguageClient:
    """An LSP client that answers the server's requests; `settings()` is the `mellum` section."""
    client = LanguageClient("mellum-demo", "1")

    @client.feature(types.WORKSPACE_CONFIGURATION)
    def configuration(params: types.ConfigurationParams):
        return [settings() for _ in params.items]

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def progress_create(params: types.WorkDoneProgressCreateParams):
        return None

    @client.feature(types.PROGRESS)
    def progress(params: types.ProgressParams):
        value = params.value
        if isinstance(value, types.WorkDoneProgressBegin):
            say(f"… {value.title}" + (f": {value.message}" if value.message else ""))
        elif isinstance(value, types.WorkDoneProgressEnd) and value.message:
            say(f"✓ {value.message}")

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def show_message(params: types.ShowMessageParams):
        say(f"! {params.message}")

    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def register(params: types.RegistrationParams):
        return None

    return client


async def replay(a: argparse.Namespace) -> int:
    style = Style(sys.stdout.isatty() and not a.no_color)

    def say(text: str) -> None:
        print(style(text, "2"), flush=True)

    work = Path(tempfile.mkdtemp(prefix="mellum-demo-"))
    root = work / "samples"
    shutil.copytree(SAMPLES, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".git").mkdir()
    settings: dict[str, Any] = {
        "completion": {"debounceMs": 0, "maxTokens": a.max_tokens},
        "engine": {"idleExitS": 60},  # an engine started for the demo goes a minute after it
    }
    if a.model:
        settings["model"] = {"path": a.model, "backend": a.backend}
    if a.engine:
        settings["engine"]["url" if a.engine.startswith(("http://", "https://")) else "socket"] = a.engine
    client = make_client(say)
    env = dict(os.environ, XDG_STATE_HOME=str(work / "state"))  # not the user's stats.json
    await client.start_io(sys.executable, "-m", "mellum_lsp.cli", "serve", env=env)
    latencies: list[float] = []
    served: dict[str, int] = {}
    reused = prompt = 0
    try:
        caps = types.ClientCapabilities(
            window=types.WindowClientCapabilities(work_done_progress=True),
            workspace=types.WorkspaceClientCapabilities(configuration=True),
            text_document=types.TextDocumentClientCapabilities(inline_completion=types.InlineCompletionClientCapabilities()),
        )  # fmt: skip
        await client.initialize_async(types.InitializeParams(
            capabilities=caps, root_uri=root.as_uri(), initialization_options={"mellum": settings},
            workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name="samples")],
        ))  # fmt: skip
        client.initialized(types.InitializedParams())
        await client.protocol.send_request_async("mellum/status", {"waitForIndex": True})
        path = root / TARGET
        text = path.read_text()
        uri = path.as_uri()
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))  # fmt: skip
        say(
            f"typing into {TARGET} ({len(SCRIPT)} keystrokes); the first one loads the model and fills the cache"
        )
        line = text.count("\n")
        col = len(text) - (text.rfind("\n") + 1)
        typed_line = text.rsplit("\n", 1)[-1]
        for i, ch in enumerate(SCRIPT[: a.keys or None]):
            at = types.Position(line=line, character=col)
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
                content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=ch)]))  # fmt: skip
            if ch == "\n":
                line, col, typed_line = line + 1, 0, ""
            else:
                col += len(ch.encode("utf-16-le")) // 2
                typed_line += ch
            t0 = time.perf_counter()
            result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=col),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))  # fmt: skip
            ms = (time.perf_counter() - t0) * 1e3
            m = plain(await client.protocol.send_request_async("mellum/lastCompletion", {"uri": uri})) or {}
            suggestion = result.items[0].insert_text if result and result.items else ""
            cache = m.get("cache") or {}
            latencies.append(ms)
            kind = m.get("served", "?")
            served[kind] = served.get(kind, 0) + 1
            reused += cache.get("reused_tokens", 0)
            prompt += cache.get("prompt_tokens", 0)
            share = (
                f"{cache['reused_tokens'] / cache['prompt_tokens']:6.1%}"
                if cache.get("prompt_tokens")
                else "     —"
            )
            shown = suggestion.split("\n", 1)[0][:40] + ("⏎…" if "\n" in suggestion else "")
            print(
                f"{ms:7.1f} ms  reuse {share}  {kind:<18} {typed_line[-40:]}{style(shown, '36')}", flush=True
            )
            if a.delay_ms:
                await asyncio.sleep(a.delay_ms / 1e3)
        stats = plain(await client.protocol.send_request_async("mellum/engineStats", {}))
        warm = sorted(latencies[1:]) or latencies
        print()
        print(f"keystrokes {len(latencies)}; served {served}")
        print(f"latency p50 {statistics.median(warm):.1f} ms, p95 {warm[int(0.95 * (len(warm) - 1))]:.1f} ms "
              f"(first keystroke {latencies[0]:.0f} ms)")  # fmt: skip
        if prompt:
            print(f"prompt tokens reused from the cache: {reused / prompt:.1%} of {prompt}")
        if stats:
            print(f"engine: {stats.get('backend')} backend, totals {stats.get('totals')}")
        await client.shutdown_async(None)
        client.exit(None)
    finally:
        await client.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def argument_problem(a: argparse.Namespace) -> str | None:
    """A `--model` without a model, or an `--engine` socket that does not exist (else None)."""
    if a.model:
        from engine.server import model_folder_problem  # the engine owns the rule

        return model_folder_problem(a.model)
    if a.engine and not a.engine.startswith(("http://", "https://")) and not Path(a.engine).exists():
        return f"--engine {a.engine}: no such socket; start an engine there (mellum-lsp engine --socket {a.engine})"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", metavar="DIR", help="model folder (default: the embedded model)")
    p.add_argument("--backend", choices=["auto", "torch", "ort"], default="auto")
    p.add_argument("--engine", metavar="SOCKET|URL", help="a running engine, or an OpenAI-compatible server")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--keys", type=int, default=0, help="stop after this many keystrokes")
    p.add_argument("--delay-ms", type=float, default=0.0, help="pause between keystrokes")
    p.add_argument("--no-color", action="store_true")
    a = p.parse_args(argv)
    if (problem := argument_problem(a)) is not None:
        print(f"mellum-lsp demo: {problem}", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        return asyncio.run(replay(a))
    except KeyboardInterrupt:
        return 130
