"""Suggestion post-processing rules and the multi-line decision (mellum_lsp.postprocess)."""

from __future__ import annotations

import pytest

from mellum_lsp.postprocess import multiline_allowed, postprocess

# (rule, language, prefix, completion, suffix, multiline, expected)
# fmt: off
CASES = [
    # 1. single line when multi-line is not allowed
    ("single-line", "python", "y = ", "x + 1\nprint(x)", "", False, "x + 1"),
    ("single-line", "go", "\tv := ", "compute(a)\n\treturn v", "\n}", False, "compute(a)"),
    ("single-line", "javascript", "const a = ", "\nfoo()", "", False, ""),
    # 2. multi-line stops at a dedent below the block, or after the `}` closing the block
    ("dedent", "python", "def f(x):\n    ", "return x + 1\n\ndef g():\n    pass", "", True, "return x + 1"),
    ("dedent", "python", "def f(x):", "\n    y = x\n    return y\n\nprint(f(1))", "", True, "\n    y = x\n    return y"),
    ("dedent", "python", "if ok:\n    ", "a = 1\n    b = 2\nelse:\n    c = 3", "", True, "a = 1\n    b = 2"),
    ("dedent", "python", "def f():\n", "    return [\n        1,\n    ]\nx = 2", "", True, "    return [\n        1,\n    ]"),
    ("block-end", "c", "int f() {\n    ", "return 1;\n}\n\nint g() {\n}", "", True, "return 1;\n}"),
    ("block-end", "java", "if (x) {\n    ", "a();\n} else {\n    b();\n}\nc();", "", True, "a();\n} else {\n    b();\n}"),
    ("block-end", "rust", "fn f() -> i32 {\n    ", "1\n}\n\nfn g() {}", "", True, "1\n}"),
    ("block-end", "typescript", "function f() {\n  ", "run();\n}\nexport const x = 1;", "", True, "run();\n}"),
    # 3. brackets: don't emit closers the suffix has, trim unbalanced ones, ignore strings/comments
    ("brackets", "python", "foo(", "a, b)", ")", False, "a, b"),
    ("brackets", "python", "foo(", "a, b)", "", False, "a, b)"),
    ("brackets", "python", "x = ", "1)", "", False, "1"),
    ("brackets", "python", "arr[", "x[0]", "]", False, "x[0]"),
    ("brackets", "python", "", 'print(")")', "", False, 'print(")")'),
    ("brackets", "python", 'print("hello ', 'world")', '")', False, "world"),
    ("brackets", "python", "x = 1", "  # comment )", "", False, "  # comment )"),
    ("brackets", "c", "foo(", "x);", ");", False, "x"),
    ("brackets", "c", "if (c == ", "')')", ")", False, "')'"),
    ("brackets", "cpp", "v.push_back(", "std::max(a, b));", ");", False, "std::max(a, b)"),
    ("brackets", "rust", "fn f<", "'a>(x: &'a str) -> &'a str {", "", False, "'a>(x: &'a str) -> &'a str {"),
    ("brackets", "javascript", "log(", "`(${a})`)", ")", False, "`(${a})`"),
    ("brackets", "typescript", "f(a, ", "b)]", ")", False, "b"),
    ("brackets", "java", "int[] a = {", "1, 2};", "};", False, "1, 2"),
    ("brackets", "go", "if (x > 0", ") {", ") {", False, ""),
    ("brackets", "c", "int f() {\n    ", "return 1;\n}", "\n}", True, "return 1;"),
    ("brackets", "c", "void f() {\n    ", 'puts("a);\n    g();\n}', "\n}", True, 'puts("a);\n    g();'),
    ("brackets", "python", "def f():\n    ", 's = """(\n)"""\n    return s)', "", True, 's = """(\n)"""\n    return s'),
    ("brackets", "javascript", "if (x) {\n    ", "a();\n}", "\n}\n", True, "a();"),
    ("brackets", "tsx", "f(a, ", "b)", ")\n", False, "b"),
    ("brackets", None, "f([", "a)]", "])", False, "a"),
    # 4. drop trailing text that repeats the suffix
    ("suffix-lines", "javascript", "function f() {\n    ", "let y = 2;\n    return y;", "\n    return y;\n}", True, "let y = 2;"),
    ("suffix-lines", "python", "def f():\n    ", "a = 1\n    b = 2\n    return a", "\n    b = 2\n    return a\n", True, "a = 1"),
    ("suffix-lines", "python", "x = 1", "\ny = 2", "\ny = 2\n", True, ""),
    ("suffix-rest", "c", "int y = ", "x;", ";", False, "x"),
    ("suffix-rest", "javascript", 's = "', 'hello"', '"', False, "hello"),
    ("suffix-rest", "python", "", "foo()", "foo()", False, ""),
    ("suffix-rest", "python", "f(x, ", "a,", ", b)", False, "a"),
    ("suffix-rest", "python", "f(x, ", "a,", " b)", False, "a,"),
    ("suffix-rest", "go", "x := ", "a + b // sum", " // sum", False, "a + b"),
    # 5. trailing whitespace
    ("whitespace", "go", "y = ", "x + 1  \t", "", False, "x + 1"),
    ("whitespace", "python", "def f():\n    ", "return 1\n\n\n", "", True, "return 1"),
    ("whitespace", "c", "int f() {", "\n    return 1;\n}", "}", True, "\n    return 1;\n"),
    ("whitespace", "java", "  void f() {", "\n    run();", "}", True, "\n    run();\n  "),
    # 6. whitespace-only suggestions become ""
    ("empty", "python", "y = ", "   \n  ", "", True, ""),
    ("empty", "rust", "let x = ", "", ";", False, ""),
    ("empty", "typescript", "", "\n\n", "", True, ""),
    # languages by LSP languageId
    ("language-id", "typescriptreact", "f(", "a)", ")", False, "a"),
    ("language-id", "golang", "func f() {\n\t", "return\n}\nfunc g() {}", "", True, "return\n}"),
]
# fmt: on


@pytest.mark.parametrize(
    ("rule", "language", "prefix", "completion", "suffix", "multiline", "expected"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)],
)
def test_postprocess_rules(rule, language, prefix, completion, suffix, multiline, expected) -> None:
    got = postprocess(completion, prefix, suffix, language, multiline_allowed=multiline)
    assert got == expected


def test_crlf_completions() -> None:
    assert postprocess("a = 1\r\nb = 2", "", "", "python", multiline_allowed=False) == "a = 1"


# (language, prefix, suffix, expected)
MULTILINE = [
    ("python", "def f(x):", "", True),
    ("python", "def f(x):  # note", "", True),
    ("python", "class A:\n    def f(self):\n        if x == '#':", "", True),
    ("python", "if x:\n    a\nelse:", "", True),
    ("python", "try:", "", True),
    ("python", "def f(x):\n    ", "", True),  # an empty line in a block body
    ("python", "import os\n", "\nprint(1)", True),  # an empty top-level line
    ("python", "d = {'a':", "", False),  # dict literal
    ("python", "f = lambda x:", "", False),
    ("python", "x: int", "", False),
    ("python", "s = 'a:'", "", False),
    ("python", "x = 1", "", False),  # end of a line that opens nothing
    ("python", "x = foo(", ")", False),  # code after the cursor
    ("python", "    return a", " + b", False),
    ("c", "int f() {", "", True),
    ("c", "int f() {", "}", True),  # an empty block
    ("c", "/* {", "", False),  # in a comment
    ("javascript", 's = "{"', "", False),  # in a string
    ("javascript", "function f() { // opens", "", True),
    ("typescript", "foo(", ")", False),
    ("go", "x := map[string]int{", "", True),
    ("go", "\treturn a", " + b", False),
    ("rust", "fn main() {", "\n}", True),
    ("java", "public class A {\n  void f() {", "\n  }\n}", True),
    ("cpp", "for (int i = 0; i < n; ++i) {", "", True),
    (None, "  ", "", True),
    (None, "foo {", "", True),
    (None, "foo", "bar", False),
]


@pytest.mark.parametrize(("language", "prefix", "suffix", "expected"), MULTILINE)
def test_multiline_allowed(language, prefix: str, suffix: str, expected: bool) -> None:
    assert multiline_allowed(prefix, suffix, language) is expected


def test_runaway_repetition_is_cut_after_its_first_occurrence():
    from mellum_lsp.postprocess import postprocess

    out = postprocess("= type(iter(str(str(str(str(str(str(", "x ", "\n", "python", multiline_allowed=False)
    assert out == "= type(iter(str"  # one occurrence, not cut inside a name
    # ordinary code that repeats a little, and indentation, are left alone
    assert postprocess("a, b, c", "f(", ")\n", "python", multiline_allowed=False) == "a, b, c"
    body = "\n        x = 1\n        y = 2"
    assert postprocess(body, "    if a:", "\n", "python", multiline_allowed=True) == body


# --- runaway repetition inside one word (the first-run report: `discounted = apply_co_co_co…`) ------

CHECKOUT = (
    "from cart import Cart\nfrom pricing import apply_discount, apply_tax\n\n\n"
    "def total(cart: Cart, discount: float) -> float:\n    subtotal = cart.subtotal()\n    discounted = apply_"
)


@pytest.mark.parametrize("multiline", [False, True])
def test_a_loop_inside_one_word_is_dropped(multiline):
    # The raw text the embedded model produced: `co_` 31 times. The old rule found the loop but
    # moved its cut to the end of the identifier, i.e. to the end of the whole loop.
    for raw in ("co_" * 31, "co_" * 31 + "co", "u" * 63, "ab" * 20 + "(x)", "co_" * 5 + "\n    return x"):
        assert postprocess(raw, CHECKOUT, "\n", "python", multiline_allowed=multiline) == "", raw


def test_a_loop_inside_a_word_keeps_a_name_the_file_has():
    raw = "discount_" * 6 + "(subtotal, discount)"
    assert postprocess(raw, CHECKOUT, "\n", "python", multiline_allowed=False) == "discount"
    # a name defined after the cursor counts too
    suffix = "\n\n\ndef apply_coupon(amount):\n    return amount\n"
    assert postprocess("coupon" * 5, CHECKOUT, suffix, "python", multiline_allowed=False) == "coupon"


def test_a_loop_in_a_word_after_other_code_keeps_the_code_before_it():
    raw = "tax(subtotal) + co_co_co_co_co_co_co"
    assert postprocess(raw, "    x = apply_", "\n", "python", multiline_allowed=False) == "tax(subtotal) +"


@pytest.mark.parametrize(
    ("prefix", "raw", "expected"),
    [
        ("n = ", "10000\n    y = 2", "10000\n    y = 2"),  # numbers repeat digits: not a loop, not a cut
        ("mask = ", "0xFFFFFFFF & value", "0xFFFFFFFF & value"),
        ("name = ", '"xxxx"', '"xxxx"'),
        ("    ", "return f(g(h(k(x))))", "return f(g(h(k(x))))"),
        ("    ", '""""""', '""""""'),
        ("    Returns\n    ", "-------\n    int", "-------\n    int"),
        ("# ", "=" * 60, "=" * 60),
        ("", "# " + "_" * 40, "# " + "_" * 40),
        ("x = ", "(" * 30, "("),  # beyond a short run, a repeated character is a loop again
    ],
)
def test_things_that_repeat_by_nature_are_kept(prefix, raw, expected):
    assert postprocess(raw, prefix, "", "python", multiline_allowed=True) == expected


def test_a_repeated_line_is_cut_after_its_first_occurrence():
    block = "    return self.data.get(name)\n\n    def __rmul__(self, name):\n"
    raw = "pass\n" + block * 3
    out = postprocess(raw, "class A:\n    def f(self):\n        ", "", "python", multiline_allowed=True)
    assert out == "pass"  # the dedent rule then stops at the method's end
    # without a dedent to stop at, the third occurrence may be cut short by the end of the text
    line = "total = total + price * quantity  # add\n"
    raw = line * 2 + line[:20]
    assert postprocess(raw, "", "", "python", multiline_allowed=True) == line.rstrip()
    # two equal lines are ordinary code
    twice = "next(it)\nnext(it)\nvalue = compute(a, b)"
    assert postprocess(twice, "", "", "python", multiline_allowed=True) == twice


def test_the_rule_leaves_ordinary_code_alone():
    """The standard library cut into completion-sized pieces: the old rule cut 5.5% of them (at
    `))))`, `----`, empty docstrings, `10000`); this one almost none."""
    import sysconfig
    from pathlib import Path

    from mellum_lsp.postprocess import _cut_runaway_repetition

    root = Path(sysconfig.get_paths()["stdlib"])
    pieces = []
    for path in sorted(root.glob("*.py"))[:120]:
        text = path.read_text(encoding="utf-8", errors="replace")
        pieces += [text[i : i + 400] for i in range(0, len(text), 400)]
    cut = sum(_cut_runaway_repetition(p) != p for p in pieces)
    assert len(pieces) > 2000
    assert cut / len(pieces) < 0.01, cut
