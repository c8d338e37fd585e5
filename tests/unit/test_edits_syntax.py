"""Syntax problems from real tree-sitter grammars and Python's compiler (mellum_lsp.edits.syntax)."""

from __future__ import annotations

import time

import pytest

from mellum_lsp.context.languages import LANGUAGES
from mellum_lsp.edits.syntax import diagnostic_problems, python_compile_problem, syntax_problems

CLEAN = {
    "python": "def add(a, b):\n    return a + b\n",
    "javascript": "function add(a, b) {\n  return a + b;\n}\n",
    "typescript": "function add(a: number, b: number): number {\n  return a + b;\n}\n",
    "tsx": "const App = () => <div>{1 + 2}</div>;\n",
    "go": "package m\n\nfunc Add(a int, b int) int {\n\treturn a + b\n}\n",
    "rust": "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
    "java": "class A {\n  int add(int a, int b) {\n    return a + b;\n  }\n}\n",
    "c": "int add(int a, int b) {\n  return a + b;\n}\n",
    "cpp": "namespace n {\nint add(int a, int b) { return a + b; }\n}\n",
}

# (broken text, the line of the first problem, a piece of its message, the text its focus underlines)
BROKEN = {
    "python": ("def add(a, b):\n    return add(a, b))\n", 1, "unexpected `)`", ")"),
    "javascript": ("function add(a, b) {\n  return (a + b;\n}\n", 1, "missing `)`", ""),
    "typescript": (
        "function add(a: number, b: number): number {\n  return a +;\n}\n",
        1,
        "missing identifier",
        "",
    ),
    "tsx": ("const App = () => <div>{1 + }</div>;\n", 0, "", None),
    "go": ("package m\n\nfunc Add(a int, b int) int {\n\treturn a + b\n", 4, "missing `}`", ""),
    "rust": ('fn main() {\n    let x = 1\n    let y = x;\n    println!("{y}");\n}\n', 1, "missing `;`", ""),
    "java": ("class A {\n  int add(int a, int b) {\n    return a + b\n  }\n}\n", 2, "missing `;`", ""),
    "c": ("int add(int a, int b) {\n  return a + b\n}\n", 1, "missing `;`", ""),
    "cpp": ("int add(int a, int b) { return (a + b; }\n", 0, "", None),
}


def test_every_language_is_covered():
    assert set(CLEAN) == set(LANGUAGES) == set(BROKEN)


@pytest.mark.parametrize("language", sorted(CLEAN))
def test_clean_code_has_no_problems(language):
    assert syntax_problems(CLEAN[language], language) == []


@pytest.mark.parametrize("language", sorted(BROKEN))
def test_broken_code_is_reported(language):
    text, line, message, focus = BROKEN[language]
    problems = syntax_problems(text, language)
    assert problems, f"no problem found in broken {language}"
    first = problems[0]
    assert first.line == line
    assert message in first.message
    assert 0 <= first.start <= first.end <= len(text)
    assert first.start <= first.focus[0] <= first.focus[1] <= max(first.end, first.focus[1])
    if focus is not None:
        assert text[first.focus[0] : first.focus[1]] == focus


def test_python_messages_name_the_token():
    cases = {
        "foo(1, 2))\n": ("syntax error: unexpected `)`", ")"),
        "x = (1 + 2\ny = 3\n": ("syntax error: `(` was never closed", "("),
        "def f(x)\n    return x\n": ("syntax error: unexpected `return`", "return"),
        "for x in :\n    pass\n": ("missing identifier", ""),
        "def f(:\n    pass\n": ("missing `)`", ""),
    }
    for text, (message, focus) in cases.items():
        (problem,) = syntax_problems(text, "python")
        assert problem.message == message, text
        assert text[problem.focus[0] : problem.focus[1]] == focus, text


def test_backtick_tokens_are_quoted_readably():
    (problem,) = syntax_problems("let a = `x;\n", "javascript")
    assert problem.message == "syntax error: unexpected `` ` ``"


def test_missing_node_is_zero_width_at_its_place():
    text = "fn main() {\n    let x = 1\n    let y = 2;\n}\n"
    (problem,) = syntax_problems(text, "rust")
    assert problem.kind == "missing"
    assert problem.start == problem.end == text.index("1\n") + 1
    assert problem.start_point == (1, 13)


def test_offsets_count_code_points_with_emoji_and_cjk():
    text = "s = '日本語 😀😀'\nt = ('中文', 1))\n"
    (problem,) = syntax_problems(text, "python")
    assert text[problem.focus[0] : problem.focus[1]] == ")"
    assert problem.focus[0] == text.rindex(")")
    assert problem.start_point[0] == 1
    line_start = text.index("t = ")
    assert problem.end_point == (1, text.rindex(")") + 1 - line_start)


def test_crlf_lines_and_offsets():
    text = "def f(x):\r\n    return x\r\n\r\ndef g(y)\r\n    return y\r\n"
    (problem,) = syntax_problems(text, "python")
    assert problem.start_point == (3, 0)
    assert text[problem.start : problem.start + 5] == "def g"
    assert text[problem.focus[0] : problem.focus[1]] == "return"


def test_empty_and_blank_files():
    for language in CLEAN:
        assert syntax_problems("", language) == []
    assert syntax_problems("\n\n   \n", "python") == []
    assert python_compile_problem("") is None


def test_unknown_language_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'cobol'"):
        syntax_problems("IDENTIFICATION DIVISION.", "cobol")


def test_language_ids_are_normalised():
    assert syntax_problems("foo(1))\n", "py")
    assert syntax_problems("let a = (1;\n", "typescriptreact")


def test_outermost_errors_only_and_limit():
    garbage = "".join(f"def f{i}(a b):\n    pass\n" for i in range(500))
    assert len(syntax_problems(garbage, "python", limit=10_000)) == 500
    problems = syntax_problems(garbage, "python", limit=50)
    assert len(problems) == 50
    spans = [(p.start, p.end) for p in problems]
    assert spans == sorted(spans)
    for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False):
        assert e1 <= s2  # no problem nested in another


def test_python_compile_problem_sees_what_tree_sitter_does_not():
    text = "def f():\nreturn 1\n"
    assert syntax_problems(text, "python") == []  # tree-sitter is lenient about indentation
    problem = python_compile_problem(text, "m.py")
    assert problem is not None
    assert problem.message.startswith("indentation error: expected an indented block")
    assert problem.line == 1


def test_python_compile_problem_positions_in_code_points():
    text = "x = '日本😀' + )\n"
    problem = python_compile_problem(text)
    assert problem is not None
    assert "unmatched ')'" in problem.message
    assert text[problem.start] == ")"
    assert python_compile_problem("x = 1\r\ny = 2\r\n") is None
    crlf = python_compile_problem("x = 1\r\nif x\r\n    pass\r\n")
    assert crlf is not None and crlf.start_point == (1, 4) and "expected ':'" in crlf.message


def test_python_compile_problem_ignores_warnings():
    assert python_compile_problem("print('\\d')\n") is None


def _big_python(lines: int) -> str:
    """At least `lines` lines of valid Python, in whole blocks of 22 lines."""
    out: list[str] = []
    i = 0
    while len(out) < lines:
        out += [
            f"class Widget{i}:",
            f'    """Widget number {i}."""',
            "",
            "    def __init__(self, size: int, name: str = 'w') -> None:",
            "        self.size = size",
            "        self.name = name",
            "",
            "    def grow(self, by):",
            "        if by < 0:",
            "            raise ValueError(f'cannot grow by {by}')",
            "        for _ in range(by):",
            "            self.size += 1",
            "        return {'size': self.size, 'name': self.name, 'items': [1, 2, 3]}",
            "",
            "",
            f"def helper_{i}(a, b=2, *args, **kwargs):",
            "    total = a + b + sum(args)",
            "    while total > 10:",
            "        total //= 2",
            "    return total if kwargs else -total",
            "",
            "",
        ]
        i += 1
    return "\n".join(out) + "\n"


def test_diagnostics_for_python_use_the_compilers_precise_error():
    text = _big_python(60).replace("    def grow(self, by):\n", "    def grow(self, by)\n", 1)
    noisy = syntax_problems(text, "python")
    assert len(noisy) > 1  # tree-sitter's recovery spreads one missing colon over several nodes
    (problem,) = diagnostic_problems(text, "python", "w.py")
    assert problem.message == "syntax error: expected ':'"
    assert problem.start == text.index("(self, by)\n") + len("(self, by)")
    # indentation errors, which tree-sitter does not see, are reported too
    (indent,) = diagnostic_problems("def f():\nreturn 1\n", "python")
    assert indent.message.startswith("indentation error")
    assert diagnostic_problems(_big_python(60), "python") == []
    # other languages: tree-sitter's problems as they are
    assert diagnostic_problems(BROKEN["go"][0], "go") == syntax_problems(BROKEN["go"][0], "go")


def test_five_thousand_lines_are_fast():
    text = _big_python(5000)
    broken = text.replace("    def grow(self, by):\n", "    def grow(self, by)\n", 1)
    assert syntax_problems(text, "python") == []
    timings = []
    for _ in range(3):
        t0 = time.perf_counter()
        problems = syntax_problems(broken, "python")
        timings.append(time.perf_counter() - t0)
    assert problems and any(p.start_point[0] <= 7 <= p.end_point[0] for p in problems)
    # A debounced change must not wait on this: one parse of 5,000 lines takes ~15 ms here.
    assert min(timings) < 0.25, timings
