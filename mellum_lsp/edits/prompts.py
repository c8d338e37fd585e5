"""What the model is asked for an action, and how its answer becomes a candidate text.

Two ways, one per kind of model:
- an instruct model gets chat messages: a system prompt asking for search/replace blocks over the
  scope only, the file around the scope, the scope itself, and the task (the diagnostic, the
  refactoring or the user's instruction). The file comes before the task so that consecutive
  requests on one file share a prompt prefix (and the engine's KV cache).
- a Base (fill-in-the-middle) model gets a prefix and a suffix with the span to re-generate masked:
  for a fix, the rest of the line from the diagnostic on, then the whole broken line(s) (the
  statement around the diagnostic and the lines of any syntax problem there, at most
  `MAX_MASK_LINES`); for a doc, the
  docstring or doc comment opened for it; for type hints, the rest of the signature after the
  first unannotated parameter's `: `.

Offers:
- `chat_messages(text, language, action, *, path=None, instruction=None)`: [{"role", "content"}, ...].
- `edit_grammar(text, action)`: the Lark grammar of the answer (SEARCH runs of the scope's lines).
- `chat_candidate(text, action, answer)`: the document after the answer's blocks (or, failing
  those, its fenced code block replacing the scope); raises `EditFormatError`.
- `FimPlan` / `fim_plans(text, language, action)`: the requests {"prefix", "suffix", "stop",
  "max_tokens"}, best first, and how to put each answer back; [] for actions a Base model cannot
  do (simplify, extract function, instruction, explain; type hints on a multi-line signature).
  `fim_plan(...)`: the first of them, or None.
- `fim_candidate(text, plan, answer)`: the document with the answer in place.

Model texts use "\\n" line ends; candidates use the document's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..context.languages import LanguageRegistry, normalize_language
from .actions import Action
from .formats import (
    EditFormatError,
    apply_search_replace,
    extract_code_block,
    parse_search_replace,
    replace_region,
    search_replace_grammar,
)
from .offsets import TextOffsets, crlf, to_lf
from .structure import DefinitionAt, Parsed, definitions_at, doc_slot, hint_slot, statement_at
from .syntax import syntax_problems

MAX_MASK_LINES = 6
CONTEXT_LINES = 30
_CONTEXT_CHARS = 6000
FIM_OPERATIONS = frozenset({"fix", "docstring", "type_hints"})

_EDIT_SYSTEM = """You are Mellum, a careful {language} programmer working in the user's editor.
You change code by answering with search/replace blocks only, in exactly this format:

<<<<<<< SEARCH
lines copied exactly from the code to edit
=======
the lines that replace them
>>>>>>> REPLACE

Rules:
- Change only the code to edit; the context around it is there for reference.
- Copy the SEARCH lines exactly, indentation included, with enough lines to be unique.
- Keep blocks small; use several blocks for separate changes.
- The result must be valid {language} and keep the code's style.
- Write nothing outside the blocks."""

_EXPLAIN_SYSTEM = """You are Mellum, a {language} programmer explaining code in the user's editor.
Explain what the code does, how, and anything surprising in it, briefly and in Markdown."""


# --- chat ---------------------------------------------------------------------------------------------


def _fence(language: str | None) -> str:
    return normalize_language(language) or (language or "")


def _context(text: str, start: int, end: int) -> tuple[str, str, int, int]:
    """(before, after, first line, last line) around text[start:end], 1-based lines."""
    o = TextOffsets(text)
    first, last = o.line_of(start), o.line_of(max(start, end - 1))
    before_start = o.line_start(max(0, first - CONTEXT_LINES))
    after_end = o.line_start(min(o.line_count, last + 1 + CONTEXT_LINES))
    before = text[max(before_start, start - _CONTEXT_CHARS) : start]
    after = text[end : min(after_end, end + _CONTEXT_CHARS)]
    return to_lf(before), to_lf(after), first + 1, last + 1


def _task(text: str, language: str | None, action: Action, instruction: str | None) -> str:
    name = f"`{action.scope.name}`" if action.scope.name else "the code to edit"
    op = action.operation
    if op == "fix":
        d = action.diagnostic
        message = d.message if d is not None else "the problem"
        line = TextOffsets(text).line_of(action.target[0]) + 1
        return f"Fix this problem reported on line {line}: {message}\nMake the smallest change that fixes it."
    if op == "docstring":
        if normalize_language(language) == "python":
            return f"Add a docstring to {name}: what it does, its parameters and what it returns. Change nothing else."
        return f"Add a documentation comment above {name} in the usual style for {language}. Change nothing else."
    if op == "type_hints":
        return f"Add type annotations to the parameters and the return type of {name}. Do not change what the code does."
    if op == "simplify":
        return "Simplify the code to edit: make it shorter and clearer without changing what it does."
    if op == "extract_function":
        s, e = action.target
        first, last = TextOffsets(text).line_of(s) + 1, TextOffsets(text).line_of(max(s, e - 1)) + 1
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        return (
            f"Move the statements on {where} (below) into a new function with a descriptive name, "
            f"defined just before {name}, and replace them with a call to it. Pass what they use as "
            f"parameters and return what the code after them needs.\n{_fenced(text[s:e].strip(chr(10) + chr(13)), '')}"
        )
    if op == "instruction":
        if not instruction or not instruction.strip():
            raise ValueError("the 'instruction' action needs a non-empty instruction")
        return instruction.strip()
    if op == "explain":
        return "Explain the code to edit."
    raise ValueError(f"unknown action operation {op!r}")


def chat_messages(
    text: str,
    language: str | None,
    action: Action,
    *,
    path: str | None = None,
    instruction: str | None = None,
) -> list[dict[str, str]]:
    """The chat request for `action` (see the module docstring)."""
    lang = normalize_language(language) or language or "code"
    start, end = action.scope.span
    before, after, first, last = _context(text, start, end)
    fence = _fence(language)
    code = to_lf(text[start:end])
    where = f"line {first}" if first == last else f"lines {first}-{last}"
    parts = [f"File: {path or 'untitled'} ({lang})"]
    if before.strip():
        parts.append(f"Context before the code to edit:\n{_fenced(before, fence)}")
    parts.append(f"Code to edit ({where}):\n{_fenced(code, fence)}")
    if after.strip():
        parts.append(f"Context after the code to edit:\n{_fenced(after, fence)}")
    parts.append("Task: " + _task(text, language, action, instruction or action.instruction))
    system = (_EXPLAIN_SYSTEM if action.operation == "explain" else _EDIT_SYSTEM).format(language=lang)
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def _fenced(code: str, language: str) -> str:
    """`code` ("\\n" line ends) in a Markdown fence longer than any run of backticks in it."""
    code = to_lf(code)
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{code if code.endswith(chr(10)) else code + chr(10)}{fence}"


def edit_grammar(text: str, action: Action) -> str:
    """The grammar a constrained answer to `action` follows."""
    return search_replace_grammar(to_lf(text[action.scope.start : action.scope.end]))


def chat_candidate(text: str, action: Action, answer: str) -> str:
    """The document after a chat answer: its search/replace blocks applied inside the scope, or,
    when it has none, its fenced code block replacing the scope."""
    try:
        blocks = parse_search_replace(answer)
    except EditFormatError as no_blocks:
        if "<<<<<<<" in answer:
            raise
        try:
            code = extract_code_block(answer)
        except EditFormatError:
            raise no_blocks from None
        return replace_region(text, action.scope.span, code)
    return apply_search_replace(text, blocks, action.scope.span)


# --- fill in the middle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FimPlan:
    """A FIM request and how its answer goes back: text[:start] + lead + answer + tail + text[end:]."""

    request: dict
    start: int
    end: int
    lead: str
    tail: str
    style: str  # "code" (a masked span), "docstring", "block" (/** */), "line" (// or ///), "hint"
    indent: str = ""
    stop_at: str | None = None  # the answer ends at this line (the suffix's next line), for "code"


def fim_plans(
    text: str,
    language: str | None,
    action: Action,
    *,
    max_tokens: int | None = None,
    registry: LanguageRegistry | None = None,
) -> list[FimPlan]:
    """The FIM requests for `action`, best first; [] when a Base model cannot do it. A fix gets
    two masks: from the diagnostic to the end of its line (the start of the line stays in the
    prefix), then the whole broken line(s) (their indentation stays in the prefix)."""
    if action.operation not in FIM_OPERATIONS:
        return []
    parsed = Parsed.of(text, language, registry) if normalize_language(language) else None
    if action.operation == "fix":
        return _fix_plans(text, parsed, action, max_tokens)
    if parsed is None:
        return []
    defs = definitions_at(parsed, *action.scope.span, registry)
    definition = next((d for d in reversed(defs) if d.span == action.scope.span), None)
    if definition is None:
        return []
    if action.operation == "docstring":
        plan = _doc_plan(text, parsed, definition, max_tokens)
    else:
        plan = _hint_plan(text, parsed, definition, max_tokens)
    return [plan] if plan is not None else []


def fim_plan(
    text: str,
    language: str | None,
    action: Action,
    *,
    max_tokens: int | None = None,
    registry: LanguageRegistry | None = None,
) -> FimPlan | None:
    """The first of `fim_plans`, or None when a Base model cannot do the action."""
    plans = fim_plans(text, language, action, max_tokens=max_tokens, registry=registry)
    return plans[0] if plans else None


def _request(prefix: str, suffix: str, stop: list[str], max_tokens: int) -> dict:
    return {"prefix": to_lf(prefix), "suffix": to_lf(suffix), "stop": stop, "max_tokens": max_tokens}


def _mask_lines(text: str, parsed: Parsed | None, start: int, end: int) -> tuple[int, int]:
    """The whole-line span to re-generate for a diagnostic at [start, end)."""
    o = TextOffsets(text)
    first, last = o.line_of(start), o.line_of(max(start, end - 1))
    if parsed is not None:
        for p in syntax_problems(text, parsed.language):
            p_first, p_last = o.line_of(p.start), o.line_of(max(p.start, p.end - 1))
            if p_first <= last and p_last >= first:
                first, last = min(first, p_first), max(last, p_last)
        stmt = statement_at(parsed, start, simple=True)
        if stmt is not None:
            s_first, s_last = o.line_of(stmt[0]), o.line_of(max(stmt[0], stmt[1] - 1))
            if s_last - s_first < MAX_MASK_LINES:
                first, last = min(first, s_first), max(last, s_last)
    if last - first >= MAX_MASK_LINES:  # too much to re-generate: the diagnostic's own line(s)
        first, last = (
            o.line_of(start),
            min(o.line_of(max(start, end - 1)), o.line_of(start) + MAX_MASK_LINES - 1),
        )
    return first, last


def _line_end(text: str, offsets: TextOffsets, line: int) -> int:
    """The offset where `line`'s content ends (before its line break)."""
    end = offsets.line_start(line + 1)
    if end > 0 and text[end - 1] == "\n":
        end -= 1
    if end > 0 and text[end - 1] == "\r" and end > offsets.line_start(line):
        end -= 1
    return max(end, offsets.line_start(line))


def _fix_plans(text: str, parsed: Parsed | None, action: Action, max_tokens: int | None) -> list[FimPlan]:
    o = TextOffsets(text)
    first, last = _mask_lines(text, parsed, *action.target)
    at_line = min(max(o.line_of(action.target[0]), first), last)
    at_start, at_end = o.line_start(at_line), _line_end(text, o, at_line)
    at = min(max(action.target[0], at_start + len(_indent(text[at_start:at_end]))), at_end)
    start = o.line_start(first)
    start += len(_indent(text[start : _line_end(text, o, first)]))
    end = _line_end(text, o, last)
    spans = {(at, at_end): False, (start, end): first != last}  # from the diagnostic, then whole lines
    plans = []
    for (s, e), multiline in spans.items():
        masked = to_lf(text[s:e])
        budget = max_tokens or max(32, min(256, 2 * len(masked) // 3 + 16))
        next_line = next((ln for ln in to_lf(text[e:]).split("\n")[1:] if ln.strip()), None)
        if multiline:  # stop when the model writes the suffix's next line, and cut there anyway
            stop = ["\n" + next_line] if next_line else []
        else:
            stop = ["\n"]
        request = _request(text[:s], text[e:], stop, budget)
        stop_at = next_line.strip() if multiline and next_line else None
        plans.append(FimPlan(request, s, e, "", "", "code", stop_at=stop_at))
    return plans


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _doc_plan(text: str, parsed: Parsed, definition: DefinitionAt, max_tokens: int | None) -> FimPlan | None:
    slot = doc_slot(parsed, definition)
    if slot is None:
        return None
    at, ind = slot.at, slot.indent
    if slot.style == "docstring":
        lead, tail, stop = f'{ind}"""', '"""\n', ['"""']
    elif slot.style == "block":
        lead, tail, stop = f"{ind}/**\n{ind} * ", f"\n{ind} */\n", ["*/"]
    elif parsed.language == "go":
        lead, tail, stop = f"{ind}// {slot.name} " if slot.name else f"{ind}// ", "\n", ["\n"]
    else:
        lead, tail, stop = f"{ind}/// ", "\n", ["\n"]
    request = _request(text[:at] + lead, tail + text[at:], stop, max_tokens or 96)
    return FimPlan(request, at, at, lead, tail, slot.style, indent=ind)


def _hint_plan(text: str, parsed: Parsed, definition: DefinitionAt, max_tokens: int | None) -> FimPlan | None:
    slot = hint_slot(parsed, definition)
    if slot is None or not slot.one_line:
        return None
    lead = " -> " if slot.returns and parsed.language == "python" else ": "
    request = _request(text[: slot.after] + lead, text[slot.signature_end :], ["\n"], max_tokens or 48)
    return FimPlan(request, slot.after, slot.signature_end, lead, "", "hint")


def _clean(plan: FimPlan, answer: str) -> str:
    answer = to_lf(answer)
    for stop in plan.request["stop"]:
        if stop and stop in answer:
            answer = answer[: answer.index(stop)]
    if plan.style == "code":
        if plan.stop_at:  # the model went on past the masked span into the suffix
            lines = answer.split("\n")
            cut = next((i for i, ln in enumerate(lines) if i > 0 and ln.strip() == plan.stop_at), None)
            if cut is not None:
                answer = "\n".join(lines[:cut])
        return answer.rstrip("\n")
    if plan.style == "hint":
        return answer.rstrip()
    answer = answer.rstrip()
    if plan.style == "docstring" and "\n" in answer:
        answer += "\n" + plan.indent
    if plan.style == "block":
        answer = answer.rstrip("*").rstrip()
    return answer


def fim_candidate(text: str, plan: FimPlan, answer: str) -> str:
    """The document with the FIM answer in place; the original text (which validation rejects as a
    no-op) when the answer is empty."""
    middle = _clean(plan, answer)
    if not middle.strip() and (plan.style != "code" or text[plan.start : plan.end].strip()):
        return text  # an empty answer: no doc, no hint, and a fix does not delete the broken code
    inserted = plan.lead + middle + plan.tail
    if crlf(text):
        inserted = inserted.replace("\n", "\r\n")
    return text[: plan.start] + inserted + text[plan.end :]
