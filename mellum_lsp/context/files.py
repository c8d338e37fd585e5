"""Workspace walking that honours .gitignore, and reading source files safely.

Offers:
- `IgnorePattern.parse(line)` / `parse_gitignore(text)`: gitignore(5) patterns compiled to regexes
  (negation `!`, directory-only `foo/`, anchored `/foo` and `a/b`, `*`, `?`, `[...]`, `**`).
- `IgnoreRules`: the nested .gitignore files of a workspace (plus `.git/info/exclude` and extra
  patterns), loaded lazily per directory; `is_ignored(path)` checks a path and its parents.
- `walk_files(root, config)`: relative posix paths of the non-ignored files, sorted, pruning
  ignored directories, `.git`, `node_modules`, `__pycache__` and virtualenvs.
- `read_source(path, max_bytes)`: the file's text, or None for binary (NUL in the first 8 KB)
  and oversized files.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

ALWAYS_SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".nox", ".mypy_cache",
     ".pytest_cache", ".ruff_cache", ".hypothesis", ".idea", ".vscode"}
)  # fmt: skip
BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class WalkConfig:
    """Limits of a workspace walk."""

    max_file_bytes: int = 1_000_000
    max_files: int = 50_000
    extra_ignores: tuple[str, ...] = ()  # gitignore-style patterns applied at the workspace root
    follow_symlinks: bool = False

    def __post_init__(self) -> None:
        if self.max_file_bytes <= 0:
            raise ValueError(f"max_file_bytes must be positive, got {self.max_file_bytes}")
        if self.max_files <= 0:
            raise ValueError(f"max_files must be positive, got {self.max_files}")


@dataclass(frozen=True)
class IgnorePattern:
    """One gitignore line, compiled; `matches` takes a path relative to the .gitignore's directory."""

    source: str
    regex: re.Pattern[str]
    negated: bool
    dir_only: bool

    @classmethod
    def parse(cls, line: str) -> IgnorePattern | None:
        """None for blank lines and comments."""
        line = line.rstrip("\n").rstrip("\r")
        line = _strip_trailing_spaces(line)
        if not line or line.startswith("#"):
            return None
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        elif line.startswith("\\!") or line.startswith("\\#"):
            line = line[1:]
        dir_only = line.endswith("/") and not line.endswith("\\/")
        line = line.rstrip("/") if dir_only else line
        if not line:
            return None
        anchored = "/" in line  # a slash at the start or in the middle anchors the pattern
        line = line.lstrip("/")
        body = _translate(line)
        regex = re.compile(("^" if anchored else "^(?:.*/)?") + body + "$", re.DOTALL)
        return cls(source=line, regex=regex, negated=negated, dir_only=dir_only)

    def matches(self, rel_path: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        return self.regex.match(rel_path) is not None


def _strip_trailing_spaces(line: str) -> str:
    """Trailing spaces are dropped unless escaped with a backslash."""
    stripped = line.rstrip(" ")
    if stripped.endswith("\\") and len(stripped) < len(line):
        return stripped[:-1] + " "
    return stripped


def _translate(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            stars = j - i
            at_start = i == 0 or pattern[i - 1] == "/"
            at_end = j == n or pattern[j] == "/"
            if stars == 2 and at_start and at_end:
                if j == n:  # `**` at the end (`a/**`) or alone: everything below
                    out.append(".*")
                else:  # `**/`: zero or more directories
                    out.append("(?:.*/)?")
                    j += 1
            else:  # other runs of asterisks are plain `*`
                out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal `[`
                out.append("\\[")
                i += 1
                continue
            inner = pattern[i + 1 : j]
            if inner[:1] in ("!", "^"):
                inner = "^" + inner[1:]
            out.append("[" + inner.replace("\\", "\\\\") + "]")
            i = j + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def parse_gitignore(text: str) -> tuple[IgnorePattern, ...]:
    return tuple(p for p in (IgnorePattern.parse(line) for line in text.split("\n")) if p is not None)


def match_patterns(patterns: tuple[IgnorePattern, ...], rel_path: str, is_dir: bool) -> bool | None:
    """True (ignored), False (re-included by `!`) or None (no pattern matches); the last match wins."""
    result = None
    for pattern in patterns:
        if pattern.matches(rel_path, is_dir):
            result = not pattern.negated
    return result


class IgnoreRules:
    """The ignore rules of one workspace: root extras, `.git/info/exclude`, nested .gitignore files.

    Patterns of deeper .gitignore files override shallower ones; a path inside an ignored directory
    stays ignored (git never looks inside it). Thread-safe; `invalidate(dir)` drops a cached file.
    """

    def __init__(self, root: str, extra_patterns: tuple[str, ...] = ()) -> None:
        self.root = os.path.abspath(root)
        self._extra = parse_gitignore("\n".join(extra_patterns))
        exclude = os.path.join(self.root, ".git", "info", "exclude")
        self._extra += parse_gitignore(_read_small(exclude))
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[IgnorePattern, ...]] = {}

    def patterns_in(self, rel_dir: str) -> tuple[IgnorePattern, ...]:
        """The patterns of `rel_dir/.gitignore` ('' is the root), empty when there is none."""
        with self._lock:
            cached = self._cache.get(rel_dir)
        if cached is not None:
            return cached
        patterns = parse_gitignore(_read_small(os.path.join(self.root, rel_dir, ".gitignore")))
        if rel_dir == "":
            patterns = self._extra + patterns
        with self._lock:
            self._cache[rel_dir] = patterns
        return patterns

    def invalidate(self, rel_dir: str | None = None) -> None:
        with self._lock:
            if rel_dir is None:
                self._cache.clear()
            else:
                self._cache.pop(rel_dir, None)

    def match(self, rel_path: str, is_dir: bool) -> bool:
        """Whether the rules ignore this path, assuming its parent directories are not ignored."""
        parts = rel_path.split("/")
        ignored = False
        for depth in range(len(parts)):
            base = "/".join(parts[:depth])
            patterns = self.patterns_in(base)
            if patterns:
                result = match_patterns(patterns, "/".join(parts[depth:]), is_dir)
                if result is not None:
                    ignored = result
        return ignored

    def is_ignored(self, rel_path: str, is_dir: bool = False) -> bool:
        """Whether a path (relative, forward slashes) is ignored, itself or through a parent."""
        parts = rel_path.strip("/").split("/")
        for depth in range(1, len(parts)):
            if parts[depth - 1] in ALWAYS_SKIPPED_DIRS or self.match("/".join(parts[:depth]), True):
                return True
        return self.match("/".join(parts), is_dir)


def _read_small(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(1_000_000)
    except OSError:
        return ""


def _is_virtualenv(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def walk_files(
    root: str,
    config: WalkConfig | None = None,
    include: Callable[[str], bool] | None = None,
    rules: IgnoreRules | None = None,
) -> Iterator[str]:
    """Relative posix paths of the workspace's files in sorted order, at most `config.max_files`.

    `include(rel_path)` filters files (e.g. by language) before they count towards the limit.
    Files larger than `config.max_file_bytes` are skipped here; binary files in `read_source`.
    """
    config = config or WalkConfig()
    root = os.path.abspath(root)
    rules = rules or IgnoreRules(root, config.extra_ignores)
    count = 0
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir)) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_symlink() and not config.follow_symlinks:
                    continue
                is_dir = entry.is_dir()
            except OSError:
                continue
            if is_dir:
                if entry.name in ALWAYS_SKIPPED_DIRS or _is_virtualenv(entry.path) or rules.match(rel, True):
                    continue
                subdirs.append(rel)
                continue
            if rules.match(rel, False) or (include is not None and not include(rel)):
                continue
            try:
                if entry.stat().st_size > config.max_file_bytes:
                    continue
            except OSError:
                continue
            yield rel
            count += 1
            if count >= config.max_files:
                return
        stack.extend(reversed(subdirs))


def read_source(path: str, max_bytes: int = 1_000_000) -> str | None:
    """The text of a file, or None if it is missing, larger than `max_bytes` or binary."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError:
        return None
    if len(data) > max_bytes or b"\0" in data[:BINARY_SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace")


def is_binary_text(text: str) -> bool:
    """The text-side check for `read_source`'s binary rule (for buffers that come from the editor)."""
    return "\0" in text[:BINARY_SNIFF_BYTES]
