"""editors/emacs/mellum.el in a real `emacs --batch` (Debian 12: Emacs 28.2 with elpa-eglot 1.9)
over the real `mellum-lsp serve`.

- eglot connects through `mellum-server`, `mellum-inline-mode` turns on, typing (keys through
  the command loop) brings the suggestion as an overlay at point; M-<right> inserts one word and
  keeps the rest shown, TAB inserts the rest; the server's copy of the buffer matches and it
  counted the acceptances.
- Without eglot on the load path (`emacs -Q` skips site-lisp) loading mellum.el is a
  `user-error` that says how to install eglot.
Each run is one Emacs process, under 60 s.
"""

from __future__ import annotations

import subprocess

import pytest
from editor_setup import (
    EMACS_PACKAGE,
    INSTALL_HINT,
    SAMPLE,
    TYPED,
    emacs_has_eglot,
    find_emacs,
    run_emacs,
    with_insert,
)


def _emacs():
    emacs = find_emacs()
    if emacs is None:
        pytest.skip(f"no `emacs` on PATH: {INSTALL_HINT}")
    return emacs


def test_emacs_eglot_overlay_accept(editor_env, make_workspace, tmp_path):
    emacs = _emacs()
    if not emacs_has_eglot(emacs, editor_env.env):
        pytest.skip(
            f"Emacs {emacs.label} cannot load eglot (on Emacs 28: apt install elpa-eglot): {INSTALL_HINT}"
        )
    file = make_workspace({"lines.py": SAMPLE}) / "lines.py"
    run = run_emacs(
        emacs, editor_env.env, file, TYPED, editor_env.settings, tmp_path / "r.json", tmp_path / "home"
    )
    r = run.result
    assert r.get("ok") is True, run.explain()
    assert r["major_mode"] == "python-mode"
    assert r["overlay_at_point"] is True
    shown, word = r["suggestion"], r["word"]
    assert shown and shown.startswith(word) and 0 < len(word) < len(shown), run.explain()
    assert r["rest_shown"] == shown[len(word) :], "accept-word must keep the rest shown"
    assert r["inserted"] == word + r["accepted_rest"], run.explain()
    assert r["after"] == with_insert(r["before"], r["inserted"])
    assert r["before"][-1] == TYPED
    assert not r.get("overlay_after_accept")
    assert r["server_document_matches"] is True
    assert r["session"].get("accepted", 0) >= 1 and r["session"].get("partially_accepted", 0) >= 1, r
    assert run.seconds < 60
    print(f"\nEmacs {r['emacs']} ({r['eglot']}): {run.seconds:.1f} s, connected {r['connected_ms']} ms, "
          f"engine {r['engine_ready_ms']} ms, suggestion {r['suggestion_shown_ms']} ms")  # fmt: skip


def test_emacs_without_eglot_says_how_to_install(tmp_path):
    emacs = _emacs()
    load = f'(condition-case e (load "{EMACS_PACKAGE}") (user-error (princ (cadr e)) (kill-emacs 3)))'
    proc = subprocess.run(
        [emacs.path, "--batch", "-Q", "--eval", load],
        capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "apt install elpa-eglot" in proc.stdout and "package-install" in proc.stdout, proc.stdout
