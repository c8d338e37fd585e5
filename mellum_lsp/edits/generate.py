"""An action's edit, asked of the engine and validated before anything is offered.

For an `Action` (`edits.actions`) on a document's text the engine is asked for candidates:
- with a chat model (the handshake's roles name another model for chat than for completion, the
  completion model cannot fill in the middle, or `mode="chat"`): the chat messages of
  `edits.prompts`, answered under the search/replace grammar of the scope (`edit_grammar`);
- else fill-in-the-middle. A syntax fix gets `fix_plans`: insertions where something is likely
  missing (the gaps between tokens at the diagnostic, the end of its line, the gaps after it)
  around `edits.prompts.fim_plans`' masks (from the diagnostic to the line's end, the whole line);
  other actions get `fim_plans`. All plans of an action show one window of whole lines
  (`fim_window`: `window_tokens` around the spans — the tiny model was trained on 1,024-token
  sequences), with the document's path and the context chunks the caller passes, so the engine's
  prefix cache serves the context completion computed, plans that end together share their
  suffix, and a plan's candidates share one prompt.
Candidates are tried in order — every plan (or the chat prompt) greedy first, then sampled ones
in turn — until one passes, `candidates` were asked for, or the deadline passed. Passing is
`edits.validate.validate_edit` inside the action's scope; a syntax fix must also fix its problem,
delete at most `max_deleted` characters of code and, in Python, leave no compile error inside the
scope. The first valid candidate becomes minimal `TextEdit`s (`edits.diff`); with none, the result
says why (the commonest rejection).

Offers `EditEngine` (what is needed of an engine), `EditRequest`, `GenerateOptions`, `Attempt`,
`EditResult`, `generate_edit`; the parts: `uses_chat`, `unsupported_reason`, `is_syntax_fix`,
`fix_plans`, `fim_window`, `windowed`, `fim_answer_candidate`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.rpc import EngineError

from ..context import estimate_tokens
from ..engine_client import EngineUnavailable
from .actions import Action
from .diff import TextEdit, minimal_edits
from .formats import EditFormatError
from .offsets import TextOffsets, to_lf
from .prompts import (
    FIM_OPERATIONS,
    FimPlan,
    chat_candidate,
    chat_messages,
    edit_grammar,
    fim_candidate,
    fim_plans,
)
from .syntax import diagnostic_problems, python_compile_problem, supports
from .validate import validate_edit

CHARS_PER_TOKEN = 3.5  # as `context.estimate_tokens`
MODES = ("auto", "chat", "fim")


class EditEngine(Protocol):
    """What generating an edit needs of an engine connection (`engine_client.EngineSession` is one)."""

    info: dict  # the handshake: "roles", "fim", ...

    async def complete(
        self, params: dict, chunks: Any = (), on_partial=None, text: str | None = None
    ) -> dict: ...

    async def request(self, method: str, params: Any = None, on_partial=None) -> Any: ...


@dataclass(frozen=True)
class EditRequest:
    text: str  # the document's text now
    language: str | None
    action: Action
    document: str  # a stable id of the document (its URI)
    path: str | None = None  # the path shown to the model (workspace-relative)
    instruction: str | None = None  # for the "instruction" operation
    chunks: Sequence[Any] = ()  # repository context chunks (`path`, `text`, `key`), as completion sends


@dataclass(frozen=True)
class GenerateOptions:
    mode: str = "auto"  # auto | chat | fim
    candidates: int = 8  # answers asked of the model at most
    temperature: float = 0.7  # of the sampled candidates (the first of each prompt is greedy)
    top_p: float = 0.95
    window_tokens: int = 1024  # FIM prompt around the span (prefix, suffix and the answer)
    deadline_ms: float = 4000.0
    max_deleted: int = 2  # code characters a syntax fix may delete
    chat_max_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {self.candidates}")
        if self.window_tokens < 64:
            raise ValueError(f"window_tokens must be at least 64, got {self.window_tokens}")


@dataclass(frozen=True)
class Attempt:
    """One answer of the model: what it wrote, whether it passed and why not, what it cost."""

    via: str  # "fim" | "chat"
    answer: str
    ok: bool
    reason: str
    ms: float
    cache: dict | None = None


@dataclass
class EditResult:
    action: Action
    new_text: str | None  # the document after the edit; None when no candidate passed
    edits: list[TextEdit]
    reason: str  # why there is no edit ("" when there is one)
    via: str  # "fim" | "chat" | "" (nothing asked)
    attempts: list[Attempt] = field(default_factory=list)
    timing: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.new_text is not None

    @property
    def candidates_tried(self) -> int:
        return len(self.attempts)


def uses_chat(info: dict, mode: str = "auto") -> bool:
    """Whether edits go to the chat model: asked for, or a chat model other than the completion
    model is configured, or the completion model cannot fill in the middle."""
    if mode != "auto":
        return mode == "chat"
    roles = info.get("roles") or {}
    if roles.get("chat") and roles.get("chat") != roles.get("completion"):
        return True
    return info.get("fim") is False


def unsupported_reason(action: Action, chat: bool) -> str:
    """Why `action` cannot be made on this set-up ("" when it can)."""
    if action.operation == "explain":
        return "explaining is a chat command, not an edit"
    if not chat and action.operation not in FIM_OPERATIONS:
        return (
            f"“{action.title}” needs an instruct (chat) model; the engine serves only a completion "
            "model (start it with --chat-model DIR or --chat-remote URL)"
        )
    return ""


def is_syntax_fix(text: str, language: str | None, action: Action, path: str = "<document>") -> bool:
    """Whether `action` fixes a syntax problem: a fix whose diagnostic's lines hold one."""
    if action.operation != "fix" or not supports(language):
        return False
    assert language is not None
    start, end = action.target
    first, last = text.count("\n", 0, start), text.count("\n", 0, max(start, end))
    for p in diagnostic_problems(text, language, path):
        if p.start_point[0] <= last and p.end_point[0] >= first:
            return True
    return False


def fim_window(text: str, plans: Sequence[FimPlan], window_tokens: int) -> tuple[int, int]:
    """(start, end): the whole lines of `text` the FIM prompts of `plans` show, about
    `window_tokens` (estimated) with the longest answer, two thirds of it before the spans. One
    window for all of an action's plans: their prompts share the suffix and the prefix's start,
    so the engine's cache serves each next plan from the previous one."""
    offsets = TextOffsets(text)
    room = max(64, window_tokens - max(int(p.request.get("max_tokens", 0)) for p in plans))
    first, last = min(p.start for p in plans), max(p.end for p in plans)
    before = min(first, int(room * 2 / 3 * CHARS_PER_TOKEN))
    after = int(room * CHARS_PER_TOKEN) - before
    lo = offsets.line_start(offsets.line_of(first - before)) if first - before > 0 else 0
    if lo < first - before:  # the first whole line inside the window
        lo = min(offsets.line_start(offsets.line_of(lo) + 1), offsets.line_start(offsets.line_of(first)))
    hi = min(len(text), last + after)
    if hi < len(text):
        hi = max(offsets.line_start(offsets.line_of(hi)), offsets.line_start(offsets.line_of(last) + 1))
    return lo, hi


def windowed(text: str, plan: FimPlan, window: tuple[int, int]) -> dict:
    """The plan's request showing only `window` (from `fim_window`) of the text."""
    lo, hi = window
    request = plan.request
    cut = len(to_lf(text[:lo]))
    keep = len(request["suffix"]) - len(to_lf(text[hi:]))
    return dict(request, prefix=request["prefix"][cut:], suffix=request["suffix"][:keep])


def _insertion(text: str, at: int, max_tokens: int = 16) -> FimPlan:
    request = {
        "prefix": to_lf(text[:at]),
        "suffix": to_lf(text[at:]),
        "stop": ["\n"],
        "max_tokens": max_tokens,
    }
    return FimPlan(request, at, at, "", "", "code")


def _gaps(text: str, start: int, end: int) -> list[int]:
    """Where a missing `,` or operator may go for a diagnostic at [start, end) on one line: the
    first gap between two tokens inside it, then the gap right before it."""
    line_start = text.rfind("\n", 0, start) + 1
    if "\n" in text[start:end]:
        return []
    gaps = []
    inside = re.search(r"\S(\s+)\S", text[start:end])
    if inside is not None:
        gaps.append(start + inside.start(1))
    before = re.search(r"\S(\s+)$", text[line_start:start])
    if before is not None:
        gaps.append(line_start + before.start(1))
    return gaps


def _late_gaps(text: str, start: int, line_end: int) -> list[int]:
    """Later places on the diagnostic's line where something may be missing (an unterminated
    string's quote): the first gap between tokens after the diagnostic, and the place before the
    line's closing brackets and punctuation."""
    out = []
    after = re.search(r"\S(\s+)\S", text[start:line_end])
    if after is not None:
        out.append(start + after.start(1))
    code = text[start:line_end].rstrip()
    closers = re.search(r"[)\]},;:]+$", code)
    if closers is not None and closers.start() > 0:
        out.append(start + closers.start())
    return out


def fix_plans(text: str, language: str | None, action: Action) -> list[FimPlan]:
    """The FIM plans of a syntax fix, in the order to try them: insertions in the gaps between
    tokens in or right before the diagnostic (a missing `,` or operator), an insertion at the end
    of its line (a missing `:`, `)` or `]`), `prompts.fim_plans`' masks (from the diagnostic to the
    line's end, the whole line — these and the line-end insertion share the suffix, so the
    engine's cache serves each next one), then insertions later on the line (the first gap after
    the diagnostic, before the line's closing brackets: an unterminated string's quote). A plan
    with the span of an earlier one is dropped. (These belong with `prompts.fim_plans`; they are
    here until its owner takes them.)"""
    offsets = TextOffsets(text)
    start, end = action.target
    line = offsets.line_of(start)
    line_end = offsets.line_start(line + 1)
    while line_end > offsets.line_start(line) and text[line_end - 1] in "\r\n":
        line_end -= 1
    plans = [_insertion(text, at) for at in _gaps(text, start, end)]
    if text[offsets.line_start(line) : line_end].strip():
        plans.append(_insertion(text, line_end))
    plans += fim_plans(text, language, action)
    plans += [_insertion(text, at) for at in _late_gaps(text, start, line_end)]
    seen: set[tuple[int, int]] = set()
    unique = []
    for plan in plans:
        if (plan.start, plan.end) not in seen:
            seen.add((plan.start, plan.end))
            unique.append(plan)
    return unique


def fim_answer_candidate(text: str, plan: FimPlan, answer: str, max_deleted: int) -> str:
    """The document with a FIM answer in place, as `prompts.fim_candidate`, with three differences
    for code: an answer that repeats the indentation the prefix already ends with loses it; an
    insertion that goes on to repeat the rest of its line loses the repeat; and an empty answer
    for a span of at most `max_deleted` code characters deletes the span (a stray token's fix),
    where `fim_candidate` keeps the text."""
    if plan.style != "code":
        return fim_candidate(text, plan, answer)
    line_start = TextOffsets(text).line_start(TextOffsets(text).line_of(plan.start))
    indent = text[line_start : plan.start]
    if indent and not indent.strip() and answer.startswith(indent):
        answer = answer[len(indent) :]
    if plan.start == plan.end:  # an insertion that went on to write the rest of the line again
        rest = to_lf(text[plan.end :]).split("\n", 1)[0].strip()
        first = answer.split("\n", 1)[0].rstrip()
        if rest and len(first) > len(rest) and first.endswith(rest):
            answer = first[: len(first) - len(rest)].rstrip()
    new_text = fim_candidate(text, plan, answer)
    masked = text[plan.start : plan.end]
    cut = min((answer.find(s) for s in plan.request["stop"] if s and s in answer), default=len(answer))
    if (
        new_text == text
        and masked.strip()
        and not answer[:cut].strip()
        and len("".join(masked.split())) <= max_deleted
    ):
        return text[: plan.start] + text[plan.end :]
    return new_text


@dataclass(frozen=True)
class _Check:
    """How candidates of a request are judged."""

    validate: dict  # `validate_edit`'s options
    syntax_fix: bool
    max_deleted: int


def _check(req: EditRequest, options: GenerateOptions) -> _Check:
    """A syntax fix must fix and may barely delete; a fix of another diagnostic stays a small edit."""
    if req.action.operation != "fix":
        return _Check({}, False, 0)
    if is_syntax_fix(req.text, req.language, req.action, req.path or "<document>"):
        return _Check({"must_fix": True, "max_deleted": options.max_deleted}, True, options.max_deleted)
    return _Check({"min_similarity": 0.5}, False, 0)


def _still_broken(req: EditRequest, new_text: str) -> str:
    """Why a Python syntax fix that `validate_edit` let through is not one ("" when it is): the
    file must compile, or fail only after the region the fix could change. (The validator takes
    fewer tree-sitter problems as a fix, and tree-sitter does not see indentation errors.)"""
    problem = python_compile_problem(new_text, req.path or "<document>")
    if problem is None:
        return ""
    scope_end = req.action.scope.end + len(new_text) - len(req.text)
    if problem.start >= scope_end:
        return ""
    return f"the edited code still does not compile: {problem.describe()}"


def _schedule(n_prompts: int, candidates: int) -> list[tuple[int, bool]]:
    """(prompt index, sampled) in the order to ask: every prompt greedy, then sampled in turn."""
    order = [(i, False) for i in range(n_prompts)]
    while len(order) < candidates:
        order += [(i, True) for i in range(n_prompts)]
    return order[:candidates]


def _summary(attempts: list[Attempt]) -> str:
    reasons = Counter(a.reason for a in attempts if not a.ok)
    if not reasons:
        return "the model gave no answer"
    (reason, count), *rest = reasons.most_common()
    others = sum(c for _, c in rest)
    tail = f" ({count} of {len(attempts)}; {others} for other reasons)" if others else ""
    return f"no safe edit in {len(attempts)} candidate{'s' * (len(attempts) != 1)}: {reason}{tail}"


class _Clock:
    def __init__(self, deadline_ms: float) -> None:
        self.t0 = time.monotonic()
        self.deadline_ms = deadline_ms

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.t0) * 1e3

    def left_ms(self) -> float:
        return self.deadline_ms - self.elapsed_ms()

    def timing(self, model_ms: float, validate_ms: float, first_ms: float | None) -> dict:
        return {"total_ms": round(self.elapsed_ms(), 3), "model_ms": round(model_ms, 3),
                "validate_ms": round(validate_ms, 3),
                "first_answer_ms": None if first_ms is None else round(first_ms, 3)}  # fmt: skip


@dataclass(frozen=True)
class _Prompt:
    """One way of asking: a chat request, or a FIM plan with its windowed request."""

    request: dict
    plan: FimPlan | None = None


def _prompts(req: EditRequest, options: GenerateOptions, chat: bool, check: _Check) -> list[_Prompt]:
    action = req.action
    if chat:
        messages = chat_messages(req.text, req.language, action, path=req.path, instruction=req.instruction)
        scope_tokens = estimate_tokens(req.text[action.scope.start : action.scope.end])
        max_tokens = min(options.chat_max_tokens, 2 * scope_tokens + 96)
        return [
            _Prompt(
                {"messages": messages, "grammar": edit_grammar(req.text, action), "max_tokens": max_tokens}
            )
        ]
    plans = (
        fix_plans(req.text, req.language, action)
        if check.syntax_fix
        else fim_plans(req.text, req.language, action)
    )
    if not plans:
        return []
    window = fim_window(req.text, plans, options.window_tokens)
    # The engine's document id is the document's plus the action's: an edit neither supersedes
    # nor is superseded by the document's completions and leaves their cached tip alone; the
    # shared context comes from the cache all the same.
    key = f"{req.document}#edit:{action.operation}:{action.target[0]}"
    out = []
    for plan in plans:
        request = windowed(req.text, plan, window)
        out.append(_Prompt({"prefix": request["prefix"], "suffix": request["suffix"], "path": req.path,
                            "document": key, "max_tokens": request["max_tokens"], "stop": request["stop"],
                            "typed_ahead": False}, plan))  # fmt: skip
    return out


async def generate_edit(
    engine: EditEngine,
    req: EditRequest,
    options: GenerateOptions | None = None,
    on_attempt=None,
) -> EditResult:
    """The first valid edit for `req.action` among the engine's candidates (see the module
    docstring); `on_attempt(attempt, n, total)` is called after each answer (for progress)."""
    options = options or GenerateOptions()
    clock = _Clock(options.deadline_ms)
    chat = uses_chat(engine.info, options.mode)
    action = req.action
    why = unsupported_reason(action, chat)
    if why:
        return EditResult(action, None, [], why, "", timing=clock.timing(0.0, 0.0, None))
    check = _check(req, options)
    via = "chat" if chat else "fim"
    prompts = _prompts(req, options, chat, check)
    if not prompts:
        why = f"the completion model cannot do “{action.title}” here"
        return EditResult(action, None, [], why, via, timing=clock.timing(0.0, 0.0, None))
    attempts: list[Attempt] = []
    seen: dict[tuple[int, str], tuple[Attempt, str | None]] = {}
    failure = ""
    model_ms = validate_ms = 0.0
    first_ms: float | None = None
    order = _schedule(len(prompts), options.candidates)
    for n, (index, sampled) in enumerate(order, 1):
        left = clock.left_ms()
        if left <= 0:
            break
        prompt = prompts[index]
        params = dict(prompt.request, temperature=options.temperature if sampled else 0.0, top_p=options.top_p,
                      deadline_ms=round(left, 3), stream=False)  # fmt: skip
        t = time.monotonic()
        try:
            result = await (engine.request("chat", params) if chat else engine.complete(params, req.chunks))
        except (EngineError, EngineUnavailable) as e:
            failure = f"the engine failed: {getattr(e, 'message', e)}"
            break
        ms = (time.monotonic() - t) * 1e3
        model_ms += ms
        first_ms = first_ms if first_ms is not None else clock.elapsed_ms()
        answer = result.get("text", "") if isinstance(result, dict) else ""
        cache = result.get("cache") if isinstance(result, dict) else None
        t = time.monotonic()
        if (index, answer) in seen:  # an answer given before to this prompt: the same verdict
            attempt, new_text = seen[index, answer]
            attempt = dataclasses.replace(attempt, ms=ms, cache=cache)
        else:
            new_text, reason = _judge(req, prompt, answer, check)
            attempt = Attempt(via, answer, new_text is not None, reason, ms, cache)
            seen[index, answer] = (attempt, new_text)
        validate_ms += (time.monotonic() - t) * 1e3
        attempts.append(attempt)
        if on_attempt is not None:
            on_attempt(attempt, n, len(order))
        if new_text is not None:
            edits = minimal_edits(req.text, new_text)
            return EditResult(
                action, new_text, edits, "", via, attempts, clock.timing(model_ms, validate_ms, first_ms)
            )
    if failure:
        reason = f"{_summary(attempts)}; then {failure}" if attempts else failure
    elif not attempts:
        reason = f"no answer within {options.deadline_ms / 1e3:g} s"
    else:
        reason = _summary(attempts)
        if len(attempts) < len(order):
            reason += f"; out of time after {options.deadline_ms / 1e3:g} s"
    return EditResult(action, None, [], reason, via, attempts, clock.timing(model_ms, validate_ms, first_ms))


def _judge(req: EditRequest, prompt: _Prompt, answer: str, check: _Check) -> tuple[str | None, str]:
    """(the new text when the answer passes, else None; why not)."""
    try:
        if prompt.plan is None:
            new_text = chat_candidate(req.text, req.action, answer)
        else:
            new_text = fim_answer_candidate(req.text, prompt.plan, answer, check.max_deleted)
    except EditFormatError as e:
        return None, f"the answer is not a usable edit: {e}"
    verdict = validate_edit(req.text, new_text, req.language, req.action.scope.span,
                            path=req.path or "<document>", **check.validate)  # fmt: skip
    if not verdict.ok:
        return None, verdict.reason
    if check.syntax_fix and _is_python(req):
        broken = _still_broken(req, new_text)
        if broken:
            return None, broken
    return new_text, ""


def _is_python(req: EditRequest) -> bool:
    return (req.language or "").lower() == "python" or (req.path or "").endswith((".py", ".pyi"))
