"""The agent's view of the files: every path resolved inside the workspace folders, or refused.

Rules (checked in this order; each refusal is a `PathError` whose message names the path and why):
- a path is relative to a workspace folder (the first one holding it; with several folders it may
  start with the folder's name) or absolute inside one; empty paths and NUL bytes are refused;
- a `..` component is refused outright, wherever it would lead;
- an absolute path outside every workspace folder is refused;
- a path whose real location (symlinks resolved) leaves its workspace folder is refused;
- files ignored by `.gitignore` (and `.git`, `node_modules`, virtualenvs, ...) are not read or listed;
- binary files and files larger than `max_bytes` are not read.
The editor's text of an open document wins over the file on disk (`text_of`).

Offers `WorkspaceFiles(roots, text_of=None, max_bytes=...)` with `resolve(path)`, `read(path)`,
`list(path, limit)`, `shown(abs_path)`; `FileRef`; `PathError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ..context.files import ALWAYS_SKIPPED_DIRS, IgnoreRules, is_binary_text, read_source

MAX_FILE_BYTES = 1_000_000


class PathError(ValueError):
    """A path the agent may not use; the message is the tool error the model sees."""


@dataclass(frozen=True)
class FileRef:
    root: str  # the workspace folder (its real path)
    rel: str  # relative to `root`, forward slashes ("" for the root itself)
    path: str  # absolute (inside `root`)
    shown: str  # how the model sees it: `rel`, prefixed with the folder's name when there are several


class WorkspaceFiles:
    """The workspace folders `roots` as the agent may see them (see the module docstring)."""

    def __init__(
        self,
        roots: list[str] | tuple[str, ...],
        text_of: Callable[[str], str | None] | None = None,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.roots = tuple(os.path.realpath(r) for r in roots)
        if not self.roots:
            raise PathError("no workspace folder is open: the agent has no files to work on")
        self.text_of = text_of if text_of is not None else (lambda path: None)
        self.max_bytes = max_bytes
        self._rules = {root: IgnoreRules(root) for root in self.roots}
        names = [os.path.basename(r) for r in self.roots]
        self._prefixed = len(self.roots) > 1 and len(set(names)) == len(names)

    # ---- resolving -------------------------------------------------------------------------
    def shown(self, root: str, rel: str) -> str:
        if not self._prefixed:
            return rel or "."
        name = os.path.basename(root)
        return f"{name}/{rel}" if rel else name

    def _candidates(self, path: str) -> list[tuple[str, str]]:
        """(root, rel) pairs the path may mean, best first."""
        if os.path.isabs(path):
            found = []
            for root in self.roots:
                rel = os.path.relpath(os.path.normpath(path), root)
                if rel != ".." and not rel.startswith("../"):
                    found.append((root, "" if rel == "." else rel))
            if not found:
                raise PathError(
                    f"{path!r} is outside the workspace folders; use a path inside {self._where()}"
                )
            return sorted(found, key=lambda c: -len(c[0]))  # the innermost folder
        rel = os.path.normpath(path)
        rel = "" if rel == "." else rel
        found = [(root, rel) for root in self.roots]
        if self._prefixed:
            head, _, rest = rel.partition("/")
            found = [(r, rest) for r in self.roots if os.path.basename(r) == head] + found
        return found

    def _where(self) -> str:
        return ", ".join(self.roots)

    def resolve(self, path: object, *, must_exist: bool = True) -> FileRef:
        """The workspace file or folder `path` names; `PathError` when it may not be used."""
        if not isinstance(path, str) or not path.strip():
            raise PathError(f"the path must be a non-empty string, got {path!r}")
        path = path.strip().replace("\\", "/")
        if "\0" in path:
            raise PathError(f"the path {path!r} contains a NUL byte")
        if path.startswith("file://"):
            path = path[len("file://") :]
        if ".." in path.split("/"):
            raise PathError(f"{path!r} contains '..'; paths must stay inside the workspace")
        candidates = self._candidates(path)
        for root, rel in candidates:
            if os.path.lexists(os.path.join(root, rel) if rel else root):
                return self._confined(root, rel, path)
        if must_exist:
            raise PathError(f"{path!r} does not exist in the workspace")
        return self._confined(*candidates[0], path)

    def _confined(self, root: str, rel: str, given: str) -> FileRef:
        full = os.path.join(root, rel) if rel else root
        real = os.path.realpath(full)
        if real != root and not real.startswith(root + os.sep):
            raise PathError(f"{given!r} leads outside the workspace (through a symbolic link); refused")
        rel = rel.replace(os.sep, "/")
        if rel and self._rules[root].is_ignored(rel, is_dir=os.path.isdir(real)):
            raise PathError(
                f"{given!r} is ignored by .gitignore (or is a tool folder such as .git); not used"
            )
        return FileRef(root, rel, full, self.shown(root, rel))

    # ---- reading -------------------------------------------------------------------------
    def read(self, path: object) -> tuple[FileRef, str]:
        """The file and its text (the editor's, when it is open there)."""
        ref = self.resolve(path)
        if os.path.isdir(ref.path):
            raise PathError(f"{ref.shown!r} is a folder; use list_files to see what it holds")
        text = self.text_of(ref.path)
        if text is None:
            text = read_source(ref.path, self.max_bytes)
            if text is None:
                size = os.path.getsize(ref.path) if os.path.exists(ref.path) else 0
                why = f"larger than {self.max_bytes} bytes" if size > self.max_bytes else "a binary file"
                raise PathError(f"{ref.shown!r} is {why}; not read")
        elif is_binary_text(text):
            raise PathError(f"{ref.shown!r} is a binary file; not read")
        return ref, text

    def list(self, path: object = ".", limit: int = 200) -> tuple[list[str], bool]:
        """Files under the folder `path` (recursively, sorted, folders first by depth), shown
        paths; and whether the listing was cut at `limit`."""
        ref = self.resolve(path if path not in (None, "") else ".")
        if not os.path.isdir(ref.path):
            return [ref.shown], False
        out: list[str] = []
        stack = [ref.rel]
        while stack:
            rel_dir = stack.pop(0)
            try:
                with os.scandir(os.path.join(ref.root, rel_dir)) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    if entry.is_symlink() and not self._inside(ref.root, entry.path):
                        continue
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                if is_dir and (entry.name in ALWAYS_SKIPPED_DIRS or _is_virtualenv(entry.path)):
                    continue
                if self._rules[ref.root].is_ignored(rel, is_dir=is_dir):
                    continue
                if is_dir:
                    stack.append(rel)
                    continue
                out.append(self.shown(ref.root, rel))
                if len(out) >= limit:
                    return out, True
        return out, False

    @staticmethod
    def _inside(root: str, path: str) -> bool:
        real = os.path.realpath(path)
        return real == root or real.startswith(root + os.sep)


def _is_virtualenv(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))
