"""Validation of candidate edits before they are offered (mellum_lsp.edits.validate)."""

from __future__ import annotations

import pytest

from mellum_lsp.edits.validate import validate_edit

PY = "import os\n\n\ndef f(x):\n    return x + 1\n\n\ndef g(y):\n    return y * 2\n"
F_SCOPE = (PY.index("def f"), PY.index("\n\n\ndef g") + 1)


def test_a_fix_is_accepted():
    broken = PY.replace("def f(x):", "def f(x)")
    scope = (broken.index("def f"), broken.index("\n\n\ndef g") + 1)
    verdict = validate_edit(broken, PY, "python", scope, path="m.py", must_fix=True)
    assert verdict.ok and verdict.reason == ""
    assert bool(verdict)


def test_no_op_is_rejected():
    verdict = validate_edit(PY, PY, "python")
    assert not verdict.ok
    assert verdict.reason == "the edit changes nothing"


@pytest.mark.parametrize(
    "language, original, breaking, problem",
    [
        ("python", PY, PY.replace("return x + 1", "return (x + 1"), "`(` was never closed (line 5)"),
        (
            "javascript",
            "function f(x) {\n  return x + 1;\n}\n",
            "function f(x) {\n  return x + 1;\n\n",
            "missing `}` (line 2)",  # tree-sitter puts it right after the last token
        ),
        (
            "typescript",
            "function f(x: number): number {\n  return x;\n}\n",
            "function f(x: number): number {\n  return x +;\n}\n",
            "missing identifier (line 2)",
        ),
        (
            "go",
            "package m\n\nfunc F(x int) int {\n\treturn x\n}\n",
            "package m\n\nfunc F(x int int {\n\treturn x\n}\n",
            "line 3",
        ),
        (
            "rust",
            "fn main() {\n    let x = 1;\n    let y = x;\n}\n",
            "fn main() {\n    let x = 1\n    let y = x;\n}\n",
            "missing `;` (line 2)",
        ),
    ],
)
def test_an_edit_that_breaks_the_file_is_rejected_naming_the_problem(language, original, breaking, problem):
    verdict = validate_edit(original, breaking, language)
    assert not verdict.ok
    assert verdict.reason.startswith("the edit adds a syntax problem: ")
    assert problem in verdict.reason
    assert verdict.problems and verdict.problems[0].describe() in verdict.reason


def test_a_problem_caused_outside_the_region_is_rejected():
    breaking = PY.replace("    return x + 1\n", "    return x + 1\nclass\n")
    verdict = validate_edit(PY, breaking, "python", F_SCOPE)
    assert not verdict.ok
    assert verdict.reason.startswith("the edit breaks code outside the edited region: ")
    assert verdict.reason.endswith("unexpected `def` (line 9)")  # `def g`, moved down a line


def test_existing_problems_elsewhere_do_not_block_an_edit():
    original = PY + "\ndef h(z)\n    return z\n"
    edited = original.replace("return x + 1", "return x + 2")
    assert validate_edit(original, edited, "python", F_SCOPE).ok
    assert validate_edit(original, edited, "python").ok  # compile error stays where it was


def test_new_problems_in_the_region_are_counted():
    verdict = validate_edit(PY, PY.replace("return x + 1", "return x +"), "python", F_SCOPE)
    assert not verdict.ok and "adds a syntax problem" in verdict.reason
    # Trading the problem in g for one in f keeps the count: only `must_fix` rejects the swap.
    original = PY.replace("return y * 2", "return y *")
    swapped = original.replace("return x + 1", "return x +").replace("return y *", "return y * 2")
    assert validate_edit(original, swapped, "python").ok
    verdict = validate_edit(original, swapped, "python", must_fix=True)
    assert verdict.reason == "the edit does not fix the syntax problem it targets"


def test_edits_outside_the_scope_are_rejected_with_lines():
    before = PY.replace("import os", "import sys")
    verdict = validate_edit(PY, before, "python", F_SCOPE)
    assert not verdict.ok
    assert verdict.reason == "the edit changes line 1, before the allowed region (lines 4-5)"
    after = PY.replace("return y * 2", "return y * 3")
    verdict = validate_edit(PY, after, "python", F_SCOPE)
    assert not verdict.ok
    assert verdict.reason == "the edit changes line 9, after the allowed region (lines 4-5)"
    shortened = PY[: F_SCOPE[0]] + "def f(x):\n"
    verdict = validate_edit(PY, shortened, "python", F_SCOPE)
    assert not verdict.ok and "after the allowed region" in verdict.reason


def test_edits_touching_the_scope_ends_are_inside():
    inserted_before = PY[: F_SCOPE[0]] + "def helper():\n    return 1\n\n\n" + PY[F_SCOPE[0] :]
    assert validate_edit(PY, inserted_before, "python", F_SCOPE).ok
    inserted_after = PY[: F_SCOPE[1]] + "    # done\n" + PY[F_SCOPE[1] :]
    assert validate_edit(PY, inserted_after, "python", F_SCOPE).ok


def test_bad_scope_is_an_error():
    with pytest.raises(ValueError, match="scope 5..2"):
        validate_edit(PY, PY + "x", "python", (5, 2))


def test_whitespace_only_edits_are_rejected_unless_asked():
    spaced = PY.replace("return x + 1", "return x  +  1")
    verdict = validate_edit(PY, spaced, "python")
    assert not verdict.ok and verdict.reason == "the edit only changes whitespace"
    assert validate_edit(PY, spaced, "python", allow_whitespace=True).ok
    assert not validate_edit(PY, PY.replace("\n\n\ndef g", "\n\ndef g"), "python").ok


def test_an_indentation_fix_is_a_whitespace_change_that_is_accepted():
    broken = "def f():\nreturn 1\n"
    fixed = "def f():\n    return 1\n"
    assert validate_edit(broken, fixed, "python", must_fix=True).ok


def test_python_must_still_compile():
    # tree-sitter parses this; the compiler does not
    edited = PY.replace("    return y * 2\n", "    return y * 2\n\n\nbreak\n")
    verdict = validate_edit(PY, edited, "python")
    assert not verdict.ok
    assert (
        verdict.reason == "the edited file no longer compiles: syntax error: 'break' outside loop (line 12)"
    )


def test_a_file_that_did_not_compile_may_be_edited_if_not_made_worse():
    original = PY + "\n\nbreak\n"
    better_elsewhere = original.replace("return x + 1", "return x + 2")
    assert validate_edit(original, better_elsewhere, "python").ok
    worse = original.replace("    return x + 1\n", "    return x + 1\nbreak\n")
    verdict = validate_edit(original, worse, "python")
    assert not verdict.ok
    assert verdict.reason.startswith("the edit adds a compile error before the existing one:")
    assert "(line 6)" in verdict.reason


def test_must_fix_rejects_a_candidate_that_leaves_the_problem():
    broken = PY.replace("def f(x):", "def f(x)")
    scope = (broken.index("def f"), broken.index("\n\n\ndef g") + 1)
    unrelated = broken.replace("return x + 1", "return x + 2")
    verdict = validate_edit(broken, unrelated, "python", scope, must_fix=True)
    assert not verdict.ok
    assert verdict.reason == "the edit does not fix the syntax problem it targets"


def test_unicode_and_crlf():
    original = "def greet(name):\r\n    return f'こんにちは {name} 👋'\r\n\r\n\r\ndef other():\r\n    return '日本'\r\n"
    scope = (0, original.index("\r\n\r\n\r\ndef other") + 2)
    good = original.replace("'こんにちは {name} 👋'", "'こんにちは, ' + name + ' 👋'")
    assert validate_edit(original, good, "python", scope).ok
    bad = original.replace("'こんにちは {name} 👋'", "('こんにちは' 👋")
    verdict = validate_edit(original, bad, "python", scope)
    assert not verdict.ok and "(line 2)" in verdict.reason
    outside = original.replace("'日本'", "'中国'")
    verdict = validate_edit(original, outside, "python", scope)
    assert verdict.reason == "the edit changes line 6, after the allowed region (lines 1-2)"


def test_empty_file():
    assert validate_edit("", "", "python").reason == "the edit changes nothing"
    assert validate_edit("", "x = 1\n", "python", (0, 0)).ok
    verdict = validate_edit("", "def (:\n", "python")
    assert not verdict.ok and "adds a syntax problem" in verdict.reason
    assert validate_edit("x = 1\n", "", "python").ok  # deleting everything is valid syntax


def test_languages_without_a_grammar_keep_the_other_checks():
    assert validate_edit("a\nb\n", "a\nc\n", "cobol").ok
    assert validate_edit("a\nb\n", "a\nb\n", "cobol").reason == "the edit changes nothing"
    assert validate_edit("a b\n", "a  b\n", None).reason == "the edit only changes whitespace"
    assert validate_edit("a\nb\n", "x\nb\n", None, (2, 4)).reason.startswith(
        "the edit changes line 1, before"
    )
