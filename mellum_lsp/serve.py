"""`mellum-lsp serve`: the language server on stdio, or on `--tcp PORT` at 127.0.0.1.

The command line's `--engine`, `--model` and `--backend` are the lowest layer of settings
(under `initializationOptions` and `workspace/configuration`).

Offers `main`, `build_parser`, `cli_settings`, `serve_stdio`, `serve_tcp`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from .features.lifecycle import apply_settings
from .features.transport import StreamWriterAdapter, message_loop, stdio_streams
from .server import MellumServer, create_server


async def serve_stdio(server: MellumServer) -> int:
    reader, writer = await stdio_streams()
    server.protocol.set_writer(writer)
    code = await message_loop(reader, server.protocol)
    await server.close()
    return 0 if code is None else code


async def serve_tcp(server: MellumServer, port: int) -> int:
    """Serve the first client that connects to 127.0.0.1:PORT; exit when it goes."""
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    taken = False

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal taken
        if taken:
            writer.close()
            return
        taken = True
        server.protocol.set_writer(StreamWriterAdapter(writer))
        code = await message_loop(reader, server.protocol)
        if not done.done():
            done.set_result(0 if code is None else code)

    tcp = await asyncio.start_server(connection, "127.0.0.1", port)
    print(f"mellum-lsp listening on 127.0.0.1:{tcp.sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
    async with tcp:
        code = await done
    await server.close()
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mellum-lsp serve", description="Run the Mellum language server.")
    p.add_argument("--stdio", action="store_true", help="talk LSP on stdin/stdout (the default)")
    p.add_argument(
        "--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead (0: any free port)"
    )
    p.add_argument("--engine", metavar="SOCKET|URL", help="engine socket, or an OpenAI-compatible server URL")
    p.add_argument("--model", metavar="DIR", help="model folder (default: the embedded model)")
    p.add_argument("--backend", choices=["auto", "torch", "ort"], help="engine backend")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--log-file", help="write logs here instead of stderr")
    return p


def cli_settings(a: argparse.Namespace) -> dict:
    """Settings given on the command line (under those from the editor)."""
    raw: dict[str, Any] = {}
    if a.engine:
        key = "url" if a.engine.startswith(("http://", "https://")) else "socket"
        raw.setdefault("engine", {})[key] = a.engine
    if a.model:
        raw.setdefault("model", {})["path"] = a.model
    if a.backend:
        raw.setdefault("model", {})["backend"] = a.backend
    return raw


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    handler = logging.FileHandler(a.log_file) if a.log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(
        level=a.log_level.upper(), handlers=[handler], format="mellum-lsp %(levelname)s %(name)s: %(message)s"
    )
    if a.log_level.upper() != "DEBUG":
        logging.getLogger("pygls").setLevel(logging.WARNING)
    server = create_server()
    apply_settings(server, "cli", cli_settings(a))
    runner = serve_tcp(server, a.tcp) if a.tcp is not None else serve_stdio(server)
    try:
        return asyncio.run(runner)
    except KeyboardInterrupt:
        return 130
