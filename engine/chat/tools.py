"""Tool calls: OpenAI ``tools`` / ``tool_choice`` checks and the parser of the model's call text.

Offers ``ToolCallFormat`` (default ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``;
a folder may name another in ``tokenizer_config.json["mellum_tool_call"]``), ``ToolCall``,
``ToolCallIssue``, ``ParsedAnswer``, ``ToolCallParser`` (streaming), ``parse_tool_calls`` (whole
text), ``validate_tools``, ``ToolChoice`` / ``validate_tool_choice`` and ``FieldError`` (its
``field`` names the bad request field, e.g. ``tools[1].function.name``).

A malformed call (bad JSON, unknown function, arguments not an object, never closed) becomes a
``ToolCallIssue`` carrying its text; it never raises.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from .reasoning import partial_marker

CONFIG_FILE = "tokenizer_config.json"
CONFIG_KEY = "mellum_tool_call"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule, plus '.'
MAX_TOOLS = 128


class FieldError(ValueError):
    """A request field the engine refuses; ``field`` is its path (``tools[1].function.name``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class ToolCallFormat:
    """How a model writes a call: ``start`` + a JSON object (or list of them) + ``end``."""

    start: str = "<tool_call>"
    end: str = "</tool_call>"
    name_key: str = "name"
    arguments_key: str = "arguments"

    def __post_init__(self) -> None:
        bad = [
            f.name
            for f in fields(self)
            if not isinstance(getattr(self, f.name), str) or not getattr(self, f.name)
        ]
        if bad:
            raise ValueError(f"ToolCallFormat fields {bad} must be non-empty strings")

    @classmethod
    def from_config(cls, entry: object, source: str) -> ToolCallFormat:
        """Read a ``mellum_tool_call`` entry (an object with any of the fields); ``None`` gives the default."""
        if entry is None:
            return cls()
        names = [f.name for f in fields(cls)]
        if not isinstance(entry, Mapping) or set(entry) - set(names):
            raise ValueError(
                f"{source}: {CONFIG_KEY} must be an object with keys among {names}, got {entry!r:.120}"
            )
        try:
            return cls(**entry)
        except ValueError as exc:
            raise ValueError(f"{source}: {CONFIG_KEY}: {exc}") from None

    @classmethod
    def from_folder(cls, model_dir: str | Path) -> ToolCallFormat:
        """The format named in the folder's ``tokenizer_config.json``, or the default."""
        path = Path(model_dir) / CONFIG_FILE
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} cannot be read as JSON: {exc}") from None
        return cls.from_config(config.get(CONFIG_KEY) if isinstance(config, dict) else None, str(path))

    def render(self, name: str, arguments: Mapping) -> str:
        """The text of one call in this format (as the model is asked to write it)."""
        body = json.dumps({self.name_key: name, self.arguments_key: arguments}, ensure_ascii=False)
        return f"{self.start}{body}{self.end}"


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object as text, as OpenAI sends it

    def to_openai(self) -> dict:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ToolCallIssue:
    """A call the parser could not use: its raw text and why."""

    text: str
    message: str


@dataclass
class ParsedAnswer:
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    issues: list[ToolCallIssue] = field(default_factory=list)

    def openai_tool_calls(self) -> list[dict]:
        return [c.to_openai() for c in self.tool_calls]


def _new_id(_: int) -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallParser:
    """Streaming parser: ``feed`` decoded text, get ``("content", str)``, ``("tool_call", ToolCall)``
    and ``("issue", ToolCallIssue)`` events; ``finish`` at the end of the stream.

    Content is released as soon as it cannot be the start of ``fmt.start``. ``names``, when given,
    are the functions a call may name. ``make_id(k)`` gives the id of the k-th call.
    """

    def __init__(
        self,
        fmt: ToolCallFormat = ToolCallFormat(),
        names: Sequence[str] | None = None,
        make_id: Callable[[int], str] = _new_id,
    ) -> None:
        self.fmt = fmt
        self.names = None if names is None else frozenset(names)
        self._make_id = make_id
        self._buf = ""
        self._in_call = False
        self._count = 0

    def feed(self, text: str) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        buf = self._buf + text
        while buf:
            if self._in_call:
                at = buf.find(self.fmt.end)
                if at < 0:
                    break
                out += self._calls(buf[:at], closed=True)
                buf, self._in_call = buf[at + len(self.fmt.end) :], False
            else:
                at = buf.find(self.fmt.start)
                if at < 0:
                    keep = partial_marker(buf, self.fmt.start)
                    _content(out, buf[: len(buf) - keep])
                    buf = buf[len(buf) - keep :]
                    break
                _content(out, buf[:at])
                buf, self._in_call = buf[at + len(self.fmt.start) :], True
        self._buf = buf
        return out

    def finish(self) -> list[tuple[str, object]]:
        """Events for what is left: an unclosed call is used if its JSON is complete, else reported."""
        buf, self._buf = self._buf, ""
        if self._in_call:
            self._in_call = False
            return self._calls(buf, closed=False)
        out: list[tuple[str, object]] = []
        _content(out, buf)
        return out

    def _calls(self, body: str, closed: bool) -> list[tuple[str, object]]:
        raw = self.fmt.start + body + (self.fmt.end if closed else "")
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            why = (
                "the call is not valid JSON"
                if closed
                else "the call was never closed and is not complete JSON"
            )
            return [("issue", ToolCallIssue(raw, f"{why}: {exc}"))]
        items = value if isinstance(value, list) else [value]
        out: list[tuple[str, object]] = []
        for item in items:
            problem = self._problem(item)
            if problem:
                out.append(("issue", ToolCallIssue(raw, problem)))
                continue
            arguments = item.get(self.fmt.arguments_key, {})
            call = ToolCall(
                self._make_id(self._count), item[self.fmt.name_key], json.dumps(arguments, ensure_ascii=False)
            )
            self._count += 1
            out.append(("tool_call", call))
        return out

    def _problem(self, item: object) -> str | None:
        key, args = self.fmt.name_key, self.fmt.arguments_key
        if not isinstance(item, dict):
            return f"a call must be a JSON object, got {type(item).__name__}"
        name = item.get(key)
        if not isinstance(name, str) or not name:
            return f"the call has no string {key!r}"
        if self.names is not None and name not in self.names:
            return f"the call names {name!r}, which is not among the tools {sorted(self.names)}"
        if not isinstance(item.get(args, {}), dict):
            return f"the call's {args!r} must be a JSON object, got {type(item[args]).__name__}"
        return None


def _content(out: list, text: str) -> None:
    if not text:
        return
    if out and out[-1][0] == "content":
        out[-1] = ("content", out[-1][1] + text)
    else:
        out.append(("content", text))


def parse_tool_calls(
    text: str,
    fmt: ToolCallFormat = ToolCallFormat(),
    names: Sequence[str] | None = None,
    make_id: Callable[[int], str] = _new_id,
) -> ParsedAnswer:
    """The calls and the remaining content of a whole answer (content is stripped at both ends)."""
    parser = ToolCallParser(fmt, names, make_id)
    answer = ParsedAnswer()
    for kind, value in parser.feed(text) + parser.finish():
        if kind == "content":
            answer.content += value
        elif kind == "tool_call":
            answer.tool_calls.append(value)
        else:
            answer.issues.append(value)
    answer.content = answer.content.strip()
    return answer


# -- request validation ---------------------------------------------------------------------------


def validate_tools(tools: object) -> list[dict]:
    """Checked copies of OpenAI function tools: ``{"type": "function", "function": {"name",
    "description"?, "parameters"? (a JSON Schema object), "strict"?}}``. ``None`` gives ``[]``."""
    if tools is None:
        return []
    if not isinstance(tools, (list, tuple)):
        raise FieldError("tools", f"must be a list, got {type(tools).__name__}")
    if len(tools) > MAX_TOOLS:
        raise FieldError("tools", f"has {len(tools)} entries; the limit is {MAX_TOOLS}")
    out, seen = [], {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise FieldError(where, f"must be an object, got {type(tool).__name__}")
        if tool.get("type", "function") != "function":
            raise FieldError(f"{where}.type", f"is {tool.get('type')!r}; expected 'function'")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise FieldError(f"{where}.function", "must be an object with a 'name'")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise FieldError(
                f"{where}.function.name", f"is {name!r}; expected 1-64 letters, digits, '_', '-' or '.'"
            )
        if name in seen:
            raise FieldError(f"{where}.function.name", f"{name!r} is already the name of tools[{seen[name]}]")
        seen[name] = i
        if "description" in fn and not isinstance(fn["description"], str):
            raise FieldError(f"{where}.function.description", "must be a string")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, Mapping):
            raise FieldError(
                f"{where}.function.parameters", f"must be a JSON Schema object, got {params!r:.80}"
            )
        if params.get("type", "object") != "object":
            raise FieldError(
                f"{where}.function.parameters.type", f"is {params.get('type')!r}; expected 'object'"
            )
        if "strict" in fn and not isinstance(fn["strict"], bool):
            raise FieldError(f"{where}.function.strict", "must be a boolean")
        clean = {k: fn[k] for k in ("name", "description", "strict") if k in fn}
        out.append({"type": "function", "function": {**clean, "parameters": _json_copy(params, where)}})
    return out


def _json_copy(value: object, where: str) -> object:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise FieldError(f"{where}.function.parameters", f"is not JSON data: {exc}") from None


@dataclass(frozen=True)
class ToolChoice:
    """``mode``: ``none`` / ``auto`` / ``required`` / ``function`` (then ``name`` is the function)."""

    mode: str
    name: str | None = None

    @property
    def forces_call(self) -> bool:
        return self.mode in ("required", "function")


def validate_tool_choice(tool_choice: object, tools: Sequence[Mapping]) -> ToolChoice:
    """Check ``tool_choice`` against validated ``tools``; ``None`` means ``auto`` with tools, else ``none``."""
    names = [t["function"]["name"] for t in tools]
    if tool_choice is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise FieldError(
                "tool_choice", f"is {tool_choice!r}; expected 'none', 'auto', 'required' or a function object"
            )
        if tool_choice == "required" and not tools:
            raise FieldError("tool_choice", "is 'required' but no tools were given")
        return ToolChoice(tool_choice)
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function")
        if (
            tool_choice.get("type") != "function"
            or not isinstance(fn, Mapping)
            or not isinstance(fn.get("name"), str)
        ):
            raise FieldError(
                "tool_choice", "must be {'type': 'function', 'function': {'name': ...}} when it is an object"
            )
        if fn["name"] not in names:
            raise FieldError("tool_choice.function.name", f"{fn['name']!r} is not among the tools {names}")
        return ToolChoice("function", fn["name"])
    raise FieldError("tool_choice", f"must be a string or an object, got {type(tool_choice).__name__}")
