"""The agent's tools: what the model may call, their schemas, and carrying a call out.

Tools (no shell, no writes): `read_file`, `list_files`, `search` (the repository index, BM25),
`find_symbol` (definitions by name), `syntax_check` (tree-sitter and, for Python, `compile()`),
`propose_edit` (a search/replace block, applied to the file's text and validated exactly like a
code-action edit: `edits.validate.validate_edit`; the loop then asks the user) and `finish`.
Every path goes through `WorkspaceFiles` (confinement, .gitignore, binary files).

`propose_edit` comes in three shapes (`edit_format`): "json", the replacement inside the call's
arguments; "block", the call names the file and the SEARCH lines and the model then writes the
replacement as a plain search/replace block (code written as code, not as an escaped JSON string);
"fim", for a completion-only (Base) model: the call names the lines of a syntax error and the fix
is made by fill-in-the-middle, as the code actions make it (`edits.generate`), so only lines that
hold a syntax problem can be named.

Offers:
- `Toolbox(files, indexes, edit_format="block")`: `specs()` (OpenAI tools for the prompt: plain,
  the same every step), `offered()` (the tool names that can succeed now), `grounded(names)`
  (argument schemas narrowed to the workspace: see `grounding.py`), `run(name, args)` ->
  `ToolResult`, `prepare_edit(args)` -> `ProposedEdit` (json, block), `region(args)` ->
  `Region` and `fix_action(region)` -> `Action` (fim), `checked(region, new_text)`, `applied(edit)`.
- `ToolError`: a call that cannot be carried out; its message is the tool result the model sees.
- `ToolResult(text, ok)`, `ProposedEdit`, `Region`, `CodeIndex` (what the tools need of `RepoIndex`),
  `EDIT_FORMATS`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..context.languages import language_for_path
from ..edits.actions import QUICKFIX, Action, Diagnostic, Scope
from ..edits.formats import EditFormatError, SearchReplace, apply_search_replace
from ..edits.syntax import SyntaxProblem, diagnostic_problems
from ..edits.validate import validate_edit
from .grounding import line_runs_pattern
from .paths import FileRef, PathError, WorkspaceFiles

EDIT_FORMATS = ("block", "json", "fim")
TOOL_NAMES = ("read_file", "list_files", "search", "find_symbol", "syntax_check", "propose_edit", "finish")
MAX_READ_LINES = 400
MAX_RESULT_CHARS = 16_000
MAX_LISTED = 200
MAX_HITS = 8
MAX_ENUM = 300  # more known files than this: paths are free strings
RUN_LINES = 4  # a grounded SEARCH text is a run of at most this many lines (longer when needed to be unique)


class ToolError(Exception):
    """A tool call that cannot be carried out; the message is what the model is told."""


class CodeIndex(Protocol):
    root: str

    def search(self, query: str, k: int) -> list: ...

    def definitions_named(self, name: str) -> list: ...

    def get(self, path: str) -> Any: ...

    def paths(self) -> list[str]: ...


@dataclass(frozen=True)
class ToolResult:
    text: str
    ok: bool = True


@dataclass(frozen=True)
class Region:
    """The lines a `propose_edit` call names: `text[start:end]` of the file `ref`."""

    ref: FileRef
    text: str
    language: str | None
    start: int
    end: int


@dataclass(frozen=True)
class ProposedEdit:
    ref: FileRef
    old: str
    new: str
    language: str | None
    search: str
    replace: str


def _schema(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_PATH = {"type": "string", "maxLength": 300, "description": "a path relative to the workspace folder"}
_SEARCH = {"type": "string", "maxLength": 4000}
_DESCRIPTIONS = {
    "read_file": "Read a file of the workspace (the editor's unsaved text when it is open there).",
    "list_files": "List the files under a folder of the workspace (files ignored by .gitignore are left out).",
    "search": "Search the workspace's code for words or identifiers; answers the best matching snippets.",
    "find_symbol": "Find where a function, class or method of this name is defined.",
    "syntax_check": "Check a file for syntax errors.",
    "finish": "End the task with a short summary of what was done.",
}


def _edit_spec(edit_format: str) -> dict:
    if edit_format == "json":
        return {
            "description": "Propose replacing SEARCH (lines copied exactly from a file you read) with "
            "REPLACE. The user confirms or refuses; the result says which.",
            "parameters": _schema(
                {"path": _PATH, "search": _SEARCH, "replace": {"type": "string", "maxLength": 8000}},
                ("path", "search", "replace"),
            ),
        }
    if edit_format == "fim":
        description = (
            "Propose a fix of the syntax error in the lines SEARCH (copied exactly from a file you "
            "read); the fix is written for you. The user confirms or refuses it."
        )
    else:
        description = (
            "Propose an edit of the lines SEARCH (copied exactly from a file you read); you then "
            "write their replacement as a search/replace block. The user confirms or refuses it."
        )
    return {
        "description": description,
        "parameters": _schema({"path": _PATH, "search": _SEARCH}, ("path", "search")),
    }


def tool_specs(edit_format: str = "block") -> list[dict]:
    """The OpenAI tools shown in the prompt (plain schemas; stable across steps)."""
    params = {
        "read_file": _schema(
            {
                "path": _PATH,
                "start_line": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
                "end_line": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
            },
            ("path",),
        ),
        "list_files": _schema({"path": _PATH}),
        "search": _schema({"query": {"type": "string", "maxLength": 200}}, ("query",)),
        "find_symbol": _schema({"name": {"type": "string", "maxLength": 120}}, ("name",)),
        "syntax_check": _schema({"path": _PATH}, ("path",)),
        "finish": _schema({"summary": {"type": "string", "maxLength": 600}}, ("summary",)),
    }
    out = []
    for name in TOOL_NAMES:
        if name == "propose_edit":
            fn = {"name": name, **_edit_spec(edit_format)}
        else:
            fn = {"name": name, "description": _DESCRIPTIONS[name], "parameters": params[name]}
        out.append({"type": "function", "function": fn})
    return out


def _args(args: Any, name: str, required: tuple[str, ...], optional: dict[str, type]) -> dict:
    """The call's arguments, checked: ToolError naming a missing, unknown or mistyped one."""
    if not isinstance(args, dict):
        raise ToolError(f"{name}: the arguments must be a JSON object, got {type(args).__name__}")
    kinds = {**dict.fromkeys(required, str), **optional}
    unknown = sorted(set(args) - set(kinds))
    if unknown:
        raise ToolError(f"{name}: unknown argument(s) {unknown}; expected {sorted(kinds)}")
    for key in required:
        if key not in args:
            raise ToolError(f"{name}: the argument {key!r} is missing")
    for key, value in args.items():
        kind = kinds[key]
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ToolError(f"{name}: {key} must be a {kind.__name__}, got {value!r:.60}")
    return args


def _fence(language: str | None) -> str:
    return language or ""


def _problems_line(text: str, language: str | None, path: str) -> str:
    if language is None:
        return ""
    try:
        problems = diagnostic_problems(text, language, path)
    except ValueError:
        return ""
    if not problems:
        return "no syntax errors"
    return "; ".join(p.describe() for p in problems[:5])


@dataclass
class _Seen:
    listed: set[str] = field(default_factory=set)  # shown paths of files the model was shown
    read: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # shown path -> [first, end) lines
    folders: set[str] = field(default_factory=set)  # folders listed ("." or "a/b/")
    answered: dict[tuple[str, str], str] = field(default_factory=dict)  # (tool, path) -> text hash then


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


class Toolbox:
    """The tools over one workspace for one agent run (it remembers what the model has seen)."""

    def __init__(
        self, files: WorkspaceFiles, indexes: list[CodeIndex] | tuple = (), edit_format: str = "block"
    ) -> None:
        if edit_format not in EDIT_FORMATS:
            raise ValueError(f"edit_format must be one of {EDIT_FORMATS}, got {edit_format!r}")
        self.files, self.indexes, self.edit_format = files, list(indexes), edit_format
        self.seen = _Seen()
        self._edited: dict[str, tuple[str, str]] = {}  # path -> (text before, text after) of an applied edit
        self._indexed: set[str] | None = None

    # ---- what the model is offered ----------------------------------------------------------
    def specs(self) -> list[dict]:
        return tool_specs(self.edit_format)

    def offered(self) -> list[str]:
        """The tools that can succeed now: `propose_edit` once a file has been read (with "fim":
        a file with a syntax problem)."""
        return [n for n in TOOL_NAMES if n != "propose_edit" or self._editable()]

    def _editable(self) -> list[tuple[str, str, list[tuple[int, int]], set[int] | None]]:
        """(shown path, text, line spans seen, lines that may be named or None) of the files that
        may be edited now."""
        out = []
        for shown, spans in sorted(self.seen.read.items()):
            try:
                ref, text = self._read(shown)
            except ToolError:
                continue
            covering = None
            if self.edit_format == "fim":
                covering = {line for p in self._problems(ref, text) for line in _problem_lines(p)}
                if not covering:
                    continue
            out.append((shown, text, spans, covering))
        return out

    @staticmethod
    def _problems(ref: FileRef, text: str) -> list[SyntaxProblem]:
        language = language_for_path(ref.path, text)
        if language is None:
            return []
        try:
            return diagnostic_problems(text, language, ref.path)
        except ValueError:
            return []

    def known_files(self) -> list[str]:
        """The files the model may name: the indexed ones (taken once per run) and those it was shown."""
        if self._indexed is None:
            self._indexed = set()
            for index in self.indexes:
                for rel in index.paths():
                    try:
                        self._indexed.add(self.files.resolve(os.path.join(index.root, rel)).shown)
                    except PathError:
                        continue
        return sorted(self._indexed | self.seen.listed | set(self.seen.read))

    def _fresh(self, tool: str) -> set[str]:
        """Files whose `tool` answer the model has and which did not change since: asking again
        would tell it nothing new."""
        fresh = set()
        for (name, shown), digest in self.seen.answered.items():
            if name == tool:
                try:
                    if _digest(self._read(shown)[1]) == digest:
                        fresh.add(shown)
                except ToolError:
                    continue
        return fresh

    def grounded(self, names: list[str]) -> list[tuple[str, dict]]:
        """(name, argument schema) of each tool in `names`, narrowed to the workspace and to calls
        that tell the model something new; a tool with no such call is left out."""
        known = self.known_files()
        out = []
        for name, spec in ((s["function"]["name"], s["function"]) for s in self.specs()):
            if name not in names:
                continue
            params = json.loads(json.dumps(spec["parameters"]))
            props = params["properties"]
            if name in ("read_file", "syntax_check"):
                if len(known) <= MAX_ENUM:
                    paths = [f for f in known if f not in self._fresh(name)]
                    if not paths:
                        continue
                    props["path"] = {"enum": paths}
            if name == "list_files":
                folders = sorted({"."} | {f.rsplit("/", 1)[0] + "/" for f in known if "/" in f})
                if len(folders) <= MAX_ENUM:
                    folders = [f for f in folders if f not in self.seen.folders]
                    if not folders:
                        continue
                    props["path"] = {"enum": folders}
            if name == "read_file":  # ranges are for files longer than a read shows
                props.pop("start_line", None)
                props.pop("end_line", None)
            if name == "propose_edit":
                out.extend((name, schema) for schema in [self._edit_schema(params)] if schema is not None)
                continue
            out.append((name, params))
        return out

    def _edit_schema(self, params: dict) -> dict | None:
        """`propose_edit`'s arguments: one branch per file read, its SEARCH a run of its lines."""
        branches = []
        for shown, text, spans, covering in self._editable():
            pattern = line_runs_pattern(text, spans, RUN_LINES, covering=covering)
            if pattern is None and covering is not None:
                continue
            props = dict(params["properties"], path={"const": shown})
            props["search"] = {"type": "string", "pattern": pattern} if pattern else {"type": "string"}
            branches.append(dict(params, properties=props))
        if not branches:
            return None
        return branches[0] if len(branches) == 1 else {"type": "object", "anyOf": branches}

    # ---- carrying calls out -------------------------------------------------------------------
    def _read(self, path: object) -> tuple[FileRef, str]:
        try:
            ref, text = self.files.read(path)
        except PathError as e:
            raise ToolError(str(e)) from None
        before_after = self._edited.get(ref.path)
        if before_after is not None and text == before_after[0]:  # the editor has not told us yet
            text = before_after[1]
        return ref, text

    def applied(self, edit: ProposedEdit) -> None:
        """The user accepted `edit`: later reads see its text even before the editor reports it."""
        self._edited[edit.ref.path] = (edit.old, edit.new)

    def run(self, name: str, args: Any) -> ToolResult:
        """Carry out a call of any tool but `propose_edit` and `finish` (the loop's)."""
        handler = {
            "read_file": self.read_file,
            "list_files": self.list_files,
            "search": self.search,
            "find_symbol": self.find_symbol,
            "syntax_check": self.syntax_check,
        }.get(name)
        if handler is None:
            raise ToolError(f"there is no tool {name!r}; the tools are {list(TOOL_NAMES)}")
        return handler(args)

    def read_file(self, args: Any) -> ToolResult:
        a = _args(args, "read_file", ("path",), {"start_line": int, "end_line": int})
        ref, text = self._read(a["path"])
        lines = text.splitlines(keepends=True)
        first = max(1, a.get("start_line") or 1)
        last = min(len(lines), a.get("end_line") or len(lines), first + MAX_READ_LINES - 1)
        if lines and first > len(lines):
            raise ToolError(
                f"read_file: {ref.shown} has {len(lines)} lines; start_line {first} is past its end"
            )
        body = "".join(lines[first - 1 : last])
        if len(body) > MAX_RESULT_CHARS:
            cut = body[:MAX_RESULT_CHARS].rfind("\n") + 1 or MAX_RESULT_CHARS
            last = first - 1 + body[:cut].count("\n")
            body = body[:cut]
        language = language_for_path(ref.path, text)
        self.seen.read.setdefault(ref.shown, []).append((first - 1, last))
        if first == 1 and last == len(lines):
            self.seen.answered["read_file", ref.shown] = _digest(text)
        header = f"{ref.shown}, lines {first}-{last} of {len(lines)}" if lines else f"{ref.shown} (empty)"
        problems = _problems_line(text, language, ref.path)
        if problems:
            header += f"; syntax: {problems}"
        more = (
            f"\n(lines {last + 1}-{len(lines)} not shown: read_file with start_line)"
            if last < len(lines)
            else ""
        )
        return ToolResult(
            f"{header}\n```{_fence(language)}\n{body}{'' if body.endswith(chr(10)) or not body else chr(10)}```{more}"
        )

    def list_files(self, args: Any) -> ToolResult:
        a = _args(args or {}, "list_files", (), {"path": str})
        try:
            listed, cut = self.files.list(a.get("path") or ".", MAX_LISTED)
        except PathError as e:
            raise ToolError(str(e)) from None
        self.seen.listed.update(listed)
        folder = self.files.resolve(a.get("path") or ".").shown
        self.seen.folders.add("." if folder == "." else folder.rstrip("/") + "/")
        if not listed:
            return ToolResult("(no files)")
        more = f"\n(the first {MAX_LISTED} files; list a folder to see more)" if cut else ""
        return ToolResult("\n".join(listed) + more)

    def search(self, args: Any) -> ToolResult:
        a = _args(args, "search", ("query",), {})
        query = a["query"].strip()
        if not query:
            raise ToolError("search: the query is empty")
        hits = []
        for index in self.indexes:
            for hit in index.search(query, MAX_HITS):
                hits.append((hit.score, index, hit))
        hits.sort(key=lambda h: -h[0])
        parts, size = [], 0
        for _, index, hit in hits[:MAX_HITS]:
            try:
                ref = self.files.resolve(os.path.join(index.root, hit.doc))
            except PathError:
                continue
            entry = index.get(hit.doc)
            if entry is None:
                continue
            lines = entry.text.splitlines(keepends=True)[hit.start : hit.end]
            part = f"{ref.shown}, lines {hit.start + 1}-{hit.start + len(lines)}:\n```\n{''.join(lines)}```"
            size += len(part)
            if size > MAX_RESULT_CHARS:
                break
            parts.append(part)
            self.seen.listed.add(ref.shown)
        return ToolResult("\n".join(parts) if parts else f"nothing in the workspace matches {query!r}")

    def find_symbol(self, args: Any) -> ToolResult:
        a = _args(args, "find_symbol", ("name",), {})
        name = a["name"].strip()
        found = []
        for index in self.indexes:
            for rel, d in index.definitions_named(name):
                try:
                    ref = self.files.resolve(os.path.join(index.root, rel))
                except PathError:
                    continue
                found.append(
                    f"{ref.shown}:{d.start_line + 1}-{d.end_line + 1} {d.kind} {d.signature.strip()}"
                )
                self.seen.listed.add(ref.shown)
        return ToolResult(
            "\n".join(found[:50]) if found else f"no definition named {name!r} in the workspace"
        )

    def syntax_check(self, args: Any) -> ToolResult:
        a = _args(args, "syntax_check", ("path",), {})
        ref, text = self._read(a["path"])
        language = language_for_path(ref.path, text)
        self.seen.answered["syntax_check", ref.shown] = _digest(text)
        if language is None:
            return ToolResult(f"{ref.shown}: no grammar for this kind of file; not checked")
        problems = self._problems(ref, text)
        if not problems:
            return ToolResult(f"{ref.shown}: no syntax errors")
        lines = text.splitlines(keepends=True)
        parts = []
        for p in problems[:5]:  # each with its lines, as a compiler shows them (the model has seen them)
            first, last = p.start_point[0], min(p.end_point[0], p.start_point[0] + 4)
            shown = "".join(lines[first : last + 1]) if first < len(lines) else ""
            self.seen.read.setdefault(ref.shown, []).append((first, last + 1))
            parts.append(
                f"{ref.shown}:{first + 1}: {p.message}\n```{_fence(language)}\n{shown.rstrip(chr(10))}\n```"
            )
        return ToolResult("\n".join(parts))

    def region(self, args: Any) -> Region:
        """The lines a `propose_edit` call names (path and SEARCH), found once in the file's text."""
        a = _args(args, "propose_edit", ("path", "search"), {"replace": str})
        ref, text = self._read(a["path"])
        if ref.shown not in self.seen.read:
            raise ToolError(f"propose_edit: read {ref.shown} with read_file before editing it")
        search = a["search"]
        start = text.find(search) if search.strip() else -1
        if start < 0:
            raise ToolError(f"propose_edit: the SEARCH lines are not in {ref.shown}; copy them exactly")
        if text.find(search, start + 1) >= 0:
            raise ToolError(f"propose_edit: the SEARCH lines occur more than once in {ref.shown}; add lines")
        return Region(ref, text, language_for_path(ref.path, text), start, start + len(search))

    def fix_action(self, region: Region) -> Action:
        """The code action "fix" of the first syntax problem on the region's lines (for "fim")."""
        first = region.text.count("\n", 0, region.start)
        last = region.text.count("\n", 0, max(region.start, region.end - 1))
        for p in self._problems(region.ref, region.text):
            if any(first <= line <= last for line in _problem_lines(p)):
                d = Diagnostic(p.start, p.end, p.message, source="mellum")
                scope = Scope(region.start, region.end, "lines")
                return Action(f"Fix: {p.message}", QUICKFIX, "fix", scope, (p.start, p.end), diagnostic=d)
        raise ToolError(
            f"propose_edit: lines {first + 1}-{last + 1} of {region.ref.shown} hold no syntax error; with a "
            "completion-only model the agent can only fix syntax errors"
        )

    def checked(self, region: Region, new_text: str) -> ProposedEdit:
        """A validated new text of the region's file as a `ProposedEdit`."""
        end = region.end + len(new_text) - len(region.text)
        return ProposedEdit(
            region.ref, region.text, new_text, region.language,
            region.text[region.start : region.end], new_text[region.start : end],
        )  # fmt: skip

    def prepare_edit(self, args: Any) -> ProposedEdit:
        """The edit a `propose_edit` call describes, applied to the file's text and validated."""
        a = _args(args, "propose_edit", ("path", "search", "replace"), {})
        ref, text = self._read(a["path"])
        if ref.shown not in self.seen.read:
            raise ToolError(f"propose_edit: read {ref.shown} with read_file before editing it")
        try:
            new = apply_search_replace(text, [SearchReplace(a["search"], a["replace"])])
        except EditFormatError as e:
            raise ToolError(f"propose_edit: {e}") from None
        language = language_for_path(ref.path, text)
        verdict = validate_edit(text, new, language, path=ref.path)
        if not verdict.ok:
            raise ToolError(f"propose_edit: the edit was not offered to the user: {verdict.reason}")
        return ProposedEdit(ref, text, new, language, a["search"], a["replace"])


def _problem_lines(p: SyntaxProblem) -> range:
    return range(p.start_point[0], p.end_point[0] + 1)
