"""`workspace/executeCommand`: what the user did with a suggestion, for the local counters
(`telemetry.py`; they never leave this machine).

- `mellum.accepted` {language, length}: run by the client when an item is accepted;
- `mellum.partiallyAccepted` {language, acceptedLength | length}: a word or a line of it;
- `mellum.rejected` {language}: dismissed.
Each answers with this session's counts.

Offers `register`, `feedback`, `COMMANDS`.
"""

from __future__ import annotations

from typing import Any

from .protocol import plain
from .state import MellumServer

COMMANDS = {
    "mellum.accepted": "accepted",
    "mellum.partiallyAccepted": "partially_accepted",
    "mellum.rejected": "rejected",
}


def feedback(command: str, args: tuple | list) -> tuple[str, str | None, int]:
    """(counter event, language, characters) of a feedback command and its arguments."""
    event = COMMANDS[command]
    first = plain(args[0]) if args else None
    a = first if isinstance(first, dict) else {}
    if event == "accepted":
        chars = int(a.get("length") or 0)
    elif event == "partially_accepted":
        chars = int(a.get("acceptedLength") or a.get("length") or 0)
    else:
        chars = 0
    return event, a.get("language"), chars


def _run(ls: MellumServer, command: str, args: tuple) -> dict:
    ls.counters.record(*feedback(command, args))
    return ls.counters.session


def accepted(ls: MellumServer, *args: Any) -> dict:
    return _run(ls, "mellum.accepted", args)


def partially_accepted(ls: MellumServer, *args: Any) -> dict:
    return _run(ls, "mellum.partiallyAccepted", args)


def rejected(ls: MellumServer, *args: Any) -> dict:
    return _run(ls, "mellum.rejected", args)


def register(server: MellumServer) -> None:
    server.command("mellum.accepted")(accepted)
    server.command("mellum.partiallyAccepted")(partially_accepted)
    server.command("mellum.rejected")(rejected)
