"""OpenAI request bodies to engine parameters, and engine results to OpenAI responses: the pure
half of the OpenAI-compatible server (``engine.http`` is the connection half).

``completion_request`` (``/v1/completions``: with ``suffix`` it is FIM through ``complete``, a
prompt that opens with ``<filename>{path}\\n{text}`` blocks giving them back as repository context;
without, ``generate``) and ``chat_request`` (``/v1/chat/completions`` through ``chat``: ``tools``,
``tool_choice`` auto / required / named, ``response_format`` json_object / json_schema). Defaults
follow OpenAI (``max_tokens`` 16, ``temperature`` 1). Errors are ``HttpError``s shaped like
OpenAI's. Offers ``HttpError``, ``from_protocol``, ``completion_request``, ``chat_request``,
``chat_message``, ``finish_reason``, ``usage``.
"""

from __future__ import annotations

import logging
from typing import Any

from .prompt import split_text
from .protocol import ErrorCode, ProtocolError, parse_params

log = logging.getLogger("engine.http")

# OpenAI fields we accept and ignore, and fields we accept only with their default meaning.
_IGNORED = {"model", "user", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "stream_options"}
_ONLY = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
}
# engine error code -> (HTTP status, OpenAI-style error code); anything else is a 500 "internal".
_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content")
_STATUS_OF_CODE = {
    ErrorCode.PARSE_ERROR: (400, "invalid_request"),
    ErrorCode.INVALID_REQUEST: (400, "invalid_request"),
    ErrorCode.INVALID_PARAMS: (400, "invalid_params"),
    ErrorCode.CANCELLED: (503, "cancelled"),
    ErrorCode.SUPERSEDED: (409, "superseded"),
    ErrorCode.UNAVAILABLE: (503, "unavailable"),
}


class HttpError(Exception):
    """An answer other than 2xx; ``close`` when the connection cannot be reused (body unread)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        close: bool = False,
        headers: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.close = status, message, code, close
        self.headers: dict[str, str] = headers or {}

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "code": self.code}}


def from_protocol(e: ProtocolError) -> HttpError:
    status, code = _STATUS_OF_CODE.get(e.code, (500, "internal"))
    return HttpError(status, e.message, code=code)


# ---- request bodies -> engine parameters (pure) ------------------------------------------------


def _sampling(body: dict, own: set[str]) -> dict[str, Any]:
    """Sampling fields for ``parse_params``, with OpenAI's defaults; ``own`` are the route's other fields."""
    for name, allowed in _ONLY.items():
        if body.get(name) is not None and body[name] not in allowed:
            raise HttpError(
                400, f"{name}={body[name]!r} is not supported; expected {allowed[0]!r}", "invalid_params"
            )
    out: dict[str, Any] = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "stream": False}
    given = {"max_tokens": body.get("max_tokens", body.get("max_completion_tokens"))}
    given |= {name: body.get(name) for name in ("temperature", "top_p", "stream", "stop")}
    out |= {name: value for name, value in given.items() if value is not None}
    for name in sorted(set(body) - own - _IGNORED - set(_ONLY) - set(given) - {"max_completion_tokens"}):
        log.debug("ignoring unsupported request field %r", name)
    return out


def _parse(method: str, params: dict) -> Any:
    try:
        return parse_params(method, params)
    except ProtocolError as e:
        raise from_protocol(e) from None


def completion_request(body: dict) -> tuple[str, Any]:
    """(engine method, parsed params) of a ``/v1/completions`` body."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise HttpError(
            400, "prompt must be a string (token ids and batches are not supported)", "invalid_params"
        )
    sampling = _sampling(body, {"prompt", "suffix"})
    suffix = body.get("suffix")
    if suffix is None:
        return "generate", _parse("generate", {"prompt": prompt, **sampling})
    if not isinstance(suffix, str):
        raise HttpError(400, f"suffix must be a string, got {type(suffix).__name__}", "invalid_params")
    context, path, prefix = split_text(prompt)
    params = {"prefix": prefix, "suffix": suffix, "context": context, "path": path, **sampling}
    return "complete", _parse("complete", params)


def _message_text(i: int, content: Any) -> Any:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise HttpError(400, f"messages[{i}].content: only text parts are supported", "invalid_params")
        texts.append(part["text"])
    return "".join(texts)


def chat_request(body: dict) -> tuple[str, Any]:
    """(engine method, parsed params) of a ``/v1/chat/completions`` body."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "messages must be a non-empty list of {role, content}", "invalid_params")
    plain = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise HttpError(400, f"messages[{i}] must be an object, got {type(m).__name__}", "invalid_params")
        message = {k: v for k, v in m.items() if k in _MESSAGE_FIELDS and v is not None}
        message["content"] = _message_text(i, m.get("content"))
        plain.append(message)
    if body.get("parallel_tool_calls") not in (None, True, False):
        raise HttpError(400, "parallel_tool_calls must be a boolean", "invalid_params")
    own = {"messages", "tools", "tool_choice", "parallel_tool_calls", "response_format"}
    params = {"messages": plain, **_sampling(body, own)}
    for name in ("tools", "tool_choice", "response_format"):
        if body.get(name) is not None:
            params[name] = body[name]
    return "chat", _parse("chat", params)


def chat_message(result: dict) -> dict:
    """The assistant message of a ``chat`` result, OpenAI-shaped (``reasoning_content`` as vLLM)."""
    message: dict[str, Any] = {"role": "assistant", "content": result.get("text", "")}
    if result.get("reasoning"):
        message["reasoning_content"] = result["reasoning"]
    if result.get("tool_calls"):
        message["tool_calls"] = result["tool_calls"]
        message["content"] = message["content"] or None
    return message


def finish_reason(result: dict) -> str:
    if result.get("finish_reason"):
        return result["finish_reason"]
    return "length" if result.get("stopped") in ("length", "deadline") else "stop"


def usage(result: dict) -> dict | None:
    cache = result.get("cache") or {}
    if result.get("served") == "typed_ahead" or "prompt_tokens" not in cache:
        return None  # answered from an earlier suggestion: no counts for this request
    prompt, completion = cache["prompt_tokens"], result.get("tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cache.get("reused_tokens", 0)}}  # fmt: skip
