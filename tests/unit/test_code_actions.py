"""Code actions without a client: the pure parts of `features/code_actions.py` and
`features/diagnostics.py`, how `edits/generate.py` plans, windows and judges candidates, and
`generate_edit` against real engine processes — one whose outputs are forced (`engine/scripted.py`)
and the embedded model."""

from __future__ import annotations

import json
import sysconfig
import time
from pathlib import Path

import pytest
from lsprotocol import types
from lsprotocol.converters import get_converter

from engine.jobs import Job
from engine.protocol import ProtocolError, parse_params
from engine.scripted import ScriptedEngine, load_script
from mellum_lsp.documents import UTF16, Document
from mellum_lsp.edits import (
    Diagnostic,
    FimPlan,
    TextEdit,
    diagnostic_problems,
    list_actions,
)
from mellum_lsp.edits.generate import (
    EditRequest,
    GenerateOptions,
    fim_answer_candidate,
    fim_window,
    fix_plans,
    generate_edit,
    is_syntax_fix,
    unsupported_reason,
    uses_chat,
    windowed,
)
from mellum_lsp.features.code_actions import action_data, action_of, request_diagnostic, workspace_edit
from mellum_lsp.features.diagnostics import lsp_range, problem_diagnostic, to_lsp
from mellum_lsp.fix_cli import open_engine

BROKEN = "import os\n\n\ndef add(a, b)\n    total = a + b\n    return total\n\n\nprint(add(1, 2))\n"


def quickfix(text: str):
    (problem, *_) = diagnostic_problems(text, "python")
    d = problem_diagnostic(problem)
    (action,) = list_actions(text, "python", (d.start, d.start), [d], only=["quickfix"])
    return action


def unstructure(value) -> dict:
    return json.loads(json.dumps(get_converter().unstructure(value)))


# ---- diagnostics -------------------------------------------------------------------------------
def test_a_syntax_problem_becomes_a_mellum_diagnostic_on_the_token():
    text = "x = f(1, 2\ny = 3\n"
    doc = Document("file:///a.py", text, 1, "python", UTF16)
    (problem,) = diagnostic_problems(text, "python")
    d = to_lsp(doc, problem)
    assert (d.source, d.code, d.severity) == ("mellum", "syntax", types.DiagnosticSeverity.Error)
    assert "'(' was never closed" in d.message
    assert (d.range.start.line, d.range.start.character, d.range.end.character) == (0, 5, 6)  # the "("
    assert problem_diagnostic(problem) == Diagnostic(5, 5, problem.message, 1, "mellum", "syntax")


def test_an_empty_range_at_a_line_end_stays_empty_and_positions_count_utf16():
    text = "s = '😀' + f(a\n"
    doc = Document("file:///a.py", text, 1, "python", UTF16)
    at_end = text.index("\n")
    assert lsp_range(doc, at_end, at_end) == types.Range(
        start=types.Position(line=0, character=at_end + 1), end=types.Position(line=0, character=at_end + 1)
    )  # the emoji counts two UTF-16 units
    paren = text.index("(")
    r = lsp_range(doc, paren, paren)
    assert (r.start.character, r.end.character) == (paren + 1, paren + 2)


# ---- code actions: pure parts -----------------------------------------------------------------
def test_workspace_edits_are_annotated_for_confirmation_when_the_client_supports_it():
    text = "café = 1\nprint(café\n"
    doc = Document("file:///w.py", text, 7, "python", UTF16)
    edits = [TextEdit(len(text) - 1, len(text) - 1, ")")]
    annotated = unstructure(workspace_edit(doc, edits, "Fix it", annotations=True, document_changes=True))
    assert annotated["changeAnnotations"]["mellum"]["needsConfirmation"] is True
    assert annotated["changeAnnotations"]["mellum"]["label"] == "Mellum"
    (change,) = annotated["documentChanges"]
    assert change["textDocument"] == {"uri": "file:///w.py", "version": 7}
    assert change["edits"] == [{"range": {"start": {"line": 1, "character": 10}, "end": {"line": 1, "character": 10}},
                                "newText": ")", "annotationId": "mellum"}]  # fmt: skip
    versioned = unstructure(workspace_edit(doc, edits, "Fix it", annotations=False, document_changes=True))
    assert (
        "changeAnnotations" not in versioned
        and "annotationId" not in versioned["documentChanges"][0]["edits"][0]
    )
    plain = unstructure(workspace_edit(doc, edits, "Fix it", annotations=False, document_changes=False))
    assert list(plain) == ["changes"] and plain["changes"]["file:///w.py"][0]["newText"] == ")"


def test_action_data_survives_json_and_foreign_data_is_refused():
    action = quickfix(BROKEN)
    data = json.loads(json.dumps(action_data("file:///a.py", 3, 10, action)))
    assert action_of(data) == action
    with pytest.raises(ValueError, match="not a Mellum action"):
        action_of({"other": "server"})
    with pytest.raises(ValueError, match="malformed"):
        action_of({"mellum": 1, "action": {"title": "x"}})


def test_request_diagnostics_become_offsets():
    doc = Document("file:///a.py", BROKEN, 1, "python", UTF16)
    rng = types.Range(start=types.Position(line=3, character=4), end=types.Position(line=3, character=7))
    d = types.Diagnostic(
        range=rng, message="no", severity=types.DiagnosticSeverity.Warning, source="pyright", code=5
    )
    start = BROKEN.index("add")
    assert request_diagnostic(doc, d) == Diagnostic(start, start + 3, "no", 2, "pyright", 5)


# ---- generate: which model, which plans --------------------------------------------------------
def test_edits_go_to_chat_only_with_a_chat_model_or_when_asked():
    same = {"roles": {"completion": "/m", "chat": "/m"}, "fim": True}
    other = {"roles": {"completion": "/m", "chat": "/instruct"}, "fim": True}
    assert (
        not uses_chat(same) and uses_chat(other) and uses_chat(same, "chat") and not uses_chat(other, "fim")
    )
    assert uses_chat({"fim": False})
    text = "def f(a):\n    return a\n"
    simplify = next(a for a in list_actions(text, "python", (0, len(text) - 1)) if a.operation == "simplify")
    assert "needs an instruct (chat) model" in unsupported_reason(simplify, chat=False)
    assert unsupported_reason(simplify, chat=True) == ""
    with pytest.raises(ValueError, match="mode must be one of"):
        GenerateOptions(mode="magic")


def test_a_fix_is_a_syntax_fix_only_where_the_file_has_a_syntax_problem():
    assert is_syntax_fix(BROKEN, "python", quickfix(BROKEN))
    fine = BROKEN.replace("b)\n", "b):\n")
    d = Diagnostic(fine.index("total"), fine.index("total") + 5, "unused variable", 2, "pyright")
    (fix,) = list_actions(fine, "python", (d.start, d.start), [d], only=["quickfix"])
    assert not is_syntax_fix(fine, "python", fix)


def test_fix_plans_try_cheap_insertions_first():
    colon = fix_plans(BROKEN, "python", quickfix(BROKEN))
    eol = BROKEN.index("b)\n") + 2
    assert (colon[0].start, colon[0].end) == (eol, eol)  # the `:` goes at the line's end
    assert len({(p.start, p.end) for p in colon}) == len(colon)
    comma = "x = [alpha, beta gamma]\n"
    plans = fix_plans(comma, "python", quickfix(comma))
    gap = comma.index(" gamma")
    assert (plans[0].start, plans[0].end) == (gap, gap)  # the missing `,` between beta and gamma


def test_one_window_for_all_plans_bounds_the_prompt_and_shares_the_suffix():
    lines = [f"value_{i} = compute({i}, factor={i % 7})" for i in range(400)]
    lines[200] = "def broken(a, b)"
    text = "\n".join(lines) + "\n"
    plans = fix_plans(text, "python", quickfix(text))
    lo, hi = fim_window(text, plans, 1024)
    assert lo == 0 or text[lo - 1] == "\n"
    assert hi == len(text) or text[hi - 1] == "\n"
    assert lo <= min(p.start for p in plans) and hi >= max(p.end for p in plans)
    assert (hi - lo) / 3.5 <= 1024
    requests = [windowed(text, p, (lo, hi)) for p in plans]
    same_end = [r for p, r in zip(plans, requests, strict=True) if p.end == plans[0].end]
    assert len(same_end) >= 2 and len({r["suffix"] for r in same_end}) == 1
    for p, r in zip(plans, requests, strict=True):
        assert text[lo : p.start].endswith(r["prefix"]) and r["prefix"] == text[lo : p.start]
    small = "def f(a)\n    return a\n"
    assert fim_window(small, fix_plans(small, "python", quickfix(small)), 1024) == (0, len(small))


def test_fim_answers_are_put_back_without_repeats_and_a_stray_token_can_go():
    text = "def encode(self, input final=False):\n    pass\n"
    action = quickfix(text)
    gap = text.index(" final")
    insertion = next(p for p in fix_plans(text, "python", action) if (p.start, p.end) == (gap, gap))
    assert fim_answer_candidate(text, insertion, ", final=False):", 2) == text.replace(
        "input final", "input, final"
    )
    stray = "total = add(1, 2))\n"
    action = quickfix(stray)
    mask = next(p for p in fix_plans(stray, "python", action) if stray[p.start : p.end] == ")")
    assert fim_answer_candidate(stray, mask, "", 2) == "total = add(1, 2)\n"
    assert fim_answer_candidate(stray, mask, "", 0) == stray  # a deletion needs room to delete
    indented = "class A:\n    __slots__ = (\n"
    at = indented.index("__slots")
    line = FimPlan({"prefix": indented[:at], "suffix": "\n", "stop": ["\n"], "max_tokens": 16}, at, len(indented) - 1,
                   "", "", "code")  # fmt: skip
    assert fim_answer_candidate(indented, line, "    __slots__ = ()", 2) == "class A:\n    __slots__ = ()\n"


# ---- the scripted engine -----------------------------------------------------------------------
def test_a_script_is_checked_and_served_in_a_cycle(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"complete": "x"}))
    with pytest.raises(ValueError, match="'complete' must be a list of strings"):
        load_script(bad)
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"complete": ["a", "b"], "delay_ms": 5000}))
    engine = ScriptedEngine(script)

    def run(method: str, params: dict, cancel: bool = False) -> dict:
        job = Job(1, method, parse_params(method, params), lambda _: None, lambda *_: None)
        if cancel:
            job.cancel("cancelled")
        return engine.execute(job)

    engine.delay_ms = 0
    assert [run("complete", {"prefix": "x"})["text"] for _ in range(3)] == ["a", "b", "a"]
    engine.delay_ms = 5000
    t0 = time.monotonic()
    stopped = run("complete", {"prefix": "x"}, cancel=True)
    assert stopped["stopped"] == "cancelled" and stopped["text"] == "" and time.monotonic() - t0 < 1
    with pytest.raises(ProtocolError, match="no answers for 'chat'"):
        run("chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert [r["method"] for r in engine.stats()["scripted"]["requests"]][:3] == ["complete"] * 3


def scripted(tmp_path: Path, script: dict) -> list[str]:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    return ["--scripted", str(path)]


async def test_only_a_valid_candidate_is_offered(tmp_path):
    answers = ["((", "    return total(", ":"]
    async with open_engine(args=scripted(tmp_path, {"complete": answers})) as engine:
        req = EditRequest(BROKEN, "python", quickfix(BROKEN), "file:///t.py", "t.py")
        result = await generate_edit(engine, req, GenerateOptions(candidates=8))
        assert result.ok and result.via == "fim"
        assert result.new_text == BROKEN.replace("b)\n", "b):\n")
        assert [a.ok for a in result.attempts][-1] is True and not any(a.ok for a in result.attempts[:-1])
        assert result.edits == [TextEdit(BROKEN.index("b)\n") + 2, BROKEN.index("b)\n") + 2, ":")]
    async with open_engine(args=scripted(tmp_path, {"complete": ["((", "("]})) as engine:
        never = await generate_edit(engine, req, GenerateOptions(candidates=4))
        assert not never.ok and never.new_text is None and never.edits == []
        assert never.reason.startswith("no safe edit in 4 candidates")


async def test_another_servers_diagnostic_is_fixed_by_a_small_edit_only(tmp_path):
    text = "def area(r):\n    return 3.14 * rr * r\n"
    d = Diagnostic(text.index("rr"), text.index("rr") + 2, '"rr" is not defined', 1, "pyright")
    (fix,) = list_actions(text, "python", (d.start, d.start), [d], only=["quickfix"])
    assert not is_syntax_fix(text, "python", fix)
    rewrite = "print('a different statement altogether')"
    async with open_engine(args=scripted(tmp_path, {"complete": [rewrite, rewrite, "r * r"]})) as engine:
        result = await generate_edit(engine, EditRequest(text, "python", fix, "file:///a.py", "a.py"))
        assert result.new_text == text.replace("rr * r", "r * r") and result.candidates_tried == 3
        assert all("rewrites too much" in a.reason for a in result.attempts[:2])


async def test_a_crlf_document_keeps_its_line_ends_and_the_model_sees_lf(tmp_path):
    text = BROKEN.replace("\n", "\r\n")
    async with open_engine(args=scripted(tmp_path, {"complete": [":"]})) as engine:
        result = await generate_edit(
            engine, EditRequest(text, "python", quickfix(text), "file:///c.py", "c.py")
        )
        assert result.new_text == BROKEN.replace("b)\n", "b):\n").replace("\n", "\r\n")
        assert result.edits == [TextEdit(text.index("b)\r\n") + 2, text.index("b)\r\n") + 2, ":")]
        stats = await engine.request("stats")
        assert all(r["prefix_chars"] + r["suffix_chars"] < len(text) for r in stats["scripted"]["requests"])
    plans = fix_plans(text, "python", quickfix(text))
    for plan in plans:
        request = windowed(text, plan, fim_window(text, plans, 1024))
        assert "\r" not in request["prefix"] + request["suffix"]


async def test_an_engine_failure_is_the_reason(tmp_path):
    async with open_engine(args=scripted(tmp_path, {"complete": [":"]})) as engine:
        text = "def total(items):\n    s = 0\n    for i in items:\n        s = s + i\n    return s\n"
        action = next(a for a in list_actions(text, "python", (18, len(text))) if a.operation == "simplify")
        req = EditRequest(text, "python", action, "file:///t.py", "t.py")
        result = await generate_edit(engine, req, GenerateOptions(mode="chat"))
        assert (
            not result.ok
            and "the engine failed" in result.reason
            and "no answers for 'chat'" in result.reason
        )


async def test_a_chat_answer_outside_the_scope_is_refused(tmp_path):
    text = "def total(items):\n    s = 0\n    for i in items:\n        s = s + i\n    return s\n"
    selection = (text.index("    for"), text.index("    return"))
    outside = "<<<<<<< SEARCH\n    return s\n=======\n    return s or 0\n>>>>>>> REPLACE\n"
    inside = "<<<<<<< SEARCH\n        s = s + i\n=======\n        s += i\n>>>>>>> REPLACE\n"
    async with open_engine(args=scripted(tmp_path, {"chat": [outside, "no blocks", inside]})) as engine:
        action = next(a for a in list_actions(text, "python", selection) if a.operation == "simplify")
        result = await generate_edit(engine, EditRequest(text, "python", action, "file:///t.py", "t.py"),
                                     GenerateOptions(mode="chat"))  # fmt: skip
        assert result.ok and result.via == "chat" and result.candidates_tried == 3
        assert result.new_text == text.replace("s = s + i", "s += i")
        assert all(selection[0] <= e.start and e.end <= selection[1] for e in result.edits)
        assert (
            "not a usable edit" in result.attempts[0].reason
            and "not a usable edit" in result.attempts[1].reason
        )


async def test_the_deadline_bounds_the_work(tmp_path):
    async with open_engine(args=scripted(tmp_path, {"complete": ["((("], "delay_ms": 400})) as engine:
        req = EditRequest(BROKEN, "python", quickfix(BROKEN), "file:///t.py", "t.py")
        t0 = time.monotonic()
        result = await generate_edit(engine, req, GenerateOptions(candidates=8, deadline_ms=900))
        assert time.monotonic() - t0 < 2.0
        assert not result.ok and 1 <= result.candidates_tried < 8 and "out of time" in result.reason


# ---- the embedded model ----------------------------------------------------------------------
@pytest.mark.slow
async def test_the_embedded_model_fixes_a_missing_colon_through_fim():
    pytest.importorskip("engine.embedded")
    source = (Path(sysconfig.get_paths()["stdlib"]) / "posixpath.py").read_text()  # held out of training
    header = "def basename(p):\n"
    text = source.replace(header, header.replace("):", ")"))
    async with open_engine() as engine:
        req = EditRequest(text, "python", quickfix(text), "file:///posixpath.py", "posixpath.py")
        result = await generate_edit(engine, req)
        assert result.ok, result.reason
        assert result.new_text == source
        assert len(source) / 3.5 > 4000 and result.attempts[0].cache["prompt_tokens"] < 1100  # the window
        again = await generate_edit(engine, req)  # the same prompt: answered from the engine's caches
        assert again.new_text == source and again.timing["model_ms"] < result.timing["model_ms"]
