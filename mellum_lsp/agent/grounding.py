"""Grammars that keep the model's tool calls inside what the workspace holds (constrained decoding).

The tools the prompt shows keep plain, stable schemas (the prompt prefix, and so the engine's KV
cache, stays the same from step to step); the grammar the engine decodes under is narrower: a
path is one of the files the agent knows, a SEARCH text is a run of consecutive lines of a file
the model has read, found exactly once in it. Every call the model can then write is one a tool
can carry out — what makes a small model's calls useful, and costs a large model nothing.

Offers:
- `CallFormat`: how the chat model writes a call (the engine's default `<tool_call>{"name": ...,
  "arguments": {...}}</tool_call>`).
- `regex_literal(text)`: `text` as a regular expression (llguidance's regex syntax).
- `line_runs_pattern(text, spans, max_lines, max_chars, covering)`: an anchored pattern matching
  the runs of 1..`max_lines` consecutive lines of `text` (within the line `spans` the model saw)
  that occur in it exactly once (and hold one of the `covering` lines, when given); None when
  there is none or the pattern would exceed `max_chars`.
- `call_grammar(calls, fmt)`: a Lark grammar of one call of any of `calls` ((name, JSON Schema of
  its arguments) pairs).
- `replacement_grammar(search, max_lines, max_line_chars)`: a Lark grammar of one search/replace
  block whose SEARCH part is `search` and whose REPLACE part is at most `max_lines` lines of code.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_META = set("\\.+*?()|[]{}^$#&-~")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass(frozen=True)
class CallFormat:
    start: str = "<tool_call>"
    end: str = "</tool_call>"
    name_key: str = "name"
    arguments_key: str = "arguments"

    @classmethod
    def from_handshake(cls, info: dict) -> CallFormat:
        """The format an engine's handshake names (`tool_call_format`), else the default."""
        entry = info.get("tool_call_format")
        if isinstance(entry, dict):
            known = {
                k: v for k, v in entry.items() if k in cls.__dataclass_fields__ and isinstance(v, str) and v
            }
            return cls(**known)
        return cls()


def regex_literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch in _META:
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return "".join(out)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _once(text: str, run: str) -> bool:
    first = text.find(run)
    return first >= 0 and text.find(run, first + 1) < 0


def line_runs_pattern(
    text: str,
    spans: Iterable[tuple[int, int]] | None = None,
    max_lines: int = 4,
    max_chars: int = 60_000,
    covering: Collection[int] | None = None,
) -> str | None:
    """See the module docstring; `spans` are [first, end) line ranges (None: the whole text); with
    `covering` (0-based line numbers), only runs that hold one of those lines."""
    lines = _lines(text)
    spans = [(0, len(lines))] if spans is None else sorted(spans)
    alternatives: list[str] = []
    seen: set[str] = set()
    size = 0
    for first, end in spans:
        end = min(end, len(lines))
        for i in range(max(first, 0), end):
            if not lines[i].strip():
                continue
            # the shortest run from line i that is unique (and holds a `covering` line), then up
            # to `max_lines` lines
            reach = min(end - i, 2 * max_lines)
            least = 1
            if covering is not None:
                ahead = [r for r in covering if i <= r < i + reach]
                if not ahead:
                    continue
                least = min(ahead) - i + 1
            shortest = next(
                (n for n in range(least, reach + 1) if _once(text, "".join(lines[i : i + n]))), None
            )
            if shortest is None:
                continue
            longest = max(shortest, min(max_lines, end - i))
            head = regex_literal("".join(lines[i : i + shortest]))
            tail = ""
            for line in reversed(lines[i + shortest : i + longest]):
                tail = f"(?:{regex_literal(line)}{tail})?"
            alternative = head + tail
            if alternative in seen:
                continue
            seen.add(alternative)
            alternatives.append(alternative)
            size += len(alternative) + 1
            if size > max_chars:
                return None
    if not alternatives:
        return None
    return "^(?:" + "|".join(alternatives) + ")$"


def _call_schema(name: str, parameters: dict, fmt: CallFormat) -> dict:
    return {
        "type": "object",
        "properties": {fmt.name_key: {"const": name}, fmt.arguments_key: parameters},
        "required": [fmt.name_key, fmt.arguments_key],
        "additionalProperties": False,
        "x-guidance": JSON_LAYOUT,
    }


def call_grammar(calls: Sequence[tuple[str, dict]], fmt: CallFormat = CallFormat()) -> str:
    if not calls:
        raise ValueError("call_grammar needs at least one tool")
    lines = [
        f"start: {json.dumps(fmt.start)} body {json.dumps(fmt.end)}",
        "body: " + " | ".join(f"fn{i}" for i in range(len(calls))),
    ]
    for i, (name, parameters) in enumerate(calls):
        lines.append(f"fn{i}: %json {json.dumps(_call_schema(name, parameters, fmt), ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


SEARCH_START, DIVIDER, REPLACE_END = "<<<<<<< SEARCH\n", "=======\n", ">>>>>>> REPLACE\n"


def replacement_grammar(search: str, max_lines: int, max_line_chars: int | None = None) -> str:
    """See the module docstring; a line of the replacement has at most `max_line_chars` characters
    (default: twice the longest SEARCH line, at least 120), so a rambling model still ends."""
    search = search if search.endswith("\n") else search + "\n"
    lines = _lines(search)
    width = max_line_chars or max(120, 2 * max(len(line) for line in lines))
    parts = [json.dumps(line, ensure_ascii=False) for line in lines]
    return "\n".join(
        [
            f"start: {json.dumps(SEARCH_START)} {' '.join(parts)} {json.dumps(DIVIDER)} body {json.dumps(REPLACE_END)}",
            f"body: LINE~0..{max(1, max_lines)}",
            f"LINE: /[^\\n]{{0,{width}}}\\n/ & ~/(<<<<<<<|=======|>>>>>>>)[^\\n]*\\n/",
            "",
        ]
    )
