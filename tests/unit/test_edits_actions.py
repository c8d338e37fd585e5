"""The code-action catalogue and scopes (mellum_lsp.edits.actions) over real tree-sitter grammars."""

from __future__ import annotations

from mellum_lsp.edits.actions import (
    EXPLAIN,
    EXTRACT,
    MAX_SCOPE_LINES,
    QUICKFIX,
    REWRITE,
    Diagnostic,
    edit_scope,
    fix_scope,
    list_actions,
)
from mellum_lsp.edits.syntax import syntax_problems

PY = '''import os


class Store:
    """Keeps things."""

    @staticmethod
    def load(path, strict=False):
        data = open(path).read()
        items = data.split()
        count = len(items)
        return items, count

    def save(self, path: str) -> None:
        """Write to path."""
        os.remove(path)


TOTAL = 1 + 2
'''


def at(text: str, needle: str) -> tuple[int, int]:
    i = text.index(needle)
    return i, i


def span(text: str, needle: str) -> tuple[int, int]:
    i = text.index(needle)
    return i, i + len(needle)


def ops(actions) -> list[str]:
    return [a.operation for a in actions]


def test_cursor_in_a_method():
    actions = list_actions(PY, "python", at(PY, "items = data"))
    assert ops(actions) == ["docstring", "type_hints", "simplify", "instruction", "explain"]
    load = PY[PY.index("    @staticmethod") : PY.index("\n    def save")]
    assert load.endswith("count\n")
    for a in actions:
        assert PY[a.scope.start : a.scope.end] == load  # whole lines, decorator included
        assert a.scope.kind == "method" and a.scope.name == "load"
        assert not a.is_preferred and a.diagnostic is None
    titles = [a.title for a in actions]
    assert titles == [
        "Add docstring to `load` with Mellum",
        "Add type hints to `load` with Mellum",
        "Simplify `load` with Mellum",
        "Edit with instruction…",
        "Explain with Mellum",
    ]
    assert [a.kind for a in actions] == [REWRITE, REWRITE, REWRITE, REWRITE, EXPLAIN]


def test_no_docstring_or_hints_action_when_present():
    actions = list_actions(PY, "python", at(PY, "os.remove"))
    assert ops(actions) == ["simplify", "instruction", "explain"]
    assert actions[0].scope.name == "save"
    # on the class line, the class is the definition: it has a docstring, and no hints apply
    assert ops(list_actions(PY, "python", at(PY, "class Store"))) == ["simplify", "instruction", "explain"]


def test_quickfixes_come_first_and_the_nearest_is_preferred():
    far = Diagnostic(*span(PY, "os.remove"), "`os.remove` is risky", severity=2, source="lint")
    near = Diagnostic(*span(PY, "len(items)"), "use a counter", severity=3)
    actions = list_actions(PY, "python", at(PY, "len(items)"), [far, near])
    fixes = [a for a in actions if a.kind == QUICKFIX]
    assert [a.title for a in fixes] == [
        "Fix with Mellum: use a counter",
        "Fix with Mellum: `os.remove` is risky",
    ]
    assert [a.is_preferred for a in fixes] == [True, False]
    assert fixes[0].diagnostic is near and fixes[0].target == (near.start, near.end)
    assert fixes[0].scope.name == "load" and fixes[1].scope.name == "save"
    assert actions.index(fixes[-1]) == len(fixes) - 1


def test_the_most_severe_is_preferred_among_equally_near():
    warning = Diagnostic(*span(PY, "count = len(items)"), "unused", severity=2)
    error = Diagnostic(*span(PY, "len(items)"), "undefined", severity=1)
    fixes = [a for a in list_actions(PY, "python", at(PY, "len("), [warning, error]) if a.kind == QUICKFIX]
    assert [(a.diagnostic.message, a.is_preferred) for a in fixes] == [("undefined", True), ("unused", False)]


def test_fix_titles_are_one_short_line():
    long = Diagnostic(0, 3, "first line " + "x" * 100 + "\nsecond line")
    (fix,) = [a for a in list_actions(PY, "python", (0, 0), [long]) if a.kind == QUICKFIX]
    assert "\n" not in fix.title and len(fix.title) <= len("Fix with Mellum: ") + 70
    assert fix.title.endswith("…")


def test_extract_function_needs_whole_statements():
    selection = (PY.index("        items = data"), PY.index("        return items"))
    actions = list_actions(PY, "python", selection)
    (extract,) = [a for a in actions if a.operation == "extract_function"]
    assert extract.kind == EXTRACT and extract.title == "Extract function with Mellum"
    assert extract.target == selection
    assert extract.scope.name == "load"  # the new function may go just before `load`
    simplify = next(a for a in actions if a.operation == "simplify")
    assert simplify.scope.kind == "selection" and simplify.scope.span == selection
    assert simplify.title == "Simplify selection with Mellum"
    partial = (PY.index("data.split"), PY.index("data.split") + len("data.split"))
    assert "extract_function" not in ops(list_actions(PY, "python", partial))
    across = (PY.index("items = data"), PY.index("os.remove"))  # statements of two functions
    assert "extract_function" not in ops(list_actions(PY, "python", across))
    assert "extract_function" not in ops(list_actions(PY, "python", at(PY, "items = data")))


def test_extract_at_module_level_is_scoped_to_the_statements():
    text = "a = 1\nb = a + 1\nprint(b)\n"
    selection = (text.index("b = "), len(text))
    (extract,) = [a for a in list_actions(text, "python", selection) if a.operation == "extract_function"]
    assert extract.scope.span == selection


def test_only_filters_by_kind_prefix():
    diag = Diagnostic(*span(PY, "len(items)"), "x")
    selection = (PY.index("        items = data"), PY.index("        return items"))
    assert {a.kind for a in list_actions(PY, "python", selection, [diag], only=["quickfix"])} == {QUICKFIX}
    assert {a.kind for a in list_actions(PY, "python", selection, [diag], only=["refactor"])} == {
        REWRITE,
        EXTRACT,
    }
    assert ops(list_actions(PY, "python", selection, [diag], only=["refactor.extract"])) == [
        "extract_function"
    ]
    assert list_actions(PY, "python", selection, [diag], only=["source"]) == []


def test_fix_scope_falls_back_to_statement_and_lines():
    assert fix_scope(PY, "python", *span(PY, "1 + 2")).kind == "statement"
    assert PY[slice(*fix_scope(PY, "python", *span(PY, "1 + 2")).span)] == "TOTAL = 1 + 2\n"
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_SCOPE_LINES + 5))
    long = "def big():\n" + body + "    return x0\n"
    scope = fix_scope(long, "python", *span(long, "x7 = 7"))
    assert scope.kind == "statement" and long[scope.start : scope.end] == "    x7 = 7\n"
    plain = "".join(f"line {i}\n" for i in range(40))
    scope = fix_scope(plain, "cobol", *span(plain, "line 20"))
    assert scope.kind == "lines"
    assert plain[scope.start : scope.end] == "".join(f"line {i}\n" for i in range(10, 31))


def test_a_syntax_error_is_fixable_in_its_definition():
    broken = PY.replace("def load(path, strict=False):", "def load(path, strict=False)")
    problem = syntax_problems(broken, "python")[0]
    diag = Diagnostic(problem.start, problem.end, problem.message)
    fix = list_actions(broken, "python", (problem.start, problem.start), [diag])[0]
    assert fix.operation == "fix" and fix.is_preferred
    assert fix.scope.start <= problem.start and problem.end <= fix.scope.end


def test_other_languages():
    ts = "export function area(w, h: number) {\n  return w * h;\n}\n\nclass Box {\n  size(): number {\n    return 1;\n  }\n}\n"
    area = list_actions(ts, "typescript", at(ts, "w * h"))
    assert ops(area) == ["docstring", "type_hints", "simplify", "instruction", "explain"]
    assert area[0].title == "Add doc comment to `area` with Mellum"
    assert ts[area[0].scope.start : area[0].scope.end].startswith("export function area")
    size = list_actions(ts, "typescript", at(ts, "return 1"))
    assert "type_hints" not in ops(size) and size[0].scope.kind == "method"
    js = "// Adds.\nfunction add(a, b) {\n  return a + b;\n}\n"
    assert ops(list_actions(js, "javascript", at(js, "a + b"))) == ["simplify", "instruction", "explain"]
    go = "package m\n\ntype P struct{ x int }\n\nfunc (p *P) Move(dx int) {\n\tp.x += dx\n}\n"
    move = list_actions(go, "go", at(go, "p.x += dx"))
    assert ops(move) == ["docstring", "simplify", "instruction", "explain"]
    assert move[0].scope.kind == "method" and move[0].scope.name == "Move"
    rust = "struct S;\n\nimpl S {\n    fn get(&self) -> i32 {\n        1\n    }\n}\n"
    get = list_actions(rust, "rust", at(rust, "1\n"))
    assert get[0].operation == "docstring" and get[0].scope.kind == "method" and get[0].scope.name == "get"


def test_unicode_and_crlf_scopes():
    text = "# 日本語 😀\r\ndef greet(name):\r\n    return f'こんにちは {name} 👋'\r\n\r\nx = 1\r\n"
    actions = list_actions(text, "python", at(text, "こんにちは"))
    scope = actions[0].scope
    assert text[scope.start : scope.end] == "def greet(name):\r\n    return f'こんにちは {name} 👋'\r\n"
    selection = span(text, "    return f'こんにちは {name} 👋'")
    assert "extract_function" in ops(list_actions(text, "python", selection))


def test_empty_file_and_unknown_language():
    assert ops(list_actions("", "python", (0, 0))) == ["instruction", "explain"]
    assert edit_scope("", "python", (0, 0)).span == (0, 0)
    diag = Diagnostic(0, 0, "empty file")
    assert ops(list_actions("", "python", (0, 0), [diag])) == ["fix", "instruction", "explain"]
    text = "IDENTIFICATION DIVISION.\nPROGRAM-ID. HELLO.\n"
    assert ops(list_actions(text, "cobol", (0, 5))) == ["simplify", "instruction", "explain"]
    assert ops(list_actions(text, None, (0, 0))) == ["instruction", "explain"]


def test_edit_scope():
    assert edit_scope(PY, "python", (10, 3)).span == (3, 10)  # a backwards selection
    assert edit_scope(PY, "python", at(PY, "os.remove")).name == "save"
    assert PY[slice(*edit_scope(PY, "python", at(PY, "1 + 2")).span)] == "TOTAL = 1 + 2\n"
    assert edit_scope(PY, "python", at(PY, "import os")).kind == "statement"
