"""The repository index: per-file symbols and retrieval windows, updated one file at a time.

Offers:
- `IndexConfig`: limits (file size, file count), window shape, extra ignores, C include dirs.
- `FileEntry`: one indexed file (text, content hash, language, definitions, imports).
- `analyze_file(path, text, registry, config)`: the pure per-file step (parse, extract, window).
- `RepoIndex`: `build()` walks and indexes a workspace (optionally in worker processes);
  `update_file(path, text)` / `remove_file(path)` re-index one file and update the BM25
  statistics incrementally; lookups for definitions by name, resolved imports and window search.

Thread-safety: one re-entrant lock guards all state. Parsing happens outside the lock and only the
swap-in is locked, so readers (the context builder, possibly on an executor thread) wait at most
for a dictionary update, never for a parse. A `build()` that runs while files are updated replays
those updates after swapping its result in.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import hashlib
import logging
import multiprocessing
import os
import posixpath
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from .files import IgnoreRules, WalkConfig, is_binary_text, read_source, walk_files
from .languages import LanguageRegistry, language_for_path
from .resolve import Layout, go_module_path, resolve_imports
from .retrieval import Bm25Index, FileWindows, WindowHit, make_windows, tokenize
from .symbols import Definition, Import, extract_symbols

logger = logging.getLogger(__name__)
_PARALLEL_MIN_FILES = 2000
_CHUNK_FILES = 250


@dataclass(frozen=True)
class IndexConfig:
    """What gets indexed and how."""

    max_file_bytes: int = 1_000_000
    max_files: int = 50_000
    window_lines: int = 20
    window_stride: int = 10
    extra_ignores: tuple[str, ...] = ()  # gitignore-style patterns, relative to the root
    include_dirs: tuple[str, ...] = ()  # C/C++ include search dirs, relative to the root

    def __post_init__(self) -> None:
        if self.window_lines <= 0 or self.window_stride <= 0 or self.window_lines % self.window_stride:
            raise ValueError(
                f"window_lines ({self.window_lines}) must be a positive multiple of window_stride ({self.window_stride})"
            )

    def walk_config(self) -> WalkConfig:
        return WalkConfig(
            max_file_bytes=self.max_file_bytes, max_files=self.max_files, extra_ignores=self.extra_ignores
        )


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One indexed file; `path` is relative to the workspace root with forward slashes."""

    path: str
    language: str
    text: str
    hash: str
    definitions: tuple[Definition, ...]
    imports: tuple[Import, ...]


@dataclass(frozen=True)
class FileAnalysis:
    entry: FileEntry
    windows: FileWindows


@dataclass(frozen=True)
class BuildStats:
    files: int
    windows: int
    definitions: int
    seconds: float
    workers: int


def content_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=16).hexdigest()


def analyze_file(
    path: str, text: str, registry: LanguageRegistry, config: IndexConfig
) -> FileAnalysis | None:
    """Parse and window one file; None when its language is not supported."""
    language = language_for_path(path, text)
    if language is None:
        return None
    source = text.encode("utf-8", errors="surrogatepass")
    definitions, imports = extract_symbols(registry, language, source)
    entry = FileEntry(path, language, text, content_hash(text), definitions, imports)
    return FileAnalysis(entry, make_windows(text, config.window_lines, config.window_stride))


def _drain(analyses: list[FileAnalysis]):
    """(path, windows) of each analysis, dropping the list's reference as it goes."""
    for i, analysis in enumerate(analyses):
        analyses[i] = None
        yield analysis.entry.path, analysis.windows


def _is_go_mod(path: str) -> bool:
    return posixpath.basename(path) == "go.mod"


def _indexable(path: str) -> bool:
    return language_for_path(path) is not None or _is_go_mod(path)


def _analyze_paths(
    root: str, paths: list[str], config: IndexConfig, registry: LanguageRegistry | None = None
):
    """Read and analyse files: FileAnalysis for sources, (path, text) for go.mod files."""
    registry = registry or LanguageRegistry()
    out: list[FileAnalysis | tuple[str, str]] = []
    for rel in paths:
        text = read_source(os.path.join(root, rel), config.max_file_bytes)
        if text is None:
            continue
        if _is_go_mod(rel):
            out.append((rel, text))
            continue
        analysis = analyze_file(rel, text, registry, config)
        if analysis is not None:
            out.append(analysis)
    return out


class RepoIndex:
    """Symbols and retrieval windows of one workspace (see the module docstring)."""

    def __init__(
        self, root: str, config: IndexConfig | None = None, registry: LanguageRegistry | None = None
    ):
        self.root = os.path.abspath(root)
        self.config = config or IndexConfig()
        self.registry = registry or LanguageRegistry()
        self._lock = threading.RLock()
        self._ignore = IgnoreRules(self.root, self.config.extra_ignores)
        self._reset()
        self._building = False
        self._pending: dict[str, str | None] = {}
        self._version = 0  # monotonic, across rebuilds too
        self._path_versions: dict[str, int] = {}
        self._seq = 0  # orders concurrent updates of one path: the last one started wins
        self._latest: dict[str, int] = {}

    def _reset(self) -> None:
        self._files: dict[str, FileEntry] = {}
        self._bm25 = Bm25Index()
        self._layout = Layout()
        self._defs_by_name: dict[str, list[tuple[str, Definition]]] = {}
        self._resolved: dict[str, tuple[str, ...]] = {}

    # -- paths ------------------------------------------------------------------------------

    def relpath(self, path: str) -> str | None:
        """`path` (absolute, relative to the root, or a file:// URI) relative to the root; None if outside."""
        if path.startswith("file://"):
            path = unquote(urlparse(path).path)
        path = path.replace("\\", "/")
        if os.path.isabs(path):
            rel = os.path.relpath(path, self.root).replace(os.sep, "/")
        else:
            rel = path
        rel = posixpath.normpath(rel)
        if rel == "." or rel == ".." or rel.startswith("../"):
            return None
        return rel

    # -- building ---------------------------------------------------------------------------

    def build(self, workers: int | None = None) -> BuildStats:
        """Walk the workspace and index every supported, non-ignored file from scratch.

        `workers`: processes for parsing; None picks one per spare CPU for workspaces of 2,000+
        files on machines with 4+ CPUs, else parses in this process.
        """
        t0 = time.perf_counter()
        with self._lock:
            self._building = True
            self._pending = {}
        try:
            self._ignore.invalidate()
            paths = list(walk_files(self.root, self.config.walk_config(), _indexable, self._ignore))
            # processes pay off only with spare cores (measured with benchmarks/bench_index.py)
            if workers is None:
                cpus = os.cpu_count() or 1
                workers = min(cpus - 1, 8) if len(paths) >= _PARALLEL_MIN_FILES and cpus >= 4 else 1
            results, workers = self._analyze_all(paths, max(1, workers))
            with self._lock:
                self._reset()
                analyses = []
                for item in results:
                    if isinstance(item, tuple):
                        self._set_go_mod(*item)
                    else:
                        analyses.append(item)
                        self._add_entry(item.entry)
                del results  # let bulk_load free each file's windows once they are copied
                self._bm25.bulk_load(_drain(analyses))
                self._version += 1
                pending, self._pending, self._building = self._pending, {}, False
        finally:
            with self._lock:
                self._building = False
        for path, text in pending.items():
            if text is None:
                self.remove_file(path)
            else:
                self.update_file(path, text)
        with self._lock:
            n_windows = self._bm25.stats()[0]
            n_defs = sum(len(e.definitions) for e in self._files.values())
            n_files = len(self._files)
        return BuildStats(n_files, n_windows, n_defs, time.perf_counter() - t0, workers)

    def _analyze_all(
        self, paths: list[str], workers: int
    ) -> tuple[list[FileAnalysis | tuple[str, str]], int]:
        """The analyses of `paths` (in order) and the number of processes that made them."""
        if workers <= 1 or len(paths) < 2 * _CHUNK_FILES:
            return _analyze_paths(self.root, paths, self.config, self.registry), 1
        chunks = [paths[i : i + _CHUNK_FILES] for i in range(0, len(paths), _CHUNK_FILES)]
        # spawn, not fork: the server process has threads (asyncio executors) that fork would copy.
        context = multiprocessing.get_context("spawn")
        try:
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                parts = pool.map(
                    _analyze_paths, [self.root] * len(chunks), chunks, [self.config] * len(chunks)
                )
                return [item for part in parts for item in part], workers
        except (concurrent.futures.process.BrokenProcessPool, OSError) as exc:
            # e.g. a script without an `if __name__ == "__main__"` guard, or no /dev/shm: go serial
            logger.warning("index build: worker processes failed (%s); parsing in this process", exc)
            return _analyze_paths(self.root, paths, self.config, self.registry), 1

    # -- incremental updates ----------------------------------------------------------------

    def update_file(self, path: str, text: str | None = None) -> bool:
        """(Re-)index one file from `text`, or from disk when `text` is None; True if the index changed.

        Ignored, unsupported, binary and oversized files are not indexed (and dropped if they were).
        """
        rel = self.relpath(path)
        if rel is None:
            return False
        with self._lock:
            self._seq += 1
            ticket = self._latest[rel] = self._seq
            if self._building:
                self._pending[rel] = (
                    text if text is not None else read_source(self._abs(rel), self.config.max_file_bytes)
                )
        if posixpath.basename(rel) == ".gitignore":
            self._ignore.invalidate(posixpath.dirname(rel))
            return False
        if text is None:
            text = read_source(self._abs(rel), self.config.max_file_bytes)
            if text is None:
                return self.remove_file(rel)
        if self._ignore.is_ignored(rel) or not _indexable(rel):
            return False
        if _is_go_mod(rel):
            with self._lock:
                self._set_go_mod(rel, text)
                self._bump(rel)
            return True
        if (
            is_binary_text(text)
            or len(text.encode("utf-8", errors="surrogatepass")) > self.config.max_file_bytes
        ):
            return self.remove_file(rel)
        with self._lock:
            old = self._files.get(rel)
        if old is not None and old.hash == content_hash(text):
            return False
        analysis = analyze_file(rel, text, self.registry, self.config)
        if analysis is None:
            return False
        with self._lock:
            if self._latest.get(rel) != ticket:
                return False  # a newer update or removal of this path started meanwhile
            self._remove_entry(rel, keep_layout=True)
            self._add_entry(analysis.entry)
            self._bm25.add(rel, analysis.windows)
            self._bump(rel)
        return True

    def remove_file(self, path: str) -> bool:
        """Drop one file (deleted, or no longer indexable); True if it was indexed."""
        rel = self.relpath(path)
        if rel is None:
            return False
        with self._lock:
            self._seq += 1
            self._latest[rel] = self._seq
            if self._building:
                self._pending[rel] = None
            if _is_go_mod(rel):
                if posixpath.dirname(rel) not in self._layout.go_modules:
                    return False
                self._layout.set_go_module(posixpath.dirname(rel), None)
                self._resolved.clear()
                self._bump(rel)
                return True
            if rel not in self._files:
                return False
            self._remove_entry(rel)
            self._bm25.remove(rel)
            self._bump(rel)
            return True

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _bump(self, rel: str) -> None:
        self._version += 1
        self._path_versions[rel] = self._path_versions.get(rel, 0) + 1

    def _set_go_mod(self, rel: str, text: str) -> None:
        self._layout.set_go_module(posixpath.dirname(rel), go_module_path(text))
        self._resolved.clear()

    def _add_entry(self, entry: FileEntry) -> None:
        if entry.path not in self._layout.files:
            self._layout.add(entry.path)
            self._resolved.clear()
        self._files[entry.path] = entry
        for d in entry.definitions:
            self._defs_by_name.setdefault(d.name, []).append((entry.path, d))

    def _remove_entry(self, rel: str, keep_layout: bool = False) -> None:
        old = self._files.pop(rel, None)
        if old is None:
            return
        for name in {d.name for d in old.definitions}:
            remaining = [item for item in self._defs_by_name.get(name, ()) if item[0] != rel]
            if remaining:
                self._defs_by_name[name] = remaining
            else:
                self._defs_by_name.pop(name, None)
        self._resolved.pop(rel, None)
        if not keep_layout:
            self._layout.remove(rel)
            self._resolved.clear()

    # -- lookups ----------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    def __contains__(self, path: str) -> bool:
        rel = self.relpath(path)
        with self._lock:
            return rel in self._files

    def get(self, path: str) -> FileEntry | None:
        rel = self.relpath(path)
        with self._lock:
            return self._files.get(rel) if rel is not None else None

    def paths(self) -> list[str]:
        with self._lock:
            return sorted(self._files)

    @property
    def version(self) -> int:
        """Increases on every change to the index."""
        with self._lock:
            return self._version

    def version_excluding(self, path: str) -> int:
        """Counts changes to every file but `path` (the document being edited)."""
        rel = self.relpath(path)
        with self._lock:
            return self._version - self._path_versions.get(rel, 0)

    def definitions_named(self, name: str) -> list[tuple[str, Definition]]:
        """Definitions called `name`, sorted by (path, line)."""
        with self._lock:
            found = list(self._defs_by_name.get(name, ()))
        return sorted(found, key=lambda item: (item[0], item[1].start_line))

    def resolve_imports(
        self, path: str, imports: Iterable[Import] | None = None, language: str | None = None
    ):
        """Workspace files imported by `path`: from the given imports (e.g. of an unsaved buffer) or the
        indexed ones. Cached per file until the set of indexed files changes."""
        rel = self.relpath(path)
        if rel is None:
            return ()
        with self._lock:
            entry = self._files.get(rel)
            language = language or (entry.language if entry else language_for_path(rel))
            if language is None:
                return ()
            if imports is None:
                cached = self._resolved.get(rel)
                if cached is not None:
                    return cached
                if entry is None:
                    return ()
                resolved = resolve_imports(
                    self._layout, rel, language, entry.imports, self.config.include_dirs
                )
                self._resolved[rel] = resolved
                return resolved
            return resolve_imports(self._layout, rel, language, tuple(imports), self.config.include_dirs)

    def search(
        self,
        query: str | Iterable[str],
        k: int,
        exclude_path: str | None = None,
        exclude_lines: tuple[int, int] | None = None,
    ) -> list[WindowHit]:
        """BM25 search of the code windows; `query` is code (tokenized here) or a list of terms."""
        terms = tokenize(query) if isinstance(query, str) else list(query)
        exclude = self.relpath(exclude_path) if exclude_path else None
        with self._lock:
            return self._bm25.search(terms, k, exclude, exclude_lines)

    def window_scores(self, query: str | Iterable[str]) -> dict[tuple[str, int], float]:
        terms = tokenize(query) if isinstance(query, str) else list(query)
        with self._lock:
            return self._bm25.scores(terms)

    def retrieval_stats(self) -> tuple[int, int, dict[str, int]]:
        """(live windows, total tokens, document frequency per term) of the BM25 index."""
        with self._lock:
            return self._bm25.stats()

    def is_ignored(self, path: str) -> bool:
        rel = self.relpath(path)
        return rel is None or self._ignore.is_ignored(rel)
