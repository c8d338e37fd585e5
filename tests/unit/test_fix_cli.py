"""`mellum-lsp fix` as a user runs it (a real process, a real engine child: the embedded model or one
whose outputs are forced), its input errors, and the breakages `mellum-lsp bench fix` is made of."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from benchmarks.bench_fix import HELDOUT, KINDS, make_cases
from mellum_lsp.edits import python_compile_problem
from mellum_lsp.fix_cli import main, parse_target, unified_diff

BROKEN = "import os\n\n\ndef add(a, b)\n    total = a + b\n    return total\n\n\nprint(add(1, 2))\n"
FIXED = BROKEN.replace("b)\n", "b):\n")


def fix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mellum_lsp.cli", "fix", *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_targets_and_bad_input_exit_2_with_one_line(tmp_path, capsys):
    assert parse_target("a/b.py:12") == (Path("a/b.py"), 12)
    assert parse_target("c:/x.py") == (Path("c:/x.py"), None)
    assert parse_target("b.py") == (Path("b.py"), None)
    source = tmp_path / "m.py"
    source.write_text(BROKEN)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    for argv, message in [
        ([str(tmp_path / "missing.py")], "cannot read"),
        ([f"{source}:0"], "LINE is 1-based"),
        ([f"{source}:99"], "line 99 is past the end"),
        ([str(notes)], "no grammar for this file's language"),
        ([str(source), "--candidates", "0"], "candidates must be at least 1"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("mellum-lsp fix: ") and message in err and err.count("\n") == 1, err


def test_the_diff_marks_a_missing_final_newline():
    assert unified_diff("a\n", "a", "f.py").endswith("+a\n\\ No newline at end of file\n")


@pytest.mark.slow
def test_fix_prints_a_validated_diff_and_json(tmp_path):
    source = tmp_path / "calc.py"
    source.write_text(BROKEN)
    shown = fix(str(source))
    assert shown.returncode == 0, shown.stderr
    assert (
        shown.stdout.startswith("--- a/calc.py\n+++ b/calc.py\n")
        and "-def add(a, b)\n+def add(a, b):\n" in shown.stdout
    )
    assert source.read_text() == BROKEN  # shown, not applied
    out = fix(f"{source}:4", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"diagnostic", "diff", "valid", "candidates_tried", "timing"} <= set(report)
    assert report["valid"] is True and report["candidates_tried"] >= 1 and report["via"] == "fim"
    assert report["diagnostic"] == {"line": 4, "column": 14, "message": "syntax error: expected ':'"}
    assert report["timing"]["total_ms"] > 0 and report["diff"] == shown.stdout


@pytest.mark.slow
def test_apply_writes_the_shown_fix_and_keeps_line_ends(tmp_path):
    source = tmp_path / "calc.py"
    source.write_bytes(BROKEN.replace("\n", "\r\n").encode())
    done = fix(str(source), "--apply")
    assert done.returncode == 0, done.stderr
    assert "+def add(a, b):" in done.stdout and "applied to" in done.stderr
    assert source.read_bytes() == FIXED.replace("\n", "\r\n").encode()
    again = fix(str(source))
    assert again.returncode == 0 and again.stdout == "" and "no syntax problem" in again.stderr


@pytest.mark.slow
def test_no_valid_candidate_means_no_diff_and_nothing_written(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"complete": ["((", "(a, b) ->"]}))
    socket = tmp_path / "e.sock"
    engine = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--scripted", str(script), "--socket",
                               str(socket), "--idle-exit", "60"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert any(line.startswith("ready ") for line in engine.stderr)
        source = tmp_path / "calc.py"
        source.write_text(BROKEN)
        out = fix(str(source), "--engine", str(socket), "--apply", "--json")
        assert out.returncode == 1
        report = json.loads(out.stdout)
        assert report["valid"] is False and report["diff"] == "" and report["candidates_tried"] == 8
        assert report["reason"].startswith("no safe edit in 8 candidates")
        assert source.read_text() == BROKEN
        elsewhere = fix(f"{source}:1", "--engine", str(socket))
        assert elsewhere.returncode == 1 and "no syntax problem on line 1" in elsewhere.stderr
    finally:
        engine.terminate()
        engine.wait(timeout=10)
        engine.stderr.close()


def test_the_benchmark_breaks_held_out_code_so_that_it_no_longer_compiles():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import corpus

    root = corpus.default_stdlib_root()
    _, heldout = corpus.split_files(corpus.collect_files(root))
    assert set(HELDOUT) == set(heldout)
    cases = make_cases(Path(sysconfig.get_paths()["stdlib"]), 12, seed=3)
    assert sorted({c.kind for c in cases}) == sorted(KINDS) and len(cases) == 12
    for case in cases:
        assert case.path in HELDOUT and python_compile_problem(case.source) is None
        assert python_compile_problem(case.broken) is not None
        changed = [
            i
            for i, (a, b) in enumerate(zip(case.source.split("\n"), case.broken.split("\n"), strict=True))
            if a != b
        ]
        assert changed == [case.line]
