"""The agent's tool loop: the chat model calls one tool per step until it finishes or a limit ends it.

Each step is one `chat` request with the tools and `tool_choice: "required"` (or the tool a
`plan` names for that step): the engine decodes the call under a grammar (`grounding.py`), so the
call is well-formed and its paths and SEARCH lines exist. The call is carried out (`tools.py`),
its result goes back as a `tool` message, and the next step's prompt starts with this one's — the
engine reuses its KV cache (`conversation` = the run's id).

`propose_edit` in the "block" format takes two requests: the call names the file and the SEARCH
lines, then the model writes the replacement lines as a search/replace block under a grammar whose
SEARCH part is those lines. In the "fim" format (a completion-only model) the call names the lines
of a syntax error and the fix is made as the code action makes it (`edits.generate.generate_edit`:
fill-in-the-middle candidates, the first valid one). The edit is validated like a code action's
(`validate_edit`) and sent to the user (`apply`): the loop never writes a file. Applied, refused
or failed, the outcome is the model's next message.

A run ends when the model calls `finish`, when it repeats the same call `REPEATS` times in a row,
or at a limit (steps, generated tokens, wall time — the time the user takes to answer an edit
does not count); the summary says which and what was done.

A `plan` (for evaluations and tests) forces the tool of the first steps, and may pin some of its
arguments (decoded as constants); the model writes the rest.

Offers `AgentLoop(engine, toolbox, conversation, apply, limits, ...)`.run(task, context) ->
`AgentResult`; `Limits` (`merged(overrides)`), `StepRecord`, `PlanStep` / `plan_steps(raw)`,
`AGENT_SYSTEM`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..context.builder import estimate_tokens
from ..edits.formats import EditFormatError, parse_search_replace
from ..edits.generate import EditEngine, EditRequest, GenerateOptions, generate_edit
from .chat import ChatEngine, message_tokens
from .consent import ApplyOutcome
from .conversation import Conversation, Entry
from .grounding import CallFormat, call_grammar, replacement_grammar
from .tools import TOOL_NAMES, ProposedEdit, Toolbox, ToolError, ToolResult
from .transcript import render_entry, unified_diff

log = logging.getLogger(__name__)
AGENT_SYSTEM = """You are Mellum, a coding agent working in the user's workspace through tools.
Call exactly one tool per step. Read a file with read_file before you edit it. propose_edit
replaces lines copied exactly from a file you read; the user confirms or refuses every edit.
When the task is done, call finish with a one-line summary."""
REPEATS = 3  # the same call this many times in a row ends the run
RETRY_TEMPERATURE = 0.8  # a step after a repeated call samples: greedy decoding would repeat it
EXTRA_LINES = 2  # a replacement may have this many lines more than its SEARCH text
MAX_OVERVIEW = 40  # workspace files listed in the first message
ApplyFn = Callable[[ProposedEdit], Awaitable[ApplyOutcome]]
Emit = Callable[[str, str], None]
HARD_LIMITS = {"steps": 200, "tokens": 1 << 20, "seconds": 3600.0, "step_tokens": 8192}


@dataclass(frozen=True)
class Limits:
    steps: int = 12
    tokens: int = 4096
    seconds: float = 120.0
    step_tokens: int = 384

    def merged(self, overrides: Any) -> Limits:
        """These limits with a request's `limits` ({steps?, tokens?, seconds?, stepTokens?});
        ValueError naming a bad value."""
        if overrides is None:
            return self
        if not isinstance(overrides, dict):
            raise ValueError(f"limits must be an object, got {type(overrides).__name__}")
        names = {"steps": "steps", "tokens": "tokens", "seconds": "seconds", "stepTokens": "step_tokens"}
        values = {}
        for key, value in overrides.items():
            name = names.get(key)
            if name is None:
                raise ValueError(f"unknown limit {key!r}; expected some of {sorted(names)}")
            kind = float if name == "seconds" else int
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (kind is int and value != int(value))
            ):
                raise ValueError(
                    f"limits.{key} must be a positive {'number' if kind is float else 'integer'}, got {value!r}"
                )
            if not 0 < value <= HARD_LIMITS[name]:
                raise ValueError(f"limits.{key} must be in (0, {HARD_LIMITS[name]:g}], got {value!r}")
            values[name] = kind(value)
        return replace(self, **values)


@dataclass(frozen=True)
class PlanStep:
    tool: str
    arguments: dict | None = None  # pinned argument values; the model writes the others


def plan_steps(raw: Any) -> list[PlanStep]:
    """A plan: tool names, {"tool", "arguments"?} objects or `PlanStep`s; ValueError naming a bad entry."""
    if raw is None:
        return []
    if not isinstance(raw, list | tuple):
        raise ValueError(f"the plan must be a list, got {type(raw).__name__}")
    steps = []
    for i, entry in enumerate(raw):
        if isinstance(entry, PlanStep):
            entry = {"tool": entry.tool, "arguments": entry.arguments}
        tool, arguments = (entry, None) if isinstance(entry, str) else (None, None)
        if isinstance(entry, dict):
            tool, arguments = entry.get("tool"), entry.get("arguments")
        if tool not in TOOL_NAMES or (arguments is not None and not isinstance(arguments, dict)):
            raise ValueError(
                f"plan[{i}] must be a tool name or {{tool, arguments?}} with a tool among {list(TOOL_NAMES)}, "
                f"got {entry!r:.80}"
            )
        steps.append(PlanStep(tool, arguments))
    return steps


@dataclass
class StepRecord:
    step: int
    tool: str | None  # the tool called; None when the answer held no valid call
    arguments: dict | None
    valid: bool  # a well-formed call of a tool offered at this step
    ok: bool  # the tool did what was asked (an edit: the user applied it)
    seconds: float  # the step's time, without the user's time to answer an edit
    tokens: int  # tokens the model generated in this step
    prompt_tokens: int = 0
    reused_tokens: int = 0  # of the prompt, served from the engine's cache
    requests: int = 1  # engine requests in this step (2 for a "block" edit)
    error: str = ""


@dataclass
class AgentResult:
    conversation_id: str
    status: str  # finished, limit, stuck, cancelled, error
    summary: str
    steps: list[StepRecord] = field(default_factory=list)
    edits: list[dict] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "conversationId": self.conversation_id,
            "status": self.status,
            "summary": self.summary,
            "steps": [asdict(s) for s in self.steps],
            "edits": self.edits,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
        }


class _Stop(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class AgentLoop:
    def __init__(
        self,
        engine: ChatEngine,
        toolbox: Toolbox,
        conversation: Conversation,
        apply: ApplyFn,
        limits: Limits = Limits(),
        *,
        emit: Emit | None = None,
        call_format: CallFormat = CallFormat(),
        grounded: bool = True,
        plan: Sequence[PlanStep | str] = (),
        temperature: float = 0.0,
        context_length: int = 8192,
        edit_engine: EditEngine | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine, self.toolbox, self.conversation, self.apply = engine, toolbox, conversation, apply
        self.limits, self.call_format, self.grounded = limits, call_format, grounded
        self.plan, self.temperature, self.context_length, self.clock = (
            plan_steps(list(plan)),
            temperature,
            context_length,
            clock,
        )
        self.emit = emit if emit is not None else (lambda kind, text: None)
        self.edit_engine = edit_engine  # for "fim" edits
        self.records: list[StepRecord] = []
        self.edits: list[dict] = []
        self.tokens = 0
        self._started: float | None = None
        self._waited = 0.0  # time spent waiting for the user's answer to an edit
        self._last: tuple[str, str] | None = None
        self._repeats = 0

    # ---- transcript ----------------------------------------------------------------------------
    def _entry(self, kind: str, text: str, **meta) -> Entry:
        entry = self.conversation.add(kind, text, **meta)
        self.emit("content", render_entry(entry))
        return entry

    def _on_partial(self, partial: dict) -> None:
        if partial.get("reasoning"):
            self.emit("reasoning", partial["reasoning"])

    # ---- the run -------------------------------------------------------------------------------
    def first_message(self, task: str, context: str = "") -> str:
        files = self.toolbox.known_files()
        overview = "\n".join(files[:MAX_OVERVIEW])
        if len(files) > MAX_OVERVIEW:
            overview += f"\n… and {len(files) - MAX_OVERVIEW} more (list_files)"
        parts = [f"Task: {task}"]
        if context:
            parts.append(context)
        if overview:
            parts.append(f"Workspace files:\n{overview}")
        return "\n\n".join(parts)

    async def run(self, task: str, context: str = "", about: str | None = None) -> AgentResult:
        conv = self.conversation
        conv.messages[:] = [
            {"role": "system", "content": AGENT_SYSTEM},
            {"role": "user", "content": self.first_message(task, context)},
        ]
        self._started = self.clock()
        self._entry("user", task, task=True, about=about)
        status, summary = "error", ""
        try:
            while True:
                self._check_limits()
                done = await self._step()
                if done is not None:
                    status, summary = "finished", done
                    break
        except _Stop as stop:
            status, summary = stop.status, stop.reason
        except asyncio.CancelledError:
            self._entry("note", self._summary("cancelled", "the run was cancelled"))
            raise
        except Exception as e:  # the engine failed: end the run with what was done
            log.warning("agent run %s failed", conv.id, exc_info=True)
            status, summary = "error", f"the run failed: {e}"
        text = self._summary(status, summary)
        self._entry("note", text)
        conv.turns += 1
        return AgentResult(conv.id, status, text, self.records, self.edits, self.tokens, self.agent_seconds())

    def agent_seconds(self) -> float:
        """The run's own time so far: wall time without the user's time to answer edits."""
        return 0.0 if self._started is None else self.clock() - self._started - self._waited

    def _summary(self, status: str, reason: str) -> str:
        applied = [e["path"] for e in self.edits if e["status"] == "applied"]
        refused = [e["path"] for e in self.edits if e["status"] != "applied"]
        head = {"finished": "Finished", "limit": "Stopped at a limit", "stuck": "Stopped",
                "cancelled": "Cancelled", "error": "Failed"}.get(status, status)  # fmt: skip
        parts = [f"{head}: {reason}" if reason else head, f"{len(self.records)} steps, {self.tokens} tokens"]
        if applied:
            parts.append("edits applied: " + ", ".join(applied))
        if refused:
            parts.append(f"{len(refused)} edit(s) not applied")
        return "; ".join(parts) + "."

    def _check_limits(self) -> None:
        if len(self.records) >= self.limits.steps:
            raise _Stop("limit", f"the step limit ({self.limits.steps}) was reached")
        if self.tokens >= self.limits.tokens:
            raise _Stop("limit", f"the token limit ({self.limits.tokens}) was reached")
        if self.agent_seconds() >= self.limits.seconds:
            raise _Stop("limit", f"the time limit ({self.limits.seconds:g} s) was reached")

    async def _chat(self, params: dict) -> dict:
        """One engine request within the time and token limits left."""
        params["max_tokens"] = max(1, min(self.limits.step_tokens, self.limits.tokens - self.tokens))
        self._fit(params["max_tokens"])
        params["messages"] = list(self.conversation.messages)
        left = self.limits.seconds - self.agent_seconds()
        try:
            result = await asyncio.wait_for(self.engine.chat(params, self._on_partial), max(left, 0.001))
        except asyncio.TimeoutError:
            raise _Stop("limit", f"the time limit ({self.limits.seconds:g} s) was reached") from None
        self.tokens += int(result.get("tokens") or 0)
        return result

    def _fit(self, max_tokens: int) -> None:
        """Shorten the oldest tool results when the conversation would not fit the model's context."""
        messages = self.conversation.messages
        room = self.context_length - max_tokens - 64
        for m in messages[2:]:
            if message_tokens(messages) <= room:
                return
            if m.get("role") == "tool" and len(m.get("content") or "") > 200:
                m["content"] = m["content"][:200] + "\n… (shortened to fit the model's context)"
        if message_tokens(messages) > room:
            raise _Stop("limit", "the conversation no longer fits the model's context")

    def _temperature(self) -> float:
        """Greedy (or the configured temperature) unless the last call repeated the one before."""
        return max(self.temperature, RETRY_TEMPERATURE) if self._repeats > 1 else self.temperature

    def _plan_step(self) -> PlanStep | None:
        step = len(self.records)
        return self.plan[step] if step < len(self.plan) else None

    def _tool_params(self, names: list[str]) -> dict:
        forced = len(names) == 1 and len(self.toolbox.offered()) > 1
        pinned = self._plan_step()
        params: dict[str, Any] = {
            "tools": self.toolbox.specs(),
            "tool_choice": {"type": "function", "function": {"name": names[0]}} if forced else "required",
            "conversation": self.conversation.id,
            "temperature": self._temperature(),
            "stream": True,
        }
        if pinned is not None and pinned.arguments is not None:
            params["tool_choice"] = {"type": "function", "function": {"name": pinned.tool}}
            params["grammar"] = call_grammar([(pinned.tool, self._pinned_schema(pinned))], self.call_format)
        elif self.grounded:
            params["grammar"] = call_grammar(self.toolbox.grounded(names), self.call_format)
        return params

    def _pinned_schema(self, step: PlanStep) -> dict:
        spec = next(s["function"] for s in self.toolbox.specs() if s["function"]["name"] == step.tool)
        params = json.loads(json.dumps(spec["parameters"]))
        pinned = step.arguments or {}
        required = set(params.get("required", [])) | set(pinned)
        params["properties"] = {  # the pinned arguments and the required others: nothing optional
            key: {"const": pinned[key]} if key in pinned else schema
            for key, schema in params["properties"].items()
            if key in required
        }
        params["required"] = sorted(required)
        return params

    def _offered(self) -> list[str]:
        """The tools of this step: the plan's, else every tool that can succeed now (when grounded:
        that has a grounded schema)."""
        names = self.toolbox.offered()
        if self.grounded:
            names = [n for n, _ in self.toolbox.grounded(names)]
        planned = self._plan_step()
        if planned is not None and (planned.tool in names or planned.arguments is not None):
            return [planned.tool]
        return names

    async def _step(self) -> str | None:
        """One step; the summary when the model called `finish`, else None."""
        step = len(self.records) + 1
        started, waited = self.clock(), self._waited
        names = self._offered()
        result = await self._chat(self._tool_params(names))
        record = StepRecord(step, None, None, False, False, 0.0, int(result.get("tokens") or 0),
                            **_cache(result))  # fmt: skip
        self.records.append(record)
        calls = result.get("tool_calls") or []
        text = result.get("text") or ""
        try:
            if not calls:
                issue = (result.get("tool_call_issues") or ["the answer holds no tool call"])[0]
                self.conversation.messages.append({"role": "assistant", "content": text})
                self.conversation.messages.append(
                    {"role": "user", "content": f"That was not a tool call ({issue}). Call one of the tools."}
                )
                record.error = f"no valid call: {issue}"
                self._entry("note", f"Step {step}: no valid tool call ({issue})")
                return None
            call = calls[0]
            name = call["function"]["name"]
            self.conversation.messages.append({"role": "assistant", "content": text, "tool_calls": [call]})
            record.tool = name
            try:
                args = json.loads(call["function"]["arguments"] or "{}")
            except json.JSONDecodeError as e:
                args = None
                outcome = ToolResult(f"the arguments are not JSON: {e}", ok=False)
            else:
                record.arguments = args if isinstance(args, dict) else None
                self._entry("call", name, name=name, arguments=args, step=step)
                if name not in names:
                    outcome = ToolResult(f"{name} cannot be called now; call one of {names}", ok=False)
                elif name == "finish":
                    record.valid = record.ok = True
                    summary = args.get("summary") if isinstance(args, dict) else None
                    return summary if isinstance(summary, str) and summary.strip() else "the model finished"
                else:
                    record.valid = True
                    outcome = await self._carry_out(record, call, name, args)
            record.ok = outcome.ok
            if not outcome.ok:
                record.error = outcome.text
            self._tool_message(call, outcome)
            self._repeated(name, args)
            return None
        finally:
            record.seconds = self.clock() - started - (self._waited - waited)

    def _tool_message(self, call: dict, outcome: ToolResult) -> None:
        text = outcome.text if outcome.ok else f"Error: {outcome.text}"
        last = self.conversation.messages[-1]
        if last.get("role") == "assistant" and last.get("tool_calls"):
            self.conversation.messages.append(
                {"role": "tool", "tool_call_id": call.get("id"), "content": text}
            )
        else:  # the call's tool message was already sent (a "block" edit): the outcome is the user's
            self.conversation.messages.append({"role": "user", "content": text})
        self._entry("result", outcome.text, ok=outcome.ok)

    def _repeated(self, name: str, args: Any) -> None:
        key = (name, json.dumps(args, sort_keys=True))
        self._repeats = self._repeats + 1 if key == self._last else 1
        self._last = key
        if self._repeats >= REPEATS:
            raise _Stop("stuck", f"the model made the same {name} call {REPEATS} times in a row")

    async def _carry_out(self, record: StepRecord, call: dict, name: str, args: Any) -> ToolResult:
        if name == "propose_edit":
            return await self._propose(record, call, args)
        try:
            return await asyncio.to_thread(self.toolbox.run, name, args)
        except ToolError as e:
            return ToolResult(str(e), ok=False)

    async def _propose(self, record: StepRecord, call: dict, args: Any) -> ToolResult:
        try:
            if self.toolbox.edit_format == "fim":
                edit = await self._infill(record, args)
            else:
                if self.toolbox.edit_format == "block":
                    args = await self._replacement(record, call, args)
                edit = await asyncio.to_thread(self.toolbox.prepare_edit, args)
        except ToolError as e:
            return self._edit_outcome(None, str(e), args)
        before = self.clock()
        answer = await self.apply(edit)
        waited = self.clock() - before
        self._waited += waited  # the user's time is not the agent's
        record.arguments = dict(args)
        if answer.applied:
            self.toolbox.applied(edit)
        return self._edit_outcome(edit, answer.reason, args, applied=answer.applied, waited=waited)

    async def _infill(self, record: StepRecord, args: Any) -> ProposedEdit:
        """The fix of the syntax error on the named lines, made as the code action makes it."""
        if self.edit_engine is None:
            raise ToolError("propose_edit: no completion model to write the fix with")
        region = await asyncio.to_thread(self.toolbox.region, args)
        action = await asyncio.to_thread(self.toolbox.fix_action, region)
        left_ms = (self.limits.seconds - self.agent_seconds()) * 1e3
        request = EditRequest(
            region.text, region.language, action, f"agent:{self.conversation.id}", region.ref.shown
        )
        options = GenerateOptions(mode="fim", deadline_ms=max(1.0, min(8000.0, left_ms)))
        result = await generate_edit(self.edit_engine, request, options)
        spent = sum(estimate_tokens(a.answer) for a in result.attempts)
        record.tokens += spent
        self.tokens += spent
        record.requests = len(result.attempts) + 1
        if not result.ok:
            raise ToolError(f"propose_edit: {result.reason}")
        return self.toolbox.checked(region, result.new_text)

    async def _replacement(self, record: StepRecord, call: dict, args: Any) -> dict:
        """Ask for the replacement of the SEARCH lines as a search/replace block (the "block" format)."""
        if not isinstance(args, dict) or not isinstance(args.get("search"), str) or not args.get("search"):
            raise ToolError("propose_edit: the argument 'search' (the lines to replace) is missing")
        search = args["search"] if args["search"].endswith("\n") else args["search"] + "\n"
        ask = (
            "Now write the new text of these lines as one search/replace block:\n"
            f"<<<<<<< SEARCH\n{search}=======\n(the new lines)\n>>>>>>> REPLACE"
        )
        self.conversation.messages.append({"role": "tool", "tool_call_id": call.get("id"), "content": ask})
        params = {
            "tools": self.toolbox.specs(),  # the same prompt prefix as the steps: the cache holds
            "conversation": self.conversation.id,
            "temperature": self.temperature,
            "stream": True,
            "grammar": replacement_grammar(search, search.count("\n") + EXTRA_LINES),
        }
        result = await self._chat(params)
        record.tokens += int(result.get("tokens") or 0)
        record.requests += 1
        block = result.get("text") or ""
        self.conversation.messages.append({"role": "assistant", "content": block})
        try:
            blocks = parse_search_replace(block)
        except EditFormatError as e:
            raise ToolError(f"propose_edit: the replacement block is not complete ({e})") from None
        return {"path": args.get("path"), "search": args["search"], "replace": blocks[0].replace}

    def _edit_outcome(
        self, edit: ProposedEdit | None, reason: str, args: Any, *, applied: bool = False, waited: float = 0.0
    ) -> ToolResult:
        path = edit.ref.shown if edit is not None else (args.get("path") if isinstance(args, dict) else None)
        if edit is None:
            status, text = "invalid", reason
        elif applied:
            status, text = "applied", f"The user applied the edit of {path}."
        else:
            status, text = "refused", f"The edit of {path} was not applied: {reason}. The file is unchanged."
        self.edits.append({"path": path, "status": status, "reason": reason, "step": len(self.records),
                           "waitedSeconds": round(waited, 3)})  # fmt: skip
        if edit is not None:
            self._entry("edit", unified_diff(edit.old, edit.new, edit.ref.shown), path=path, status=status)
        return ToolResult(text, ok=applied)


def _cache(result: dict) -> dict:
    cache = result.get("cache") or {}
    return {
        "prompt_tokens": int(cache.get("prompt_tokens") or 0),
        "reused_tokens": int(cache.get("reused_tokens") or 0),
    }
