"""Prompts for an action and candidates from answers (mellum_lsp.edits.prompts); the last test runs
the embedded model on fill-in-the-middle fixes and validates what it writes."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import pytest

from mellum_lsp.edits.actions import Action, Diagnostic, Scope, list_actions
from mellum_lsp.edits.formats import EditFormatError
from mellum_lsp.edits.prompts import (
    chat_candidate,
    chat_messages,
    edit_grammar,
    fim_candidate,
    fim_plan,
    fim_plans,
)
from mellum_lsp.edits.syntax import diagnostic_problems, python_compile_problem
from mellum_lsp.edits.validate import validate_edit

PY = "import os\n\n\ndef add(a, b):\n    total = a + b\n    return total\n\n\nVALUE = add(1, 2)\n"


def action(text: str, language: str, operation: str, cursor: str, diagnostics=()) -> Action:
    i = text.index(cursor)
    found = [a for a in list_actions(text, language, (i, i), diagnostics) if a.operation == operation]
    assert found, f"no {operation} action at {cursor!r}"
    return found[0]


def fix_action(text: str, language: str = "python") -> Action:
    (problem,) = diagnostic_problems(text, language)[:1]
    diag = Diagnostic(problem.start, problem.end, problem.message)
    return next(
        a
        for a in list_actions(text, language, (problem.start, problem.start), [diag])
        if a.kind == "quickfix"
    )


# --- chat ------------------------------------------------------------------------------------------------


def test_chat_messages_for_a_fix():
    broken = PY.replace("def add(a, b):", "def add(a, b)")
    fix = fix_action(broken)
    system, user = chat_messages(broken, "python", fix, path="pkg/calc.py")
    assert system["role"] == "system" and user["role"] == "user"
    assert "<<<<<<< SEARCH" in system["content"] and ">>>>>>> REPLACE" in system["content"]
    assert "python" in system["content"]
    body = user["content"]
    assert body.startswith("File: pkg/calc.py (python)")
    assert "Context before the code to edit:\n```python\nimport os\n" in body
    assert (
        "Code to edit (lines 4-6):\n```python\ndef add(a, b)\n    total = a + b\n    return total\n```"
        in body
    )
    assert "Context after the code to edit:\n```python\n\n\nVALUE = add(1, 2)\n```" in body
    assert fix.scope.kind == "statement"  # the parser sees no function: the header and its body
    assert body.endswith("Task: Fix this problem reported on line 4: syntax error: expected ':'\n"
                         "Make the smallest change that fixes it.")  # fmt: skip
    # the file comes before the task: requests on one file share a prefix
    assert body.index("Code to edit") < body.index("Task:")


def test_chat_messages_for_other_operations():
    doc = action(PY, "python", "docstring", "total = a")
    assert "Add a docstring to `add`" in chat_messages(PY, "python", doc)[1]["content"]
    explain = action(PY, "python", "explain", "total = a")
    system, user = chat_messages(PY, "python", explain)
    assert "SEARCH" not in system["content"] and user["content"].endswith("Task: Explain the code to edit.")
    instruction = action(PY, "python", "instruction", "total = a")
    with pytest.raises(ValueError, match="non-empty instruction"):
        chat_messages(PY, "python", instruction)
    assert chat_messages(PY, "python", instruction, instruction=" use sum() ")[1]["content"].endswith(
        "Task: use sum()"
    )
    selection = (PY.index("    total"), PY.index("    return"))
    extract = next(a for a in list_actions(PY, "python", selection) if a.operation == "extract_function")
    task = chat_messages(PY, "python", extract)[1]["content"].split("Task: ", 1)[1]
    assert task.startswith("Move the statements on line 5 (below) into a new function")
    assert "defined just before `add`" in task and task.endswith("```\n    total = a + b\n```")


def test_code_with_backticks_gets_a_longer_fence():
    text = 'DOC = """\n```python\nx = 1\n```\n"""\n'
    explain = next(a for a in list_actions(text, "python", (0, len(text))) if a.operation == "explain")
    user = chat_messages(text, "python", explain)[1]["content"]
    assert 'Code to edit (lines 1-5):\n````python\nDOC = """\n```python\n' in user and user.count("````") == 2


def test_chat_messages_use_lf_and_keep_unicode():
    text = "def greet(name):\r\n    return f'こんにちは {name} 👋'\r\n"
    explain = action(text, "python", "explain", "return")
    user = chat_messages(text, "python", explain)[1]["content"]
    assert "\r" not in user and "こんにちは {name} 👋" in user


def test_chat_candidate_applies_blocks_inside_the_scope_only():
    fix = fix_action(PY.replace("def add(a, b):", "def add(a, b)"))
    broken = PY.replace("def add(a, b):", "def add(a, b)")
    answer = "<<<<<<< SEARCH\ndef add(a, b)\n=======\ndef add(a, b):\n>>>>>>> REPLACE\n"
    candidate = chat_candidate(broken, fix, answer)
    assert candidate == PY
    assert validate_edit(broken, candidate, "python", fix.scope.span, must_fix=True).ok
    outside = "<<<<<<< SEARCH\nimport os\n=======\nimport sys\n>>>>>>> REPLACE\n"
    with pytest.raises(EditFormatError, match="not in the code to edit: `import os`"):
        chat_candidate(broken, fix, outside)


def test_chat_candidate_falls_back_to_a_code_block():
    fix = fix_action(PY.replace("def add(a, b):", "def add(a, b)"))
    broken = PY.replace("def add(a, b):", "def add(a, b)")
    answer = "Fixed:\n```python\ndef add(a, b):\n    total = a + b\n    return total\n```"
    assert chat_candidate(broken, fix, answer) == PY
    with pytest.raises(EditFormatError, match="no <<<<<<< SEARCH"):
        chat_candidate(broken, fix, "I cannot do that.")
    with pytest.raises(EditFormatError, match="divider"):  # a broken block is not read as prose
        chat_candidate(broken, fix, "<<<<<<< SEARCH\nx\n```py\ny\n```")


def test_edit_grammar_is_over_the_scope_lines():
    doc = action(PY, "python", "docstring", "total = a")
    grammar = edit_grammar(PY, doc)
    assert '"def add(a, b):\\n"' in grammar and '"    return total\\n"' in grammar
    assert '"import os\\n"' not in grammar


# --- fill in the middle: fixes ---------------------------------------------------------------------------


def test_fix_plans_mask_from_the_diagnostic_then_the_whole_lines():
    broken = PY.replace("def add(a, b):", "def add(a, b)")
    fix = fix_action(broken)
    first, whole = fim_plans(broken, "python", fix)
    assert first.request["prefix"].endswith("\n\n\ndef add(a, b)")
    assert first.request["suffix"].startswith("\n    total = a + b")
    assert first.request["stop"] == ["\n"] and first.request["max_tokens"] >= 32
    assert set(first.request) == {"prefix", "suffix", "stop", "max_tokens"}
    assert fim_candidate(broken, first, ":") == PY
    assert fim_candidate(broken, first, ":\nmore") == PY  # a one-line mask ends at the line break
    assert fim_plan(broken, "python", fix) == first
    # then the lines tree-sitter's error covers, whole
    assert broken[whole.start : whole.end] == "def add(a, b)\n    total = a + b"
    assert whole.request["prefix"].endswith("\n\n\n") and whole.request["stop"] == ["\n    return total"]
    assert whole.stop_at == "return total"
    answer = "def add(a, b):\n    total = a + b\n    return total\n\n\nVALUE = add(1, 2)\n"
    assert fim_candidate(broken, whole, answer) == PY  # cut where it runs into the suffix


def test_fix_candidates_are_validated():
    broken = PY.replace("def add(a, b):", "def add(a, b)")
    fix = fix_action(broken)
    first, whole = fim_plans(broken, "python", fix)
    good = fim_candidate(broken, first, ":")
    assert validate_edit(broken, good, "python", fix.scope.span, must_fix=True, max_deleted=2).ok
    renamed = fim_candidate(broken, whole, "def plus(x, y):\n    total = x + y\n    return total")
    verdict = validate_edit(broken, renamed, "python", fix.scope.span, must_fix=True, max_deleted=2)
    assert not verdict.ok and verdict.reason.startswith("the edit deletes 7 characters of code (`addabab`)")
    verdict = validate_edit(broken, renamed, "python", fix.scope.span, must_fix=True, min_similarity=0.95)
    assert not verdict.ok and "rewrites too much of lines 4-5" in verdict.reason
    dropped = fim_candidate(broken, whole, "def add(a, b):\n    return total")
    assert validate_edit(broken, dropped, "python", fix.scope.span, must_fix=True).ok  # parses, but:
    verdict = validate_edit(broken, dropped, "python", fix.scope.span, must_fix=True, max_deleted=2)
    assert not verdict.ok and "(`total=a+b`)" in verdict.reason
    # an empty answer never deletes the broken code
    assert fim_candidate(broken, whole, "") == broken


def test_multiline_fix_mask_is_cut_where_the_answer_runs_into_the_suffix():
    broken = "def f():\n    x = (1 +\n         2\n    return x\n\n\ny = 1\n"
    fix = fix_action(broken)
    first, whole = fim_plans(broken, "python", fix)
    assert broken[first.start : first.end] == "(1 +"  # from the unclosed bracket
    assert broken[whole.start : whole.end] == "x = (1 +\n         2\n    return x"
    assert whole.request["stop"] == ["\ny = 1"] and whole.stop_at == "y = 1"
    candidate = fim_candidate(broken, whole, "x = (1 +\n         2)\n    return x\n\n\ny = 1\n")
    assert candidate == broken.replace("2\n", "2)\n", 1)
    assert validate_edit(broken, candidate, "python", fix.scope.span, must_fix=True).ok


def test_fix_plans_keep_crlf_and_unicode():
    text = "s = '日本語 😀'\r\nt = len(s\r\nu = 1\r\n"
    fix = fix_action(text)
    plan = fim_plans(text, "python", fix)[0]
    assert "\r" not in plan.request["prefix"] + plan.request["suffix"]
    assert text[plan.start : plan.end] == "(s"
    candidate = fim_candidate(text, plan, "(s)")
    assert candidate == "s = '日本語 😀'\r\nt = len(s)\r\nu = 1\r\n"


def test_fix_in_an_unknown_language_masks_the_lines():
    text = "a\nb = (\nc\n"
    fix = next(
        a for a in list_actions(text, None, (2, 2), [Diagnostic(6, 7, "unclosed")]) if a.kind == "quickfix"
    )
    plan = fim_plan(text, None, fix)
    assert plan is not None and plan.request["prefix"] == "a\nb = " and plan.request["suffix"] == "\nc\n"


# --- fill in the middle: docs and hints -------------------------------------------------------------------


def test_python_docstring_plan():
    doc = action(PY, "python", "docstring", "total = a")
    plan = fim_plan(PY, "python", doc)
    assert plan.request["prefix"].endswith('def add(a, b):\n    """')
    assert plan.request["suffix"].startswith('"""\n    total = a + b\n')
    assert plan.request["stop"] == ['"""']
    one = fim_candidate(PY, plan, "Add two numbers.")
    assert ast.get_docstring(ast.parse(one).body[1]) == "Add two numbers."
    assert validate_edit(PY, one, "python", doc.scope.span).ok
    many = fim_candidate(PY, plan, 'Add two numbers.\n\n    Returns their sum.\n    """ and more')
    assert '    """Add two numbers.\n\n    Returns their sum.\n    """\n    total' in many
    assert fim_candidate(PY, plan, "   ") == PY


def test_docstring_plans_for_other_languages():
    ts = "export function area(w: number, h: number): number {\n  return w * h;\n}\n"
    plan = fim_plan(ts, "typescript", action(ts, "typescript", "docstring", "w * h"))
    assert plan.request["prefix"] == "/**\n * " and plan.request["stop"] == ["*/"]
    candidate = fim_candidate(ts, plan, "Area of a rectangle.\n */")
    assert candidate == "/**\n * Area of a rectangle.\n */\n" + ts
    assert validate_edit(ts, candidate, "typescript").ok
    go = "package m\n\ntype P struct{ x int }\n\nfunc (p *P) Move(dx int) {\n\tp.x += dx\n}\n"
    plan = fim_plan(go, "go", action(go, "go", "docstring", "p.x"))
    assert plan.request["prefix"].endswith("}\n\n// Move ") and plan.request["stop"] == ["\n"]
    assert "// Move shifts p by dx.\nfunc (p *P)" in fim_candidate(go, plan, "shifts p by dx.\nmore")
    rust = "struct S;\n\nimpl S {\n    fn get(&self) -> i32 {\n        1\n    }\n}\n"
    plan = fim_plan(rust, "rust", action(rust, "rust", "docstring", "1\n"))
    assert plan.request["prefix"].endswith("impl S {\n    /// ")
    assert "    /// The value.\n    fn get" in fim_candidate(rust, plan, "The value.")


def test_type_hint_plans():
    hints = action(PY, "python", "type_hints", "total = a")
    plan = fim_plan(PY, "python", hints)
    assert plan.request["prefix"].endswith("def add(a: ") and plan.request["suffix"].startswith(
        ":\n    total"
    )
    candidate = fim_candidate(PY, plan, "int, b: int) -> int\nignored")
    fn = ast.parse(candidate).body[1]
    assert [ast.unparse(a.annotation) for a in fn.args.args] == ["int", "int"] and ast.unparse(
        fn.returns
    ) == "int"
    assert validate_edit(PY, candidate, "python", hints.scope.span).ok
    typed = PY.replace("def add(a, b):", "def add(a: int, b: int):")
    plan = fim_plan(typed, "python", action(typed, "python", "type_hints", "total = a"))
    assert plan.request["prefix"].endswith("def add(a: int, b: int) -> ")
    ts = "class C {\n  m(this: C, y, z: string) {\n    return y;\n  }\n}\n"
    plan = fim_plan(ts, "typescript", action(ts, "typescript", "type_hints", "return y"))
    assert plan.request["prefix"].endswith("m(this: C, y: ") and plan.request["suffix"].startswith("{\n")
    multi = "def add(\n    a,\n    b,\n):\n    return a + b\n"
    assert fim_plan(multi, "python", action(multi, "python", "type_hints", "return")) is None


def test_no_fim_for_what_a_base_model_cannot_do():
    for operation in ("simplify", "instruction", "explain"):
        assert fim_plans(PY, "python", action(PY, "python", operation, "total = a")) == []
    extract = Action("x", "refactor.extract", "extract_function", Scope(0, len(PY), "selection"), (0, 9))
    assert fim_plan(PY, "python", extract) is None


# --- the embedded model ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_embedded_model_fixes_through_fim_and_nothing_invalid_passes():
    embedded = pytest.importorskip("engine.embedded")
    from engine.backends.ort_backend import OrtBackend
    from engine.jobs import Job
    from engine.protocol import CompleteParams, Sampling
    from engine.service import Engine
    from engine.tokenizer import Tokenizer

    model = embedded.embedded_model_dir()
    engine = Engine(OrtBackend.load(str(model)), Tokenizer.from_folder(model))
    source = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    lines = source.split("\n")
    # Every line that ends a block header with ":" or a call with ")" loses that character.
    breakable = [
        i
        for i, ln in enumerate(lines)
        if ln.rstrip().endswith((":", ")")) and not ln.lstrip().startswith("#")
    ]
    fixed = exact = tried = 0
    for n, i in enumerate(breakable[::12]):
        broken = "\n".join(lines[:i] + [lines[i].rstrip()[:-1]] + lines[i + 1 :])
        problems = diagnostic_problems(broken, "python")
        if not problems:
            continue
        tried += 1
        p = problems[0]
        fix = next(a for a in list_actions(broken, "python", (p.start, p.start), [Diagnostic(p.start, p.end, p.message)])
                   if a.kind == "quickfix")  # fmt: skip
        for plan in fim_plans(broken, "python", fix):
            r = plan.request
            params = CompleteParams(prefix=r["prefix"], suffix=r["suffix"], path="textwrap.py", document=f"doc{n}",
                                    sampling=Sampling(max_tokens=r["max_tokens"], stop=tuple(r["stop"])))  # fmt: skip
            job = Job(
                n, "complete", params, emit=lambda _: None, finish=lambda *_: None, document=params.document
            )
            candidate = fim_candidate(broken, plan, engine.execute(job)["text"])
            verdict = validate_edit(broken, candidate, "python", fix.scope.span, must_fix=True, max_deleted=2)
            if verdict.ok:
                assert python_compile_problem(candidate) is None, (
                    lines[i],
                    candidate[plan.start : plan.end + 20],
                )
                fixed += 1
                exact += candidate == source
                break
            assert verdict.reason
    assert tried >= 5
    assert exact >= 1 and fixed >= exact, (tried, fixed, exact)
