"""Chat templates: a model folder's Jinja template, rendered the way transformers renders it.

Offers ``ChatTemplate`` (``from_folder``, ``from_source``, ``render``, ``encode``,
``keeps_reasoning``), ``ChatLimits``, ``normalize_messages``, ``ChatTemplateError``,
``EMBEDDED_TEMPLATE`` (the embedded model's template, also its folder's ``chat_template.jinja``) and
``ROLES``.

Where a folder's template comes from (transformers' order): ``chat_template.jinja`` wins over
``chat_template`` in ``tokenizer_config.json`` (a string, or a list of ``{name, template}``);
``additional_chat_templates/NAME.jinja`` adds named ones. The ``tool_use`` template, when there
is one, renders conversations that come with tools; ``default`` renders the rest.
Rendering happens in jinja2's ``ImmutableSandboxedEnvironment`` with ``raise_exception``,
``strftime_now``, a ``tojson`` that keeps non-ASCII text, ``loopcontrols`` and the special
tokens of ``tokenizer_config.json`` (``bos_token``, ``eos_token``, ...) as variables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
EXTRA_TEMPLATES_DIR = "additional_chat_templates"
ROLES = ("system", "user", "assistant", "tool")
# Special-token entries of tokenizer_config.json a template may read, as transformers passes them.
TOKEN_VARIABLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
RESERVED_VARIABLES = ("messages", "tools", "add_generation_prompt")

# The embedded model's layout: ``<|role|>\n{content}<|end|>\n`` per message (the layout its
# tokenizer_config.json template had, so plain conversations render as before), the tools in the
# first system turn, calls as ``<tool_call>{json}</tool_call>`` lines of the assistant turn and
# results as ``<tool_response>`` blocks of a user turn (the model has no tool role token).
EMBEDDED_TEMPLATE = """\
{#- mellum-tiny-py: <|role|>\\n{content}<|end|>\\n per message; tools listed in the first system turn;
    calls as <tool_call>{"name": ..., "arguments": {...}}</tool_call>; results as <tool_response> blocks. -#}
{%- set has_system = messages and messages[0].role == 'system' -%}
{%- if tools -%}
    {{- '<|system|>\\n' -}}
    {%- if has_system and messages[0].content -%}
        {{- messages[0].content ~ '\\n\\n' -}}
    {%- endif -%}
    {{- '# Tools\\n\\nYou may call one or more of these functions. Their JSON schemas:\\n<tools>\\n' -}}
    {%- for tool in tools -%}
        {{- tool | tojson ~ '\\n' -}}
    {%- endfor -%}
    {{- '</tools>\\n\\nTo call a function, answer with one line per call:\\n' -}}
    {{- '<tool_call>{"name": <function name>, "arguments": <arguments as a JSON object>}</tool_call>' -}}
    {{- '<|end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if message.role == 'system' -%}
        {%- if not (loop.first and tools) -%}
            {{- '<|system|>\\n' ~ message.content ~ '<|end|>\\n' -}}
        {%- endif -%}
    {%- elif message.role == 'user' -%}
        {{- '<|user|>\\n' ~ message.content ~ '<|end|>\\n' -}}
    {%- elif message.role == 'assistant' -%}
        {{- '<|assistant|>\\n' ~ message.content -}}
        {%- for call in message.tool_calls or [] -%}
            {%- set fn = call.function if call.function is defined else call -%}
            {%- if message.content or not loop.first -%}
                {{- '\\n' -}}
            {%- endif -%}
            {%- set arguments = fn.arguments if fn.arguments is string else fn.arguments | tojson -%}
            {{- '<tool_call>{"name": ' ~ fn.name | tojson ~ ', "arguments": ' ~ arguments ~ '}</tool_call>' -}}
        {%- endfor -%}
        {{- '<|end|>\\n' -}}
    {%- elif message.role == 'tool' -%}
        {%- if loop.first or loop.previtem.role != 'tool' -%}
            {{- '<|user|>\\n' -}}
        {%- else -%}
            {{- '\\n' -}}
        {%- endif -%}
        {{- '<tool_response>' ~ message.content ~ '</tool_response>' -}}
        {%- if loop.last or loop.nextitem.role != 'tool' -%}
            {{- '<|end|>\\n' -}}
        {%- endif -%}
    {%- else -%}
        {{- raise_exception('unknown chat role ' ~ message.role ~ '; expected system, user, assistant or tool') -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|assistant|>\\n' -}}
{%- endif -%}
"""


class ChatTemplateError(ValueError):
    """A template that cannot be found, compiled or rendered, or messages it cannot take."""


class TokenizerLike(Protocol):
    """What ``ChatTemplate.encode`` needs of ``engine.tokenizer.Tokenizer``."""

    special_ids: frozenset[int]

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]: ...

    def id_to_token(self, token_id: int) -> str: ...


@dataclass(frozen=True)
class ChatLimits:
    """Bounds on what a request may ask the template to render."""

    max_messages: int = 1024
    max_input_chars: int = 4_000_000  # all strings of the messages and tools together
    max_rendered_chars: int = 8_000_000

    def __post_init__(self) -> None:
        bad = [f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, int) or v <= 0]
        if bad:
            raise ValueError(f"ChatLimits needs positive integers, got {', '.join(bad)}")


# -- the sandbox ----------------------------------------------------------------------------------


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # differs from jinja2's tojson: no HTML escaping, non-ASCII kept (as transformers does)
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore names, as transformers' sandbox does."""

    def __init__(*args, **kwargs):  # noqa: N805 - same signature trick as jinja2's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.sandbox.SecurityError(f"chat templates cannot set namespace attribute {name!r}")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env


# -- messages -------------------------------------------------------------------------------------


def _plain(value: object, where: str, budget: list[int]) -> object:
    """A copy of ``value`` made of JSON types only; strings are charged to ``budget[0]``."""
    if value is None or type(value) in (bool, int, float):
        return value
    if isinstance(value, str):
        budget[0] -= len(value)
        if budget[0] < 0:
            raise ChatTemplateError(f"the conversation is too long: {where} goes past the character limit")
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ChatTemplateError(f"{where} has a non-string key {k!r}")
            out[str(k)] = _plain(v, f"{where}.{k}", budget)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", budget) for i, v in enumerate(value)]
    raise ChatTemplateError(f"{where} is a {type(value).__name__}; expected JSON data")


def _text_content(content: object, where: str) -> str:
    """``content`` as text: a string, ``None`` (empty) or a list of ``{"type": "text", "text"}`` parts."""
    if content is None:
        return ""  # differs from transformers: None renders as "" (jinja2 would print "None")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise ChatTemplateError(
                    f"{where}[{j}] must be a text part {{'type': 'text', 'text': str}}, got {part!r:.80}"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise ChatTemplateError(
        f"{where} must be a string, null or a list of text parts, got {type(content).__name__}"
    )


def _tool_call(call: object, where: str) -> dict:
    """An OpenAI tool call with its ``arguments`` as a JSON object (templates ``tojson`` them)."""
    if not isinstance(call, dict):
        raise ChatTemplateError(f"{where} must be an object, got {type(call).__name__}")
    fn = call.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ChatTemplateError(f"{where}.function must be an object with a non-empty string 'name'")
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ChatTemplateError(f"{where}.function.arguments is not valid JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise ChatTemplateError(f"{where}.function.arguments must be a JSON object, got {arguments!r:.80}")
    out = {**call, "type": call.get("type", "function"), "function": {**fn, "arguments": arguments}}
    if out["type"] != "function":
        raise ChatTemplateError(f"{where}.type is {out['type']!r}; expected 'function'")
    return out


def normalize_messages(messages: Sequence[Mapping], limits: ChatLimits = ChatLimits()) -> list[dict]:
    """Plain-data copies of OpenAI-style messages, checked, as templates expect them.

    Roles are system/user/assistant/tool; ``content`` becomes a string; assistant ``tool_calls``
    get their JSON-string ``arguments`` parsed into objects; ``reasoning`` is renamed
    ``reasoning_content``. Raises ``ChatTemplateError`` naming the message and field at fault.
    """
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages must be a list, got {type(messages).__name__}")
    if not messages:
        raise ChatTemplateError("messages is empty; expected at least one message")
    if len(messages) > limits.max_messages:
        raise ChatTemplateError(f"{len(messages)} messages is more than the limit of {limits.max_messages}")
    budget = [limits.max_input_chars]
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        m = _plain(message, where, budget)
        if not isinstance(m, dict):
            raise ChatTemplateError(f"{where} must be an object, got {type(message).__name__}")
        if m.get("role") not in ROLES:
            raise ChatTemplateError(f"{where}.role is {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        m["content"] = _text_content(m.get("content"), f"{where}.content")
        if "reasoning" in m and "reasoning_content" not in m:
            m["reasoning_content"] = m.pop("reasoning")
        if m.get("reasoning_content") is not None and not isinstance(m["reasoning_content"], str):
            raise ChatTemplateError(f"{where}.reasoning_content must be a string")
        calls = m.get("tool_calls")
        if calls is not None:
            if m["role"] != "assistant" or not isinstance(calls, list):
                raise ChatTemplateError(f"{where}.tool_calls must be a list on an assistant message")
            m["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise ChatTemplateError(f"{where}.{key} must be a string")
        out.append(m)
    return out


# -- the template ---------------------------------------------------------------------------------


def _token_variables(config: Mapping) -> dict[str, str]:
    out = {}
    for key in TOKEN_VARIABLES:
        value = config.get(key)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def _read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChatTemplateError(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ChatTemplateError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _config_templates(entry: object, where: str) -> dict[str, str]:
    """The ``chat_template`` entry: a string, or transformers' list of ``{name, template}``."""
    if entry is None:
        return {}
    if isinstance(entry, str):
        return {"default": entry}
    if isinstance(entry, list) and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
        for t in entry
    ):
        return {t["name"]: t["template"] for t in entry}
    raise ChatTemplateError(
        f"{where} must be a string or a list of {{'name', 'template'}} strings, got {entry!r:.80}"
    )


@dataclass(frozen=True, eq=False)
class ChatTemplate:
    """Named template sources (``default``, maybe ``tool_use``) with the variables they render with."""

    sources: Mapping[str, str]
    origin: str  # where the sources came from, for error messages
    variables: Mapping[str, str] = field(default_factory=dict)  # special tokens from tokenizer_config.json
    limits: ChatLimits = ChatLimits()
    _compiled: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "default" not in self.sources:
            raise ChatTemplateError(
                f"{self.origin} names chat templates {sorted(self.sources)} but none is 'default'"
            )
        env = _environment()
        for name, source in self.sources.items():
            try:
                self._compiled[name] = env.from_string(source)
            except jinja2.TemplateSyntaxError as exc:
                raise ChatTemplateError(
                    f"{self.origin}: chat template {name!r} is not valid Jinja (line {exc.lineno}): {exc.message}"
                ) from None

    @classmethod
    def from_source(cls, source: str, origin: str = "<string>", **kwargs) -> ChatTemplate:
        """A template from its Jinja text."""
        return cls({"default": source}, origin, **kwargs)

    @classmethod
    def from_folder(cls, model_dir: str | Path, limits: ChatLimits = ChatLimits()) -> ChatTemplate:
        """The template of a model folder; raises ``ChatTemplateError`` naming both places looked in."""
        folder = Path(model_dir)
        config_path, file_path = folder / CONFIG_FILE, folder / TEMPLATE_FILE
        config = _read_config(config_path)
        sources = _config_templates(config.get("chat_template"), f"{config_path} chat_template")
        origin = f"{config_path} (chat_template)"
        if file_path.is_file():
            sources["default"] = file_path.read_text(encoding="utf-8")
            origin = str(file_path)
        extra = folder / EXTRA_TEMPLATES_DIR
        if extra.is_dir():
            sources.update({p.stem: p.read_text(encoding="utf-8") for p in sorted(extra.glob("*.jinja"))})
        if not sources:
            raise ChatTemplateError(f"no chat template in {config_path} (chat_template) or {file_path}")
        return cls(sources, origin, _token_variables(config), limits)

    @property
    def keeps_reasoning(self) -> bool:
        """Whether any of the sources reads ``reasoning_content`` (else earlier reasoning is dropped)."""
        return any("reasoning_content" in s for s in self.sources.values())

    def _pick(self, tools: object) -> str:
        return "tool_use" if tools and "tool_use" in self.sources else "default"

    def render(
        self,
        messages: Sequence[Mapping],
        *,
        tools: Sequence[Mapping] | None = None,
        add_generation_prompt: bool = True,
        variables: Mapping[str, object] | None = None,
    ) -> str:
        """The prompt text of ``messages`` (normalized first) with ``tools`` (OpenAI tool objects,
        as ``engine.chat.tools.validate_tools`` returns them).

        ``variables`` are extra template variables (for example ``enable_thinking``).
        """
        return self._render(
            normalize_messages(messages, self.limits), tools, add_generation_prompt, variables
        )

    def _render(self, messages: list[dict], tools, add_generation_prompt: bool, variables) -> str:
        clash = sorted(set(variables or {}) & set(RESERVED_VARIABLES))
        if clash:
            raise ChatTemplateError(f"template variables {clash} are reserved; pass them as arguments")
        budget = [self.limits.max_input_chars - sum(_chars(m) for m in messages)]
        context = {
            **self.variables,
            **(_plain(dict(variables or {}), "variables", budget)),
            "messages": messages,
            "tools": _plain(list(tools), "tools", budget) if tools else None,
            "add_generation_prompt": bool(add_generation_prompt),
        }
        name = self._pick(tools)
        pieces, size = [], 0
        try:
            for piece in self._compiled[name].generate(**context):
                size += len(piece)
                if size > self.limits.max_rendered_chars:
                    raise ChatTemplateError(
                        f"the rendered prompt is longer than the limit of {self.limits.max_rendered_chars} characters"
                    )
                pieces.append(piece)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(
                f"chat template {name!r} of {self.origin} raised: {exc.message}"
            ) from None
        except Exception as exc:  # a template bug (TypeError, ...) is a bad request, not an engine crash
            raise ChatTemplateError(
                f"chat template {name!r} of {self.origin} failed: {type(exc).__name__}: {exc}"
            ) from None
        return "".join(pieces)

    def encode(
        self,
        tokenizer: TokenizerLike,
        messages: Sequence[Mapping],
        *,
        tools: Sequence[Mapping] | None = None,
        add_generation_prompt: bool = True,
        variables: Mapping[str, object] | None = None,
    ) -> list[int]:
        """Token ids of the rendered prompt; special tokens come from the template text only.

        Usually the ids of the whole rendered text (as transformers tokenizes it). When a message
        or tool carries a special token's text, that text is swapped for a stand-in before
        rendering and encoded as plain text in its place.
        """
        messages = normalize_messages(messages, self.limits)
        specials = sorted((tokenizer.id_to_token(i) for i in tokenizer.special_ids), key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, specials))) if specials else None
        strings = list(_strings([messages, tools or []]))
        if pattern is None or not any(pattern.search(s) for s in strings):
            text = self._render(messages, tools, add_generation_prompt, variables)
            return tokenizer.encode(text, allow_special=True)
        taken = set("".join(strings)) | set("".join(self.sources.values()))
        marker = next((chr(c) for c in range(0xE000, 0xF900) if chr(c) not in taken), None)
        if marker is None:
            raise ChatTemplateError(
                "the conversation uses every private-use character; cannot place stand-ins"
            )
        index = {s: k for k, s in enumerate(specials)}

        def swap(value):
            if isinstance(value, str):
                return pattern.sub(lambda m: f"{marker}{index[m.group()]}{marker}", value)
            if isinstance(value, Mapping):
                return {swap(k): swap(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [swap(v) for v in value]
            return value

        text = self._render(
            swap(messages), swap(list(tools)) if tools else None, add_generation_prompt, variables
        )
        ids = []
        for k, piece in enumerate(re.split(f"{marker}([0-9]+){marker}", text)):
            ids += (
                tokenizer.encode(specials[int(piece)])
                if k % 2
                else tokenizer.encode(piece, allow_special=True)
            )
        return ids


def _strings(value: object):
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _chars(value: object) -> int:
    return sum(len(s) for s in _strings(value))
