"""A chat turn: the question with its context, sent to the engine's chat model, the answer streamed.

- `ChatContext` / `context_text(ctx, budget_tokens)`: what the question is about, within a token
  budget: the selection first, then the file around it (whole when it fits), then snippets the
  repository index retrieved (definitions the file uses, similar code), as much as fits.
- `context_budget(messages, context_length, max_tokens, cap)`: the tokens left for the context
  once the conversation so far and the answer are counted.
- `fit_history(messages, budget)`: drops the oldest exchanges (never the system message) until the
  conversation fits the model's context; the engine's cache then starts over for this turn.
- `chat_turn(engine, conversation, message, ...)`: appends the user message, asks the engine
  (`conversation` = the conversation's id, so the engine reuses the previous turn's KV cache),
  streams `("content" | "reasoning", text)` chunks to `emit`, appends the answer; a cancelled turn
  leaves the conversation as it was (the transcript notes it).
- `ChatEngine`: what a turn needs of the engine (one `chat` request, partials to a callback).

Offers the above and `TurnResult`, `CHAT_SYSTEM`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..context.builder import estimate_tokens
from .conversation import Conversation

CHAT_SYSTEM = (
    "You are Mellum, a coding assistant in the user's editor. Answer the question about the user's "
    "code briefly and precisely, in Markdown; put code in fenced blocks."
)
MESSAGE_OVERHEAD = 8  # tokens a chat template adds around one message (role markers)
Emit = Callable[[str, str], None]


class ChatEngine(Protocol):
    async def chat(self, params: dict, on_partial: Callable[[dict], None] | None = None) -> dict: ...


@dataclass(frozen=True)
class ChatContext:
    path: str  # as shown to the model (workspace-relative when possible)
    language: str | None
    text: str  # the whole file
    selection: tuple[int, int] | None = None  # character offsets; None: the whole file is the subject
    related: tuple[tuple[str, str], ...] = ()  # (path, snippet) from the repository index

    def describe(self) -> str:
        if self.selection is None:
            return self.path
        first, last = _lines_of(self.text, *self.selection)
        return f"{self.path}, line {first}" if first == last else f"{self.path}, lines {first}-{last}"


def _lines_of(text: str, start: int, end: int) -> tuple[int, int]:
    first = text.count("\n", 0, start) + 1
    return first, max(first, text.count("\n", 0, max(start, end - 1)) + 1)


def _block(text: str, language: str | None) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}{language or ''}\n{text}{'' if text.endswith(chr(10)) else chr(10)}{fence}"


def _window(text: str, start: int, end: int, chars: int) -> tuple[str, int, int]:
    """Whole lines of `text` around [start, end) within `chars` characters: (text, first, last)."""
    lines = text.splitlines(keepends=True)
    first, last = _lines_of(text, start, end)
    lo, hi = first - 1, last  # [lo, hi) in 0-based lines
    size = sum(len(s) for s in lines[lo:hi])
    grew = True
    while grew:
        grew = False
        for step in ("up", "down"):
            if step == "up" and lo > 0 and size + len(lines[lo - 1]) <= chars:
                lo -= 1
                size += len(lines[lo])
                grew = True
            if step == "down" and hi < len(lines) and size + len(lines[hi]) <= chars:
                size += len(lines[hi])
                hi += 1
                grew = True
    return "".join(lines[lo:hi]), lo + 1, hi


def context_text(ctx: ChatContext, budget_tokens: int) -> str:
    """The context part of the user's message (see the module docstring); "" without budget."""
    chars = int(budget_tokens * 3.5)
    if chars <= 0:
        return ""
    parts: list[str] = []
    selection = ""
    if ctx.selection is not None and ctx.selection[1] > ctx.selection[0]:
        start, end = ctx.selection
        code = ctx.text[start:end]
        if len(code) > chars // 2:
            code = code[: chars // 2]
        selection = f"Selected code ({ctx.describe()}):\n{_block(code, ctx.language)}"
        chars -= len(selection)
    if chars > 200:
        if len(ctx.text) <= chars * 0.8:
            file_part = f"File {ctx.path}:\n{_block(ctx.text, ctx.language)}"
        else:
            at = ctx.selection or (0, 0)
            body, first, last = _window(ctx.text, at[0], at[1], int(chars * 0.8))
            file_part = f"File {ctx.path}, lines {first}-{last}:\n{_block(body, ctx.language)}"
        parts.append(file_part)
        chars -= len(file_part)
    related = []
    for path, snippet in ctx.related:
        piece = f"From {path}:\n{_block(snippet, None)}"
        if len(piece) > chars:
            break
        related.append(piece)
        chars -= len(piece)
    if related:
        parts.insert(0, "Related code from the repository:\n\n" + "\n\n".join(related))
    if selection:
        parts.append(selection)
    return "\n\n".join(parts)


def message_tokens(messages: list[dict]) -> int:
    total = 0
    for m in messages:
        total += MESSAGE_OVERHEAD + estimate_tokens(str(m.get("content") or ""))
        for call in m.get("tool_calls") or ():
            total += estimate_tokens(str(call.get("function", {}).get("arguments", ""))) + MESSAGE_OVERHEAD
    return total


def context_budget(messages: list[dict], context_length: int, max_tokens: int, cap: int) -> int:
    """Tokens for this turn's context: what the model's window leaves, at most `cap`."""
    return max(0, min(cap, context_length - max_tokens - message_tokens(messages) - 64))


def fit_history(messages: list[dict], budget: int) -> list[dict]:
    """`messages` without their oldest exchanges until they fit `budget` tokens (the system message
    and the last message always stay)."""
    head = messages[:1] if messages and messages[0].get("role") == "system" else []
    rest = messages[len(head) :]
    while len(rest) > 1 and message_tokens(head + rest) > budget:
        rest = rest[1:]
        while len(rest) > 1 and rest[0].get("role") != "user":  # start at a user message
            rest = rest[1:]
    return head + rest


@dataclass(frozen=True)
class TurnResult:
    answer: str
    reasoning: str
    result: dict  # the engine's result (cache, timing, tokens, ...)


async def chat_turn(
    engine: ChatEngine,
    conversation: Conversation,
    message: str,
    *,
    context: str = "",
    about: str | None = None,
    max_tokens: int = 512,
    temperature: float = 0.0,
    context_length: int = 8192,
    emit: Emit | None = None,
    system: str = CHAT_SYSTEM,
) -> TurnResult:
    """One question and its answer (see the module docstring)."""
    emit = emit if emit is not None else (lambda kind, text: None)
    before = list(conversation.messages)
    if not conversation.messages:
        conversation.messages.append({"role": "system", "content": system})
    content = f"{context}\n\nQuestion: {message}" if context else message
    conversation.messages.append({"role": "user", "content": content})
    conversation.messages[:] = fit_history(conversation.messages, context_length - max_tokens)
    conversation.add("user", message, about=about)
    streamed = {"content": [], "reasoning": []}

    def on_partial(partial: dict) -> None:
        for key, kind in (("reasoning", "reasoning"), ("text", "content")):
            piece = partial.get(key)
            if piece:
                streamed[kind].append(piece)
                emit(kind, piece)

    params = {
        "messages": list(conversation.messages),
        "conversation": conversation.id,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
    }
    try:
        result = await engine.chat(params, on_partial)
    except (asyncio.CancelledError, Exception) as e:
        conversation.messages[:] = before
        if streamed["reasoning"]:
            conversation.add("reasoning", "".join(streamed["reasoning"]))
        stopped = "cancelled" if isinstance(e, asyncio.CancelledError) else f"failed: {e}"
        conversation.add("answer", "".join(streamed["content"]), stopped=stopped)
        raise
    answer, reasoning = result.get("text") or "", result.get("reasoning") or ""
    reply: dict = {"role": "assistant", "content": answer}
    if reasoning:
        reply["reasoning_content"] = reasoning
    conversation.messages.append(reply)
    if reasoning:
        conversation.add("reasoning", reasoning)
    stopped = "cut off at the token limit" if result.get("finish_reason") == "length" else None
    conversation.add("answer", answer, stopped=stopped)
    conversation.turns += 1
    return TurnResult(answer, reasoning, result)
