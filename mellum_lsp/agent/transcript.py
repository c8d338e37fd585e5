"""A conversation as Markdown: the `mellum-chat:/<id>.md` document and the agent's streamed pieces.

`render(conversation)` is the heading plus `render_entry` of each entry in order, so an agent run
streamed piece by piece (`render_entry` of each new entry) reads exactly like the document.

Offers `render`, `render_entry`, `heading`, `unified_diff`, `clip`.
"""

from __future__ import annotations

import difflib
import json

from .conversation import Conversation, Entry

MAX_SHOWN_CHARS = 4000


def clip(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rstrip() + f"\n… ({len(text) - limit} more characters)"


def _fence(text: str, info: str = "") -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}{'' if text.endswith(chr(10)) else chr(10)}{fence}\n"


def unified_diff(old: str, new: str, path: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}", n=1
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def heading(conversation: Conversation) -> str:
    if conversation.kind == "agent":
        return f"# Mellum agent: {conversation.title}\n" if conversation.title else "# Mellum agent\n"
    return "# Mellum chat\n"


def render_entry(entry: Entry) -> str:
    m = entry.meta
    if entry.kind == "user":
        about = f"\n\n_About: {m['about']}_" if m.get("about") else ""
        title = "Task" if m.get("task") else "You"
        return f"\n## {title}\n\n{entry.text}{about}\n"
    if entry.kind == "reasoning":
        quoted = "\n".join("> " + line if line else ">" for line in entry.text.strip("\n").split("\n"))
        return f"\n_Reasoning:_\n\n{quoted}\n"
    if entry.kind == "answer":
        title = "" if m.get("continued") else "\n## Mellum\n\n"
        stopped = f"\n\n_({m['stopped']})_" if m.get("stopped") else ""
        return f"{title}{entry.text}{stopped}\n"
    if entry.kind == "call":
        args = json.dumps(m.get("arguments"), ensure_ascii=False) if m.get("arguments") is not None else ""
        return f"\n### Step {m.get('step', '?')}: `{m.get('name', entry.text)}`\n\n`{args}`\n"
    if entry.kind == "result":
        label = "Result" if m.get("ok", True) else "Error"
        return f"\n{label}:\n\n{_fence(clip(entry.text))}"
    if entry.kind == "edit":
        status = m.get("status", "")
        return f"\nProposed edit of `{m.get('path', '')}` ({status}):\n\n{_fence(entry.text, 'diff')}"
    if entry.kind == "note":
        return f"\n_{entry.text}_\n"
    raise ValueError(f"unknown transcript entry kind {entry.kind!r}")


def render(conversation: Conversation) -> str:
    return heading(conversation) + "".join(render_entry(e) for e in conversation.entries)
