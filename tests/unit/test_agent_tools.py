"""The agent's tools on a real workspace: confinement (`..`, absolute paths, symlinks out,
.gitignore, binary files), what each tool answers, edits validated like code actions, the
grammars that keep calls inside the workspace (checked through llguidance with the embedded
model's tokenizer), the applyEdit a proposed edit becomes, conversations and transcripts."""

from __future__ import annotations

import json
import os
import re

import pytest

from engine.chat.constrain import Constraint
from engine.embedded import embedded_model_dir
from engine.tokenizer import Tokenizer
from mellum_lsp.agent.consent import ANNOTATION_ID, apply_edit_params, outcome
from mellum_lsp.agent.conversation import ConversationError, Conversations, id_of_uri, transcript_uri
from mellum_lsp.agent.grounding import call_grammar, line_runs_pattern, regex_literal, replacement_grammar
from mellum_lsp.agent.paths import PathError, WorkspaceFiles
from mellum_lsp.agent.tools import Toolbox, ToolError
from mellum_lsp.agent.transcript import render
from mellum_lsp.context import RepoIndex

BROKEN = "def area(width, height)\n    return width * height\n\n\ndef perimeter(width, height):\n    return 2 * (width + height)\n"
MAIN = "from geometry import area\n\n\ndef describe(w, h):\n    return f'area {area(w, h)}'\n"


@pytest.fixture
def outside(tmp_path):
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.py").write_text("TOKEN = 'do not read'\n")
    return out


@pytest.fixture
def repo(tmp_path, outside):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (root / "geometry.py").write_text(BROKEN)
    (root / "main.py").write_text(MAIN)
    (root / "pkg" / "util.py").write_text("def shout(text):\n    return text.upper()\n")
    (root / ".gitignore").write_text("ignored.py\nbuild/\n")
    (root / "ignored.py").write_text("X = 1\n")
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text("Y = 2\n")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    os.symlink(outside / "secret.py", root / "link_out.py")
    os.symlink(outside, root / "dir_out")
    os.symlink(root / "main.py", root / "link_in.py")
    return root


@pytest.fixture
def files(repo):
    return WorkspaceFiles([str(repo)])


@pytest.fixture
def toolbox(repo, files):
    index = RepoIndex(str(repo))
    index.build()
    return Toolbox(files, [index], "block")


# ---- confinement -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, why",
    [
        ("../outside/secret.py", "'..'"),
        ("pkg/../../outside/secret.py", "'..'"),
        ("..", "'..'"),
        ("link_out.py", "symbolic link"),
        ("dir_out/secret.py", "symbolic link"),
        ("ignored.py", ".gitignore"),
        ("build/out.py", ".gitignore"),
        (".git/config", ".git"),
        ("", "non-empty"),
        ("a\0b", "NUL"),
        ("nope.py", "does not exist"),
    ],
)
def test_paths_that_escape_or_are_hidden_are_refused(files, path, why):
    with pytest.raises(PathError, match=re.escape(why)):
        files.read(path)


def test_absolute_paths_outside_are_refused_and_inside_accepted(files, repo, outside):
    with pytest.raises(PathError, match="outside the workspace"):
        files.read(str(outside / "secret.py"))
    with pytest.raises(PathError, match="outside the workspace"):
        files.read("/etc/passwd")
    ref, text = files.read(str(repo / "main.py"))
    assert (ref.shown, text) == ("main.py", MAIN)


def test_binary_and_oversized_files_are_not_read(repo):
    files = WorkspaceFiles([str(repo)], max_bytes=40)
    with pytest.raises(PathError, match="binary"):
        files.read("blob.bin")
    with pytest.raises(PathError, match="larger than 40 bytes"):
        files.read("geometry.py")


def test_a_symlink_inside_the_workspace_is_followed(files):
    ref, text = files.read("link_in.py")
    assert ref.shown == "link_in.py" and text == MAIN


def test_the_editors_text_wins_over_the_disk(repo):
    files = WorkspaceFiles([str(repo)], text_of=lambda p: "EDITED = 1\n" if p.endswith("main.py") else None)
    assert files.read("main.py")[1] == "EDITED = 1\n"
    assert files.read("geometry.py")[1] == BROKEN


def test_listing_leaves_out_ignored_hidden_and_escaping_entries(files):
    listed, cut = files.list(".")
    assert not cut
    assert set(listed) == {".gitignore", "geometry.py", "main.py", "link_in.py", "blob.bin", "pkg/util.py"}
    assert files.list("pkg")[0] == ["pkg/util.py"]
    with pytest.raises(PathError):
        files.list("../outside")


def test_two_workspace_folders_are_told_apart_by_name(tmp_path):
    a, b = tmp_path / "alpha", tmp_path / "beta"
    for root, text in ((a, "A = 1\n"), (b, "B = 2\n")):
        root.mkdir()
        (root / "same.py").write_text(text)
    files = WorkspaceFiles([str(a), str(b)])
    assert files.read("beta/same.py") == (files.resolve("beta/same.py"), "B = 2\n")
    assert files.read("alpha/same.py")[0].shown == "alpha/same.py"


# ---- the tools -----------------------------------------------------------------------------
def test_read_file_shows_the_text_and_its_syntax_problems(toolbox):
    result = toolbox.read_file({"path": "geometry.py"})
    assert result.text.startswith("geometry.py, lines 1-6 of 6; syntax: syntax error: expected ':' (line 1)")
    assert BROKEN in result.text
    with pytest.raises(ToolError, match="'..'"):
        toolbox.read_file({"path": "../outside/secret.py"})
    with pytest.raises(ToolError, match="unknown argument"):
        toolbox.read_file({"path": "main.py", "mode": "w"})
    with pytest.raises(ToolError, match="missing"):
        toolbox.read_file({})


def test_read_file_pages_long_files(repo, files):
    (repo / "long.py").write_text("".join(f"X{i} = {i}\n" for i in range(1000)))
    text = Toolbox(files).read_file({"path": "long.py"}).text
    assert "lines 1-400 of 1000" in text and "read_file with start_line" in text
    assert "X399 = 399" in text and "X400 = 400" not in text
    assert "lines 990-1000" in Toolbox(files).read_file({"path": "long.py", "start_line": 990}).text


def test_search_find_symbol_and_syntax_check(toolbox):
    assert "pkg/util.py, lines 1-" in toolbox.search({"query": "shout upper"}).text
    assert "pkg/util.py:1-2 function def shout(text)" in toolbox.find_symbol({"name": "shout"}).text
    assert "no definition named 'nothing'" in toolbox.find_symbol({"name": "nothing"}).text
    check = toolbox.syntax_check({"path": "geometry.py"}).text
    assert (
        check.startswith("geometry.py:1: syntax error: expected ':'") and "def area(width, height)" in check
    )
    assert toolbox.syntax_check({"path": "main.py"}).text == "main.py: no syntax errors"
    assert "ignored.py" not in toolbox.search({"query": "X"}).text


def test_an_edit_must_apply_and_validate_like_a_code_action(toolbox):
    with pytest.raises(ToolError, match="read geometry.py with read_file before"):
        toolbox.prepare_edit({"path": "geometry.py", "search": "def area(width, height)\n", "replace": "x\n"})
    toolbox.read_file({"path": "geometry.py"})
    fixed = toolbox.prepare_edit(
        {
            "path": "geometry.py",
            "search": "def area(width, height)\n",
            "replace": "def area(width, height):\n",
        }
    )
    assert fixed.new == BROKEN.replace("height)\n", "height):\n", 1)
    with pytest.raises(ToolError, match="not in the code"):
        toolbox.prepare_edit({"path": "geometry.py", "search": "nothing like it\n", "replace": "x\n"})
    with pytest.raises(ToolError, match="found 2 times"):
        toolbox.prepare_edit({"path": "geometry.py", "search": "(width, height)", "replace": "(w, h)"})
    with pytest.raises(ToolError, match="not offered to the user"):
        toolbox.prepare_edit({"path": "geometry.py", "search": "    return 2 * (width + height)\n",
                              "replace": "    return 2 * (width + \n"})  # fmt: skip


def test_the_fim_format_names_only_lines_with_a_syntax_error(toolbox):
    toolbox.read_file({"path": "geometry.py"})
    region = toolbox.region({"path": "geometry.py", "search": "def area(width, height)\n"})
    action = toolbox.fix_action(region)
    assert action.operation == "fix" and action.diagnostic.message == "syntax error: expected ':'"
    clean = toolbox.region({"path": "geometry.py", "search": "def perimeter(width, height):\n"})
    with pytest.raises(ToolError, match="hold no syntax error"):
        toolbox.fix_action(clean)


def test_grounded_schemas_offer_only_calls_that_tell_something_new(toolbox):
    names = dict(toolbox.grounded(toolbox.offered()))
    assert "propose_edit" not in names  # nothing read yet
    assert "geometry.py" in names["read_file"]["properties"]["path"]["enum"]
    assert set(names["list_files"]["properties"]["path"]["enum"]) == {".", "pkg/"}
    toolbox.read_file({"path": "geometry.py"})
    toolbox.list_files({"path": "."})
    names = dict(toolbox.grounded(toolbox.offered()))
    assert "geometry.py" not in names["read_file"]["properties"]["path"]["enum"]
    assert names["list_files"]["properties"]["path"]["enum"] == ["pkg/"]
    edit = names["propose_edit"]["properties"]
    assert edit["path"] == {"const": "geometry.py"} and edit["search"]["pattern"].startswith("^(?:")


# ---- grammars through llguidance -------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_folder(embedded_model_dir())


def accepts(tok, constraint: Constraint, text: str) -> bool:
    for t in tok.encode(text):
        if not constraint.mask()[t]:
            return False
        constraint.advance(t)
    return constraint.accepting


def pattern_schema(pattern: str) -> dict:
    return {"type": "object", "properties": {"s": {"type": "string", "pattern": pattern}}, "required": ["s"],
            "additionalProperties": False}  # fmt: skip


def test_line_runs_match_exactly_the_unique_runs(tok):
    text = 'x = {"a": [1, 2]}  # (weird) $chars^ \\ end\nreturn x\nreturn x\ny = 3\n    return x\n'
    pattern = line_runs_pattern(text, max_lines=2)
    lines = text.splitlines(keepends=True)
    good = [lines[0], lines[0] + lines[1], lines[3], lines[3] + lines[4], "return x\ny = 3\n", lines[4]]
    bad = ["return x\n", "y = 3\n    return x\nextra\n", "x = 1\n", ""]  # ambiguous, too long, absent
    for run in good:
        assert accepts(tok, Constraint.json_schema(tok, pattern_schema(pattern)), json.dumps({"s": run})), run
    for run in bad:
        assert not accepts(
            tok, Constraint.json_schema(tok, pattern_schema(pattern)), json.dumps({"s": run})
        ), run
    covering = line_runs_pattern(text, max_lines=2, covering={3})
    assert accepts(tok, Constraint.json_schema(tok, pattern_schema(covering)), json.dumps({"s": lines[3]}))
    assert not accepts(
        tok, Constraint.json_schema(tok, pattern_schema(covering)), json.dumps({"s": lines[0]})
    )
    assert regex_literal("a.b\n") == "a\\.b\\n"


def test_call_and_replacement_grammars(tok):
    grammar = call_grammar([("read_file", {"type": "object", "properties": {"path": {"enum": ["a.py"]}},
                                           "required": ["path"], "additionalProperties": False})])  # fmt: skip
    assert accepts(
        tok,
        Constraint.lark(tok, grammar),
        '<tool_call>{"name": "read_file", "arguments": {"path": "a.py"}}</tool_call>',
    )
    assert not accepts(
        tok,
        Constraint.lark(tok, grammar),
        '<tool_call>{"name": "read_file", "arguments": {"path": "../x"}}</tool_call>',
    )
    block = replacement_grammar("def f(x)\n", 2)
    assert accepts(
        tok, Constraint.lark(tok, block), "<<<<<<< SEARCH\ndef f(x)\n=======\ndef f(x):\n>>>>>>> REPLACE\n"
    )
    assert not accepts(
        tok, Constraint.lark(tok, block), "<<<<<<< SEARCH\ndef g(x)\n=======\n>>>>>>> REPLACE\n"
    )
    assert not accepts(
        tok, Constraint.lark(tok, block), "<<<<<<< SEARCH\ndef f(x)\n=======\n1\n2\n3\n>>>>>>> REPLACE\n"
    )


# ---- consent, conversations, transcripts -----------------------------------------------------
def test_a_proposed_edit_is_an_annotated_apply_edit_that_needs_confirmation():
    old, new = "z = 0\na = '😀'; b = 1\n", "z = 0\na = '😀'; b = 2\n"  # the emoji is 2 UTF-16 units
    params = apply_edit_params(
        "file:///w/x.py", old, new, version=7, encoding="utf-16", description="edit of x.py"
    )
    edit = params["edit"]
    assert edit["changeAnnotations"][ANNOTATION_ID] == {"label": "Mellum", "needsConfirmation": True,
                                                        "description": "edit of x.py"}  # fmt: skip
    (change,) = edit["documentChanges"]
    assert change["textDocument"] == {"uri": "file:///w/x.py", "version": 7}
    assert change["edits"] == [{"range": {"start": {"line": 1, "character": 14}, "end": {"line": 1, "character": 15}},
                                "newText": "2", "annotationId": ANNOTATION_ID}]  # fmt: skip
    plain = apply_edit_params("file:///w/x.py", old, new, version=None, document_changes=False)
    assert list(plain["edit"]) == ["changes"]
    assert outcome({"applied": True}).applied
    refused = outcome({"applied": False})
    assert not refused.applied and "refused" in refused.reason
    assert outcome({"applied": False, "failureReason": "stale"}).reason == "stale"


def test_conversations_by_id_and_transcripts():
    store = Conversations(capacity=2)
    a = store.new("chat")
    assert id_of_uri(transcript_uri(a.id)) == a.id and id_of_uri("file:///x.md") is None
    a.add("user", "What does f do?", about="x.py, lines 1-2")
    a.add("answer", "It adds.")
    text = render(a)
    assert (
        text.startswith("# Mellum chat")
        and "## You\n\nWhat does f do?" in text
        and "## Mellum\n\nIt adds." in text
    )
    b, c = store.new(), store.new()
    assert a.id not in store and b.id in store and c.id in store  # the least recently used went
    assert store.reset(b.id) and not store.reset(b.id)
    with pytest.raises(ConversationError, match="no conversation"):
        store.get(b.id)
