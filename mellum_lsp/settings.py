"""The server's settings: nested dataclasses parsed from camelCase JSON.

Settings arrive in `initializationOptions` (either the `mellum` section itself or an object
with a `mellum` key) and from `workspace/configuration` (section `mellum`); later sources
override earlier ones key by key (`merge`). `parse_settings` never fails: a field with a bad
value keeps its default and yields a problem message naming the field ("mellum.completion.
maxTokens must be an integer in 1..2048, got 'many'; using 64"); unknown keys are reported too.

Offers `Settings` (`model`, `completion`, `context`, `engine`, `telemetry`, `debug`, `chat` and
`chat.agent`), `parse_settings`, `merge`, `camel`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any


def _opt(
    default: Any, *, lo: float | None = None, hi: float | None = None, choices: tuple = (), doc: str = ""
):
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class ModelSettings:
    path: str | None = _opt(None, doc="model folder; default: the embedded model")
    backend: str = _opt("auto", choices=("auto", "torch", "ort"))


@dataclass(frozen=True)
class CompletionSettings:
    enabled: bool = True
    max_tokens: int = _opt(64, lo=1, hi=2048)
    debounce_ms: int = _opt(75, lo=0, hi=2000, doc="base delay while typing; adapted per document")
    multiline: bool = _opt(True, doc="allow multi-line suggestions where the code opens a block")
    deadline_ms: int = _opt(5000, lo=0, hi=600_000, doc="cap on a generation's time; 0 = none")
    stop: tuple[str, ...] = ()
    typed_along: bool = _opt(True, doc="serve the rest of a shown suggestion while it is typed")
    prefill_on_open: bool = _opt(True, doc="warm the engine's cache with a document's context when opened")
    fallback: str = _opt(
        "auto", choices=("auto", "always", "never"),
        doc="textDocument/completion item: auto = only for clients without inline completion",
    )  # fmt: skip


@dataclass(frozen=True)
class ContextSettings:
    enabled: bool = True
    budget_tokens: int = _opt(8192, lo=0, hi=1 << 20, doc="cap on repository context tokens")
    index_debounce_ms: int = _opt(500, lo=0, hi=60_000)


@dataclass(frozen=True)
class EngineSettings:
    socket: str | None = _opt(None, doc="connect to the engine listening on this Unix socket")
    url: str | None = _opt(None, doc="use an OpenAI-compatible server through a local engine")
    args: tuple[str, ...] = _opt((), doc="extra flags for an engine this server starts")
    # An engine counts as idle only once no client is connected: 60 s spans a window reload or an
    # editor restart, and the model's memory (weights + KV cache) is not held long after the last
    # window closed (a reload of the embedded model takes ~0.5 s; 0 = never exit).
    idle_exit_s: float = _opt(
        60.0, lo=0, hi=86_400 * 7, doc="a started engine exits this long after its last client left"
    )
    start_timeout_s: float = _opt(180.0, lo=1, hi=3600)


@dataclass(frozen=True)
class TelemetrySettings:
    enabled: bool = _opt(True, doc="local acceptance counters (never sent anywhere)")


@dataclass(frozen=True)
class DebugSettings:
    metrics: bool = _opt(False, doc="send $/mellum/metrics notifications after each completion")


@dataclass(frozen=True)
class AgentSettings:
    max_steps: int = _opt(12, lo=1, hi=200, doc="a run ends after this many tool calls")
    max_tokens: int = _opt(4096, lo=16, hi=1 << 20, doc="tokens the model may generate in a run")
    max_seconds: float = _opt(120.0, lo=1, hi=3600, doc="a run's time; the user's answers not counted")
    step_tokens: int = _opt(384, lo=16, hi=8192, doc="cap on one step's generation")
    edit_format: str = _opt(
        "auto", choices=("auto", "block", "json", "fim"),
        doc="how the model writes an edit: a search/replace block, inside the call, or fill-in-the-middle "
        "(auto: fim with a completion-only model, json with a remote one, else block)",
    )  # fmt: skip
    grounded: bool = _opt(True, doc="decode tool calls under grammars of the workspace's files")
    temperature: float = _opt(0.0, lo=0, hi=2)


@dataclass(frozen=True)
class ChatSettings:
    max_tokens: int = _opt(512, lo=1, hi=8192, doc="cap on one answer's tokens")
    context_tokens: int = _opt(4096, lo=0, hi=1 << 20, doc="cap on the code sent with a question")
    temperature: float = _opt(0.0, lo=0, hi=2)
    agent: AgentSettings = field(default_factory=AgentSettings)


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    context: ContextSettings = field(default_factory=ContextSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    debug: DebugSettings = field(default_factory=DebugSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)


def camel(name: str) -> str:
    """snake_case -> camelCase (`max_tokens` -> `maxTokens`, `idle_exit_s` -> `idleExitS`)."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def merge(base: Any, override: Any) -> Any:
    """`override` on top of `base`, recursively for objects."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return override if override is not None else base


def section(raw: Any) -> Any:
    """The `mellum` section of initializationOptions (which may also be the section itself)."""
    if isinstance(raw, dict) and isinstance(raw.get("mellum"), dict):
        return raw["mellum"]
    return raw


def _describe(hint: Any, meta: dict) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    base = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    if args and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return f"{base.get(inner, inner)} or null"
    text = base.get(hint, str(hint))
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        lo_s = int(lo) if float(lo).is_integer() else lo
        hi_s = int(hi) if float(hi).is_integer() else hi
        text += f" in {lo_s}..{hi_s}"
    return text


def _coerce(value: Any, hint: Any, meta: dict) -> Any:
    """The value as the field's type, or raise ValueError."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError
        if hint is int:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        else:
            value = float(value)
        lo, hi = meta.get("lo"), meta.get("hi")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError
        return value
    if hint is str:
        if not isinstance(value, str) or (meta.get("choices") and value not in meta["choices"]):
            raise ValueError
        return value
    raise ValueError


def _parse(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        problems.append(f"{path} must be an object, got {type(raw).__name__}; using the defaults")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {camel(f.name): f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        f = known.get(key) or next((g for g in dataclasses.fields(cls) if g.name == key), None)
        if f is None:
            problems.append(f"unknown setting {path}.{key} (ignored)")
            continue
        hint = hints[f.name]
        name = f"{path}.{camel(f.name)}"
        if dataclasses.is_dataclass(hint):
            values[f.name] = _parse(hint, value, name, problems)
            continue
        try:
            values[f.name] = _coerce(value, hint, dict(f.metadata))
        except ValueError:
            default = f.default if f.default is not dataclasses.MISSING else None
            problems.append(
                f"{name} must be {_describe(hint, dict(f.metadata))}, got {value!r}; using {default!r}"
            )
    return cls(**values)


def parse_settings(raw: Any) -> tuple[Settings, list[str]]:
    """Settings from the `mellum` section (camelCase keys), and the problems found in it."""
    problems: list[str] = []
    return _parse(Settings, raw, "mellum", problems), problems
