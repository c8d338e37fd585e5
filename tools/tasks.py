"""Task samples for multi-task training and evaluation of the embedded model, made from the corpus.

    python tools/tasks.py --corpus M [M ...] --out /work/data/tasks [--train-per-kind 3000] [--heldout-per-kind 500]

Every sample is built with the product's own prompt code, so the model learns exactly what it will
be asked: code actions' chat messages and FIM requests (``mellum_lsp.edits``), the context builder
and the engine's FIM layout for repository context, the agent's system prompt, tools and tool
results (``mellum_lsp.agent``). Each sample is checked: applying its answer the way the product
applies it gives the expected file.

Kinds (Python only):
- ``fim_cross``: fill-in-the-middle where the middle (the rest of a line) starts with a name defined
  in another file of the same package, and that file is in the prompt's context as
  ``build_context`` selects it for the product (``context`` holds the chunks);
- ``repair_chat`` / ``repair_fim``: a synthetic breakage (``BREAKAGES``: missing colon,
  unbalanced bracket, missing comma, wrong indentation, misspelled local name, missing import)
  fixed through the quick fix's chat messages (a search/replace answer) or its FIM request;
- ``docstring_chat`` / ``docstring_fim``: a docstring stripped and restored;
- ``rename_chat``: a local renamed back to its real name ("Edit with instruction");
- ``chat_explain`` / ``chat_write``: short chat turns (what a function does; write a function);
- ``agent_repair``: an agent transcript read_file -> propose_edit (block format) -> finish.

A sample is a JSON object with ``kind``, ``source`` (the corpus file) and either FIM fields
(``path``, ``prefix``, ``suffix``, ``middle``, ``context``: [[path, text], ...]) or chat fields
(``messages`` in OpenAI shape, ``tools``); the assistant turns are the targets. Repair samples
also carry ``original``, ``broken``, ``diagnostic`` and ``breakage`` for evaluation.

Offers ``BREAKAGES``, ``Breakage``, ``break_code``, ``search_replace_answer``, ``repair_samples``,
``docstring_samples``, ``rename_samples``, ``chat_samples``, ``agent_transcript``, ``PackageIndexes``,
``cross_file_samples``, ``generate``, ``write_jsonl``, ``read_jsonl``.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import keyword
import re
import sys
import tempfile
import tokenize
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpus import Document, load_documents  # noqa: E402

from mellum_lsp.agent.chat import CHAT_SYSTEM  # noqa: E402
from mellum_lsp.agent.loop import AGENT_SYSTEM  # noqa: E402
from mellum_lsp.agent.paths import WorkspaceFiles  # noqa: E402
from mellum_lsp.agent.tools import Toolbox, ToolError, tool_specs  # noqa: E402
from mellum_lsp.context import RepoIndex, build_context  # noqa: E402
from mellum_lsp.context.budget import fit_file  # noqa: E402
from mellum_lsp.edits import (  # noqa: E402
    Action,
    Diagnostic,
    EditFormatError,
    chat_candidate,
    chat_messages,
    fim_candidate,
    fim_plans,
    list_actions,
)
from mellum_lsp.edits.syntax import diagnostic_problems  # noqa: E402
from mellum_lsp.features.pipeline import context_budget  # noqa: E402

BREAKAGES = (
    "missing_colon",
    "unbalanced_bracket",
    "missing_comma",
    "wrong_indentation",
    "misspelled_local",
    "missing_import",
)
SYNTAX_BREAKAGES = frozenset(BREAKAGES[:4])
KINDS = ("fim_cross", "repair_chat", "repair_fim", "docstring_chat", "docstring_fim", "rename_chat",
         "chat_explain", "chat_write", "agent_repair")  # fmt: skip
AGENT_READ_AROUND = 25  # lines read on each side of the line a task names
MAX_SAMPLE_CHARS = 4200  # about 1,200 tokens: a sample fits a 1,536-token training sequence
PROMPT_TOKENS = 1024  # the FIM prompt length of fim_cross samples (the model's trained length)
COMPLETION_TOKENS = 64
_HEADER = re.compile(
    r"^(\s*)(async\s+def|def|class|if|elif|else|for|while|with|try|except|finally)\b[^#'\"]*:\s*$"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDERS = ("tmp", "val", "x1", "v", "var1", "item2", "data0", "res", "obj1", "thing")
TASK_PHRASES = (
    "Fix the syntax error in {path}.",
    "{path} does not run: {message}. Fix it.",
    "Fix the problem reported on line {line} of {path}: {message}",
    "Please repair {path}; Python reports: {message}",
)


# --- breakages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Breakage:
    """A broken copy of a file: what was done, where the problem shows and its message."""

    kind: str
    broken: str
    start: int  # the diagnostic's span in `broken` (character offsets)
    end: int
    message: str


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _offset(lines: list[str], line: int, col: int = 0) -> int:
    return sum(len(x) for x in lines[:line]) + col


def _plain(line: str) -> bool:
    """A line without strings or comments (its brackets and commas are code)."""
    return not any(q in line for q in "\"'#") and line.isascii()


def _compiles(text: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # broken code makes compile() warn about odd literals
            compile(text, "<task>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def _syntax_breakage(kind: str, original: str, broken: str, path: str) -> Breakage | None:
    """The breakage with the diagnostic the product would publish for it (None: not broken)."""
    if broken == original or _compiles(broken):
        return None
    problems = diagnostic_problems(broken, "python", path)
    if not problems:
        return None
    p = problems[0]
    return Breakage(kind, broken, p.start, max(p.end, p.start + 1), p.message)


def _break_missing_colon(text: str, rng: np.random.Generator, path: str) -> Breakage | None:
    lines = _lines(text)
    picks = [i for i, x in enumerate(lines) if _HEADER.match(x.rstrip("\n")) and x.rstrip().endswith(":")]
    if not picks:
        return None
    i = picks[int(rng.integers(len(picks)))]
    line = lines[i].rstrip("\n")
    cut = line.rstrip()
    lines[i] = cut[:-1] + line[len(cut) :] + lines[i][len(line) :]
    return _syntax_breakage("missing_colon", text, "".join(lines), path)


def _break_bracket(text: str, rng: np.random.Generator, path: str) -> Breakage | None:
    lines = _lines(text)
    picks = [i for i, x in enumerate(lines) if _plain(x) and re.search(r"[()\[\]{}]", x)]
    if not picks:
        return None
    i = picks[int(rng.integers(len(picks)))]
    brackets = [m.start() for m in re.finditer(r"[()\[\]{}]", lines[i])]
    j = brackets[int(rng.integers(len(brackets)))]
    lines[i] = lines[i][:j] + lines[i][j + 1 :]
    return _syntax_breakage("unbalanced_bracket", text, "".join(lines), path)


def _break_comma(text: str, rng: np.random.Generator, path: str) -> Breakage | None:
    lines = _lines(text)
    picks = [i for i, x in enumerate(lines) if _plain(x) and re.search(r"[(\[{][^\n]*, ", x)]
    if not picks:
        return None
    i = picks[int(rng.integers(len(picks)))]
    commas = [m.start() for m in re.finditer(", ", lines[i])]
    j = commas[int(rng.integers(len(commas)))]
    lines[i] = lines[i][:j] + lines[i][j + 1 :]
    return _syntax_breakage("missing_comma", text, "".join(lines), path)


def _break_indentation(text: str, rng: np.random.Generator, path: str) -> Breakage | None:
    lines = _lines(text)
    picks = []
    for i in range(1, len(lines)):
        cur, prev = lines[i], lines[i - 1]
        if not cur.strip() or not prev.strip() or not cur.isascii() or cur.lstrip().startswith("#"):
            continue
        if prev.rstrip().endswith(":"):
            picks.append((i, "dedent"))  # the first line of a block back at its header's level
        elif len(cur) - len(cur.lstrip()) == len(prev) - len(prev.lstrip()) and not prev.rstrip().endswith(
            ("(", "[", "{", ",", "\\")
        ):
            picks.append((i, "indent"))  # a statement indented one level more than its neighbour
    if not picks:
        return None
    i, how = picks[int(rng.integers(len(picks)))]
    indent = len(lines[i]) - len(lines[i].lstrip())
    if how == "indent":
        lines[i] = "    " + lines[i]
    else:
        header = len(lines[i - 1]) - len(lines[i - 1].lstrip())
        if indent <= header:
            return None
        lines[i] = lines[i][indent - header :]
    return _syntax_breakage("wrong_indentation", text, "".join(lines), path)


def _misspell(name: str, rng: np.random.Generator) -> str:
    k = int(rng.integers(1, len(name)))
    how = int(rng.integers(3))
    if how == 0:
        return name[:k] + name[k + 1 :]  # a letter dropped
    if how == 1 and k < len(name) - 1:
        return name[:k] + name[k + 1] + name[k] + name[k + 2 :]  # two letters swapped
    return name[:k] + name[k] + name[k:]  # a letter doubled


def _break_local(text: str, rng: np.random.Generator, path: str) -> Breakage | None:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    known = set(_IDENT.findall(text)) | set(dir(__builtins__)) | set(keyword.kwlist)
    lines = _lines(text)
    picks = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        stores = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        for n in ast.walk(fn):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in stores and len(n.id) >= 4:
                if lines[n.lineno - 1].isascii():
                    picks.append(n)
    if not picks:
        return None
    n = picks[int(rng.integers(len(picks)))]
    typo = _misspell(n.id, rng)
    if typo in known or not typo.isidentifier() or keyword.iskeyword(typo):
        return None
    i, col = n.lineno - 1, n.col_offset
    lines[i] = lines[i][:col] + typo + lines[i][col + len(n.id) :]
    broken = "".join(lines)
    start = _offset(lines, i, col)
    return Breakage("misspelled_local", broken, start, start + len(typo), f"undefined name '{typo}'")


def _break_import(text: str, rng: np.random.Generator, path: str) -> Breakage | None:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    lines = _lines(text)
    picks = []
    for node in tree.body:  # top-level imports on one line, whose names the file uses
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno != node.end_lineno:
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        names = [(a.asname or a.name).split(".")[0] for a in node.names]
        if "*" in names:
            continue
        rest = "".join(lines[: node.lineno - 1] + lines[node.lineno :])
        used = [m for name in names for m in re.finditer(rf"(?<![\w.]){re.escape(name)}\b", rest)]
        if used and all(len(re.findall(rf"\bimport\b.*\b{re.escape(n)}\b", rest)) == 0 for n in names):
            picks.append((node, min(used, key=lambda m: m.start())))
    if not picks:
        return None
    node, first = picks[int(rng.integers(len(picks)))]
    del lines[node.lineno - 1]
    broken = "".join(lines)
    if not _compiles(broken):
        return None
    return Breakage("missing_import", broken, first.start(), first.end(), f"undefined name '{first.group()}'")


_BREAKERS: dict[str, Callable[[str, np.random.Generator, str], Breakage | None]] = {
    "missing_colon": _break_missing_colon,
    "unbalanced_bracket": _break_bracket,
    "missing_comma": _break_comma,
    "wrong_indentation": _break_indentation,
    "misspelled_local": _break_local,
    "missing_import": _break_import,
}


def break_code(text: str, kind: str, rng: np.random.Generator, path: str = "module.py") -> Breakage | None:
    """A breakage of ``kind`` (one of ``BREAKAGES``) in a file that compiles, or None."""
    if kind not in _BREAKERS:
        raise ValueError(f"unknown breakage {kind!r}; expected one of {BREAKAGES}")
    if not _compiles(text):
        return None
    return _BREAKERS[kind](text, rng, path)


# --- answers in the product's formats ---------------------------------------------------------


def _changed_lines(old: str, new: str) -> tuple[int, int, int, int]:
    """The differing run of lines: old[a:b] became new[a:c] (line indices), plus len(old lines)."""
    o, n = _lines(old), _lines(new)
    a = 0
    while a < min(len(o), len(n)) and o[a] == n[a]:
        a += 1
    bo, bn = len(o), len(n)
    while bo > a and bn > a and o[bo - 1] == n[bn - 1]:
        bo, bn = bo - 1, bn - 1
    return a, bo, bn, len(o)


def search_replace_answer(old: str, new: str, scope: tuple[int, int] | None = None) -> str | None:
    """One search/replace block that turns ``old`` into ``new``: the changed lines, widened by
    neighbouring lines until the SEARCH text is unique within ``scope`` (None: cannot be made unique)."""
    o, n = _lines(old), _lines(new)
    a, bo, bn, _ = _changed_lines(old, new)
    lo, hi = (0, len(old)) if scope is None else scope
    region = old[lo:hi]
    extra_before = extra_after = 0
    for _ in range(12):
        s0, s1 = a - extra_before, bo + extra_after
        search = "".join(o[s0:s1])
        if search.strip() and region.count(search) == 1:
            replace = "".join(n[s0 : bn + extra_after])
            if not search.endswith("\n") or (replace and not replace.endswith("\n")):
                return None
            return f"<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"
        if s0 > 0 and (extra_before <= extra_after or s1 >= len(o)):
            extra_before += 1
        elif s1 < len(o):
            extra_after += 1
        else:
            return None
    return None


def _quickfix(broken: str, b: Breakage) -> Action | None:
    diag = Diagnostic(b.start, b.end, b.message)
    actions = list_actions(broken, "python", (b.start, b.start), [diag], only=["quickfix"])
    return actions[0] if actions else None


def _fim_sample(text: str, target: str, plans, kind: str, path: str) -> dict | None:
    """The first plan whose answer turns ``text`` into ``target``, as a FIM sample (the middle is
    what the model writes before the end of text; a stop string would cut it, so none may occur)."""
    for plan in plans:
        prefix, suffix = plan.request["prefix"], plan.request["suffix"]
        if len(prefix) + len(suffix) > len(target) or not (
            target.startswith(prefix) and target.endswith(suffix)
        ):
            continue
        middle = target[len(prefix) : len(target) - len(suffix)]
        if any(s and s in middle for s in plan.request["stop"]):
            continue
        if fim_candidate(text, plan, middle) == target:
            return {
                "kind": kind,
                "path": path,
                "prefix": prefix,
                "suffix": suffix,
                "middle": middle,
                "context": [],
            }
    return None


def _small_enough(sample: dict) -> bool:
    if "messages" in sample:
        size = sum(
            len(m.get("content") or "") + len(json.dumps(m.get("tool_calls") or ""))
            for m in sample["messages"]
        )
        size += len(json.dumps(sample.get("tools") or [])) if sample["kind"] != "agent_repair" else 0
    else:
        size = len(sample["prefix"]) + len(sample["suffix"]) + len(sample["middle"])
        size += sum(len(p) + len(t) for p, t in sample.get("context", []))
    return size <= MAX_SAMPLE_CHARS


# --- repair ------------------------------------------------------------------------------------


def repair_samples(doc: Document, kind: str, rng: np.random.Generator) -> list[dict]:
    """The repair samples of one breakage of ``doc``: chat, FIM (when the product's FIM fix can
    express it) and an agent transcript; [] when the file offers no such breakage."""
    text = _windowed(doc.text, rng)
    b = break_code(text, kind, rng, doc.path)
    if b is None:
        return []
    common = {"source": doc.path, "breakage": kind, "original": text, "broken": b.broken,
              "diagnostic": {"start": b.start, "end": b.end, "message": b.message}}  # fmt: skip
    out = []
    action = _quickfix(b.broken, b)
    if action is not None and kind != "missing_import":  # an import is outside a fix's scope
        answer = search_replace_answer(b.broken, text, action.scope.span)
        if answer is not None and _applies(b.broken, action, answer, text):
            messages = chat_messages(b.broken, "python", action, path=doc.path)
            out.append(
                {
                    "kind": "repair_chat",
                    **common,
                    "messages": [*messages, {"role": "assistant", "content": answer}],
                }
            )
        fim = _fim_sample(b.broken, text, fim_plans(b.broken, "python", action), "repair_fim", doc.path)
        if fim is not None:
            out.append(fim | common)
    agent = agent_transcript(doc.path, text, b, rng)
    if agent is not None:
        out.append(agent | common)
    return [s for s in out if _small_enough(s)]


def _applies(broken: str, action: Action, answer: str, expected: str) -> bool:
    try:
        return chat_candidate(broken, action, answer) == expected
    except EditFormatError:
        return False


def _windowed(text: str, rng: np.random.Generator, max_lines: int = 120) -> str:
    """At most ``max_lines`` whole top-level statements of a long file (samples stay short); the
    imports stay at the top so that names resolve."""
    lines = _lines(text)
    if len(lines) <= max_lines:
        return text
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    head_end = 0
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        ):
            head_end = node.end_lineno
        else:
            break
    head = lines[:head_end]
    if len(head) > max_lines // 2:
        return text
    rest = [n for n in tree.body if n.lineno > head_end]
    if not rest:
        return text
    i = int(rng.integers(len(rest)))
    j = i
    while j + 1 < len(rest) and rest[j + 1].end_lineno - rest[i].lineno + 1 + len(head) <= max_lines:
        j += 1
    start = rest[i].lineno - 1
    while start > head_end and lines[start - 1].lstrip().startswith("@"):
        start -= 1
    body = lines[start : rest[j].end_lineno]
    out = "".join(head + ["\n\n"] + body) if head else "".join(body)
    return out if _compiles(out) else text


# --- agent transcripts -------------------------------------------------------------------------


def _read_file_result(path: str, text: str, args: dict | None = None) -> str | None:
    """What the agent's read_file tool answers for ``path`` holding ``text`` (the real tool); None
    when the agent may not read that path."""
    with tempfile.TemporaryDirectory() as root:
        target = Path(root) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        box = Toolbox(WorkspaceFiles([root]))
        try:
            return box.run("read_file", args or {"path": path}).text
        except ToolError:  # a path the agent may not read (`venv/...` is a tool folder to it)
            return None


def _call(name: str, args: dict) -> dict:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}]}  # fmt: skip


def agent_transcript(path: str, original: str, b: Breakage, rng: np.random.Generator) -> dict | None:
    """read_file -> propose_edit (the agent's "block" format) -> finish, for one breakage. When the
    task names the line and the file is long, the read asks for the lines around it."""
    answer = search_replace_answer(b.broken, original)
    line = b.broken.count("\n", 0, b.start) + 1
    phrase = TASK_PHRASES[int(rng.integers(len(TASK_PHRASES)))]
    task = phrase.format(path=path, line=line, message=b.message)
    read_args: dict = {"path": path}
    if "{line}" in phrase and b.broken.count("\n") > 2 * AGENT_READ_AROUND:
        read_args |= {"start_line": max(1, line - AGENT_READ_AROUND), "end_line": line + AGENT_READ_AROUND}
    read = _read_file_result(path, b.broken, read_args)
    if answer is None or read is None:
        return None
    search = answer.split("<<<<<<< SEARCH\n", 1)[1].split("=======\n", 1)[0]
    ask = (  # as mellum_lsp.agent.loop asks for the replacement of a "block" edit
        "Now write the new text of these lines as one search/replace block:\n"
        f"<<<<<<< SEARCH\n{search}=======\n(the new lines)\n>>>>>>> REPLACE"
    )
    what = b.kind.replace("_", " ")
    messages = [
        {"role": "system", "content": AGENT_SYSTEM},
        {"role": "user", "content": f"Task: {task}\n\nWorkspace files:\n{path}"},
        _call("read_file", read_args),
        {"role": "tool", "content": read},
        _call("propose_edit", {"path": path, "search": search}),
        {"role": "tool", "content": ask},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": f"The user applied the edit of {path}."},
        _call("finish", {"summary": f"Fixed the {what} on line {line} of {path}."}),
    ]
    return {"kind": "agent_repair", "source": path, "messages": messages, "tools": tool_specs("block")}


# --- docstrings, renames, chat -----------------------------------------------------------------


def _functions(text: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _docstring_node(fn) -> ast.Expr | None:
    first = fn.body[0] if fn.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first if len(fn.body) > 1 else None
    return None


def docstring_samples(doc: Document, rng: np.random.Generator) -> list[dict]:
    """A function's docstring stripped, then restored by the docstring action (chat and FIM)."""
    text = _windowed(doc.text, rng)
    lines = _lines(text)
    fns = [f for f in _functions(text) if _docstring_node(f) is not None and f.end_lineno - f.lineno < 40]
    fns = [f for f in fns if re.match(r'\s*[rRuU]?("""|\'\'\')', lines[_docstring_node(f).lineno - 1])]
    if not fns:
        return []
    fn = fns[int(rng.integers(len(fns)))]
    ds = _docstring_node(fn)
    stripped = "".join(lines[: ds.lineno - 1] + lines[ds.end_lineno :])
    if not _compiles(stripped):
        return []
    at = _offset(_lines(stripped), fn.lineno - 1)
    actions = [a for a in list_actions(stripped, "python", (at, at)) if a.operation == "docstring"]
    actions = [a for a in actions if a.title.startswith(f"Add docstring to `{fn.name}`")]
    if not actions:
        return []
    action = actions[0]
    out = []
    answer = search_replace_answer(stripped, text, action.scope.span)
    if answer is not None and _applies(stripped, action, answer, text):
        messages = chat_messages(stripped, "python", action, path=doc.path)
        out.append(
            {
                "kind": "docstring_chat",
                "source": doc.path,
                "messages": [*messages, {"role": "assistant", "content": answer}],
            }
        )
    fim = _fim_sample(stripped, text, fim_plans(stripped, "python", action), "docstring_fim", doc.path)
    if fim is not None:
        out.append(fim | {"source": doc.path})
    return [s for s in out if _small_enough(s)]


def _renamed(code: str, old: str, new: str) -> str | None:
    """``code`` with the variable ``old`` renamed (NAME tokens that are not attributes or keyword
    arguments); None when ``new`` already occurs or the code does not tokenize."""
    if re.search(rf"\b{re.escape(new)}\b", code):
        return None
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    lines = _lines(code)
    edits = []
    depth = 0
    for k, t in enumerate(tokens):
        if t.type == tokenize.OP and t.string in "([{":
            depth += 1
        elif t.type == tokenize.OP and t.string in ")]}":
            depth -= 1
        if t.type != tokenize.NAME or t.string != old:
            continue
        before = tokens[k - 1] if k else None
        after = tokens[k + 1] if k + 1 < len(tokens) else None
        if before is not None and before.string == ".":
            return None
        if depth and after is not None and after.string == "=":
            return None  # a keyword argument of the same name: not this variable
        edits.append(t.start)
    for row, col in sorted(edits, reverse=True):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + new + line[col + len(old) :]
    return "".join(lines)


def rename_samples(doc: Document, rng: np.random.Generator) -> list[dict]:
    """A local with a meaningless name (``tmp``) renamed to the name the file really uses."""
    text = _windowed(doc.text, rng)
    fns = [f for f in _functions(text) if f.end_lineno - f.lineno < 40 and f.col_offset == 0]
    rng.shuffle(fns)
    lines = _lines(text)
    for fn in fns[:4]:
        stores = sorted(
            {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        )
        stores = [s for s in stores if len(s) >= 4 and not s.startswith("_")]
        if not stores:
            continue
        real = stores[int(rng.integers(len(stores)))]
        fake = _PLACEHOLDERS[int(rng.integers(len(_PLACEHOLDERS)))]
        body = "".join(lines[fn.lineno - 1 : fn.end_lineno])
        renamed = _renamed(body, real, fake)
        if renamed is None or renamed == body:
            continue
        before = "".join(lines[: fn.lineno - 1]) + renamed + "".join(lines[fn.end_lineno :])
        if not _compiles(before):
            continue
        at = _offset(_lines(before), fn.lineno - 1)
        actions = [a for a in list_actions(before, "python", (at, at)) if a.operation == "instruction"]
        if not actions:
            continue
        action = actions[0]
        instruction = f"Rename the local variable `{fake}` to `{real}` in `{fn.name}`."
        answer = _blocks(before, text, action.scope.span)
        if answer is None or not _applies(before, action, answer, text):
            continue
        messages = chat_messages(before, "python", action, path=doc.path, instruction=instruction)
        sample = {
            "kind": "rename_chat",
            "source": doc.path,
            "messages": [*messages, {"role": "assistant", "content": answer}],
        }
        return [sample] if _small_enough(sample) else []
    return []


def _blocks(old: str, new: str, scope: tuple[int, int]) -> str | None:
    """Search/replace blocks for every changed line of ``old`` (one block per run of changes)."""
    o, n = _lines(old), _lines(new)
    if len(o) != len(n):
        return search_replace_answer(old, new, scope)
    out, i = [], 0
    current = old
    while i < len(o):
        if o[i] == n[i]:
            i += 1
            continue
        j = i
        while j < len(o) and o[j] != n[j]:
            j += 1
        step = "".join(n[:j] + _lines(current)[j:])
        block = search_replace_answer(current, step, (scope[0], scope[1] + len(step) - len(current)))
        if block is None:
            return None
        out.append(block)
        current, i = step, j
    return "\n".join(out) if out else None


def chat_samples(doc: Document, rng: np.random.Generator) -> list[dict]:
    """Two short chat turns about a documented function: what it does; write it."""
    fns = [f for f in _functions(doc.text) if _docstring_node(f) is not None and f.end_lineno - f.lineno < 30]
    if not fns:
        return []
    fn = fns[int(rng.integers(len(fns)))]
    lines = _lines(doc.text)
    ds = _docstring_node(fn)
    summary = " ".join(ast.get_docstring(fn).split("\n\n")[0].split())
    if not 20 <= len(summary) <= 400:
        return []
    code = "".join(lines[fn.lineno - 1 : fn.end_lineno])
    bare = "".join(lines[fn.lineno - 1 : ds.lineno - 1] + lines[ds.end_lineno : fn.end_lineno])
    indent = len(code) - len(code.lstrip())
    code = "".join(x[indent:] if x[:indent].isspace() else x for x in _lines(code))
    bare = "".join(x[indent:] if x[:indent].isspace() else x for x in _lines(bare))
    signature = bare.split("\n", 1)[0].strip().removeprefix("async ").removeprefix("def ").rstrip(":")
    system = {"role": "system", "content": CHAT_SYSTEM}
    explain = [system, {"role": "user", "content": f"In `{doc.path}`:\n```python\n{bare}```\nWhat does `{fn.name}` do?"},
               {"role": "assistant", "content": f"`{fn.name}`: {summary}"}]  # fmt: skip
    write = [system, {"role": "user", "content": f"Write a Python function `{signature}`: {summary}"},
             {"role": "assistant", "content": f"```python\n{code}```"}]  # fmt: skip
    out = [{"kind": "chat_explain", "source": doc.path, "messages": explain},
           {"kind": "chat_write", "source": doc.path, "messages": write}]  # fmt: skip
    return [s for s in out if _small_enough(s)]


# --- cross-file FIM ----------------------------------------------------------------------------


class PackageIndexes:
    """A `RepoIndex` per package, built from the documents in memory (virtual roots)."""

    def __init__(self, docs: Sequence[Document], keep: int = 256) -> None:
        self.by_package: dict[str, list[Document]] = {}
        for d in docs:
            if d.package:
                self.by_package.setdefault(d.package, []).append(d)
        self.keep = keep
        self._built: dict[str, RepoIndex] = {}

    @staticmethod
    def root(package: str) -> str:
        return f"/mellum-tasks/{package}"

    def get(self, package: str) -> RepoIndex:
        if package not in self._built:
            if len(self._built) >= self.keep:
                self._built.pop(next(iter(self._built)))
            index = RepoIndex(self.root(package))
            for d in self.by_package.get(package, []):
                index.update_file(f"{self.root(package)}/{d.path}", d.text)
            self._built[package] = index
        return self._built[package]


def _uses(doc: Document, index: RepoIndex) -> list[tuple[int, str, str]]:
    """(offset, name, defining path) of names used in ``doc`` that another file of its package defines."""
    out = []
    offset = 0
    own = {d.name for d in (index.get(doc.path).definitions if index.get(doc.path) else [])}
    for line in _lines(doc.text):
        code = line.split("#", 1)[0]
        stripped = code.lstrip()
        if stripped and not stripped.startswith(("def ", "class ", "import ", "from ", "@", '"', "'")):
            for m in _IDENT.finditer(code):
                name = m.group()
                if (
                    len(name) < 4
                    or name in own
                    or keyword.iskeyword(name)
                    or code[: m.start()].count('"') % 2
                ):
                    continue
                defs = [(p, d) for p, d in index.definitions_named(name) if p != doc.path]
                if 0 < len(defs) <= 2:
                    out.append((offset + m.start(), name, defs[0][0]))
        offset += len(line)
    return out


def cross_file_samples(
    doc: Document, indexes: PackageIndexes, rng: np.random.Generator, n: int = 1
) -> list[dict]:
    """FIM samples whose middle starts with a name another file of the package defines, with that
    definition in the context the product's builder selects (see the module docstring)."""
    if not doc.package or len(indexes.by_package.get(doc.package, ())) < 2:
        return []
    index = indexes.get(doc.package)
    uses = _uses(doc, index)
    rng.shuffle(uses)
    out = []
    for offset, name, defined_in in uses[: 6 * n]:
        text = doc.text
        eol = text.find("\n", offset)
        eol = len(text) if eol < 0 else eol
        middle = text[offset:eol]
        if len(middle.strip()) < 2:
            continue
        prefix, suffix = fit_file(text[:offset], text[eol:], PROMPT_TOKENS // 2)
        budget = context_budget(PROMPT_TOKENS, COMPLETION_TOKENS, prefix, suffix, 8192)
        chunks = build_context(index, f"{indexes.root(doc.package)}/{doc.path}", text, offset, budget)
        pattern = re.compile(
            rf"^\s*(async\s+def|def|class)\s+{re.escape(name)}\b|^\s*{re.escape(name)}\s*[:=]", re.M
        )
        if not any(c.path == defined_in and pattern.search(c.text) for c in chunks):
            continue
        out.append({"kind": "fim_cross", "source": doc.path, "path": doc.path, "prefix": prefix, "suffix": suffix,
                    "middle": middle, "name": name, "defined_in": defined_in,
                    "context": [[c.path, c.text] for c in chunks]})  # fmt: skip
        if len(out) >= n:
            break
    return out


# --- all of it ---------------------------------------------------------------------------------


def generate(
    docs: Sequence[Document], per_kind: int, seed: int, kinds: Sequence[str] = KINDS
) -> Iterator[dict]:
    """Up to ``per_kind`` samples of each kind from ``docs`` (Python files), deterministic for a seed.

    Documents are visited in a seeded order; each contributes at most a few samples per kind."""
    rng = np.random.default_rng(seed)
    docs = [d for d in docs if d.path.endswith(".py")]
    order = rng.permutation(len(docs))
    counts = dict.fromkeys(kinds, 0)
    indexes = PackageIndexes(docs)
    breakage_turn = 0
    for rounds in range(8):
        if all(c >= per_kind for c in counts.values()):
            break
        for i in order:
            if all(c >= per_kind for c in counts.values()):
                return
            doc = docs[int(i)]
            r = np.random.default_rng([seed, rounds, int(i)])
            produced: list[dict] = []
            if any(
                counts[k] < per_kind for k in ("repair_chat", "repair_fim", "agent_repair") if k in counts
            ):
                kind = BREAKAGES[breakage_turn % len(BREAKAGES)]
                breakage_turn += 1
                produced += repair_samples(doc, kind, r)
            if any(counts[k] < per_kind for k in ("docstring_chat", "docstring_fim") if k in counts):
                produced += docstring_samples(doc, r)
            if counts.get("rename_chat", per_kind) < per_kind:
                produced += rename_samples(doc, r)
            if any(counts[k] < per_kind for k in ("chat_explain", "chat_write") if k in counts):
                produced += chat_samples(doc, r) if rounds == 0 else []
            if counts.get("fim_cross", per_kind) < per_kind:
                produced += cross_file_samples(doc, indexes, r)
            for s in produced:
                if s["kind"] in counts and counts[s["kind"]] < per_kind:
                    counts[s["kind"]] += 1
                    yield s


def write_jsonl(samples, path: Path) -> dict[str, int]:
    """Write samples one per line; the count per kind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with path.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
            counts[s["kind"]] = counts.get(s["kind"], 0) + 1
    return counts


def read_jsonl(path: Path, kinds: Sequence[str] | None = None) -> list[dict]:
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            s = json.loads(line)
            if kinds is None or s["kind"] in kinds:
                out.append(s)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--corpus", type=Path, nargs="+", required=True, help="manifests (tools/corpus.py, corpus_pypi.py)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-per-kind", type=int, default=3000)
    p.add_argument("--heldout-per-kind", type=int, default=500)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--splits", nargs="+", default=["heldout", "train"], choices=["heldout", "train"])
    a = p.parse_args(argv)
    for split, n, seed in (("heldout", a.heldout_per_kind, a.seed + 1), ("train", a.train_per_kind, a.seed)):
        if split not in a.splits:
            continue
        docs = [d for m in a.corpus for d in load_documents(m, split)]
        counts = write_jsonl(generate(docs, n, seed, a.kinds), a.out / f"{split}.jsonl")
        print(
            f"{a.out / f'{split}.jsonl'}: {sum(counts.values())} samples from {len(docs)} files: {counts}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
