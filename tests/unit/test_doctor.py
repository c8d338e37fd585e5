"""`mellum-lsp doctor` on this installation: every check passes with the embedded model, a wrong
model folder fails naming it, and the editor snippets carry absolute paths."""

from __future__ import annotations

import os
import subprocess
import sys


def doctor(tmp_path, *args):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))  # a private engine socket folder
    return subprocess.run([sys.executable, "-m", "mellum_lsp.cli", "doctor", *args], capture_output=True,
                          text=True, env=env, timeout=180)  # fmt: skip


def test_doctor_checks_the_engine_round_trip_and_prints_snippets(tmp_path):
    r = doctor(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[ok  ] completion:" in r.stdout and "[ok  ] model:" in r.stdout
    assert 'args = ["serve"]' in r.stdout and "editors/nvim" in r.stdout


def test_doctor_names_a_wrong_model_folder(tmp_path):
    r = doctor(tmp_path, "--model", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "[FAIL] model:" in r.stdout and "nowhere" in r.stdout
