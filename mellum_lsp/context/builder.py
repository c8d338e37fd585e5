"""The repository context of one completion request: chunks chosen under a token budget.

Offers `ContextChunk`, `ContextConfig`, `ContextCache`, `estimate_tokens` and `build_context`.

Selection, by priority (each tier capped by a share of the budget, windows take what is left):
1. files imported by the document: whole when small, else their outline (signatures);
2. definitions of identifiers used near the cursor (not the current line, see below);
3. recently edited / viewed snippets of other files;
4. BM25 windows retrieved with the code around the cursor.

Order, for the engine's prefix KV cache (the prompt is context chunks, suffix, prefix, and only its
tail changes while the user types): most stable first. Imported files and outlines sorted by
path, then definitions by (path, line), then retrieval windows by (path, line), then recent
snippets oldest to newest. Typing inside a line keeps the selection identical: the query and the
identifiers exclude the current line, and a `ContextCache` returns the previous selection while
the cursor stays within `region_lines` of where it was computed, the document's imports are the
same, no other file of the index changed and the recent snippets are the same.

Never included: the current document (its prefix and suffix go in the FIM part). Paths are
relative to the workspace root with forward slashes. The budget covers, per chunk, the tokens of
its path and text plus `chunk_overhead_tokens` of framing; it is never exceeded. Callers size it
from the prompt length the model was trained for (`budget.prompt_length`: the engine handshake's
`train_context`, from `mellum_train_context` in the model folder's config.json) minus the file
(`budget.fit_file`) and the generation.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .index import RepoIndex, content_hash
from .languages import language_for_path
from .recent import RecentSnippet, RecentSnippets
from .retrieval import STOPWORDS
from .symbols import extract_symbols, render_outline

CountTokens = Callable[[str], int]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IMPORTISH = re.compile(r"\b(import|from|include|require|use|mod|package)\b")
_KIND_GROUP = {"file": 0, "outline": 0, "definition": 1, "window": 2, "recent_edit": 3, "recent_view": 3}


@dataclass(frozen=True, slots=True)
class ContextChunk:
    """One piece of repository context; `key` hashes path and text (the engine caches token ids by it)."""

    path: str
    text: str
    kind: str  # file, outline, definition, window, recent_edit, recent_view
    key: str


def chunk_key(path: str, text: str) -> str:
    return hashlib.blake2b(
        f"{path}\0{text}".encode("utf-8", errors="surrogatepass"), digest_size=16
    ).hexdigest()


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: one token per 3.5 characters, rounded up."""
    return math.ceil(len(text) / 3.5)


@dataclass(frozen=True)
class ContextConfig:
    query_lines_before: int = 20  # retrieval query: lines above the cursor line ...
    query_lines_after: int = 10  # ... and below it (the cursor line itself is left out)
    identifier_lines_before: int = 12  # identifiers looked up as definitions: lines above ...
    identifier_lines_after: int = 4  # ... and below the cursor line
    region_lines: int = 8  # a cached selection is reused within this many lines of its cursor line
    imports_share: float = 0.45  # budget caps of the tiers; windows take what is left
    definitions_share: float = 0.25
    recent_share: float = 0.15
    whole_file_share: float = 0.25  # an imported file is included whole up to this share ...
    whole_file_min_tokens: int = 256  # ... but at least this many tokens
    max_imports: int = 64
    max_definitions_per_name: int = 2
    max_definition_candidates: int = 8  # names defined more often than this are too ambiguous
    max_definition_lines: int = 40
    max_windows: int = 4096
    chunk_overhead_tokens: int = 4  # framing per chunk in the prompt (file separator, newline)


@dataclass
class _Selection:
    key: tuple
    line: int
    text: str
    imports: tuple[str, ...]
    chunks: list[ContextChunk]


@dataclass
class ContextCache:
    """The last selection per document, and token counts per chunk key. Thread-safe."""

    max_documents: int = 16
    max_token_counts: int = 50_000
    _selections: OrderedDict[str, _Selection] = field(default_factory=OrderedDict)
    _token_counts: dict[tuple[object, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    hits: int = 0
    misses: int = 0

    def _get(self, path: str) -> _Selection | None:
        with self._lock:
            sel = self._selections.get(path)
            if sel is not None:
                self._selections.move_to_end(path)
            return sel

    def _put(self, path: str, sel: _Selection) -> None:
        with self._lock:
            self.misses += 1
            self._selections[path] = sel
            self._selections.move_to_end(path)
            while len(self._selections) > self.max_documents:
                self._selections.popitem(last=False)

    def _reuse(self, sel: _Selection, text: str) -> list[ContextChunk]:
        with self._lock:
            sel.text = text  # the next keystroke is compared with this text
            self.hits += 1
            return list(sel.chunks)

    def count(self, count_tokens: CountTokens, key: str, text: str) -> int:
        with self._lock:
            n = self._token_counts.get((count_tokens, key))
        if n is None:
            n = count_tokens(text)
            with self._lock:
                if len(self._token_counts) >= self.max_token_counts:
                    self._token_counts.clear()
                self._token_counts[(count_tokens, key)] = n
        return n

    def invalidate(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._selections.clear()
            else:
                self._selections.pop(path, None)


# --- the cursor's surroundings -----------------------------------------------------------------


def _line_bounds(text: str, offset: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    return start, len(text) if end < 0 else end


def _lines_before(text: str, line_start: int, n: int) -> list[str]:
    out, end = [], line_start - 1  # `end` is the newline that ends the previous line
    while n > 0 and end >= 0:
        start = text.rfind("\n", 0, end) + 1
        out.append(text[start:end])
        end, n = start - 1, n - 1
    return out[::-1]


def _lines_after(text: str, line_end: int, n: int) -> list[str]:
    out, start = [], line_end + 1
    while n > 0 and start <= len(text) and line_end < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        out.append(text[start:end])
        if end >= len(text):
            break
        start, n = end + 1, n - 1
    return out


def _edit_within_line(old: str, new: str, line_start: int, line_end: int) -> tuple[bool, str]:
    """Whether `new` differs from `old` only inside the line [line_start, line_end) of `new`; and the
    replaced old line (to check whether it was an import)."""
    head, tail = new[:line_start], new[line_end:]
    if not (old.startswith(head) and old.endswith(tail)) or len(old) < len(head) + len(tail):
        return False, ""
    old_line = old[len(head) : len(old) - len(tail)]
    return "\n" not in old_line, old_line


# --- selection ---------------------------------------------------------------------------------


class _Picker:
    """Greedy packing of chunks into the budget, remembering which lines of which files are in."""

    def __init__(self, budget: int, count: Callable[[str, str], int], overhead: int, exclude: str) -> None:
        self.remaining = budget
        self.count, self.overhead, self.exclude = count, overhead, exclude
        self.chosen: list[tuple[tuple, ContextChunk]] = []
        self.keys: set[str] = set()
        self.covered: dict[str, list[tuple[int, int]]] = {}

    def overlaps(self, path: str, start: int, end: int) -> bool:
        return any(a < end and start < b for a, b in self.covered.get(path, ()))

    def add(self, path: str, text: str, kind: str, order: tuple, lines: tuple[int, int], cap: int) -> int:
        """Add a chunk if it fits both the budget and `cap`; returns the tokens it used (0 if not)."""
        if path == self.exclude or not text.strip():
            return 0
        key = chunk_key(path, text)
        if key in self.keys:
            return 0
        cost = self.count(key + ":p", path) + self.count(key, text) + self.overhead
        if cost > self.remaining or cost > cap:
            return 0
        self.remaining -= cost
        self.keys.add(key)
        self.covered.setdefault(path, []).append(lines)
        self.chosen.append(((_KIND_GROUP[kind], *order), ContextChunk(path, text, kind, key)))
        return cost


def _fit(text: str, path: str, count: Callable[[str, str], int], picker: _Picker, cap: int) -> str:
    """`text` cut at a line boundary so that its chunk fits `cap` and the remaining budget."""
    limit = min(cap, picker.remaining) - picker.overhead - count(chunk_key(path, "") + ":p", path)
    lines = text.split("\n")
    for _ in range(6):
        if limit <= 0 or not lines:
            return ""
        cost = count(chunk_key(path, "\n".join(lines)), "\n".join(lines))
        if cost <= limit:
            return "\n".join(lines)
        lines = lines[: max(0, min(len(lines) - 1, int(len(lines) * limit / cost * 0.95)))]
    return ""


def _doc_imports(index: RepoIndex, rel: str | None, text: str, language: str | None) -> tuple[str, ...]:
    if rel is None or language is None:
        return ()
    entry = index.get(rel)
    if entry is not None and entry.hash == content_hash(text):
        return tuple(index.resolve_imports(rel))
    _, imports = extract_symbols(index.registry, language, text.encode("utf-8", errors="surrogatepass"))
    return tuple(index.resolve_imports(rel, imports, language))


def _select(
    index: RepoIndex,
    rel: str,
    text: str,
    line_start: int,
    line_end: int,
    imports: tuple[str, ...],
    budget: int,
    count: Callable[[str, str], int],
    recent: list[RecentSnippet],
    cfg: ContextConfig,
) -> list[ContextChunk]:
    picker = _Picker(budget, count, cfg.chunk_overhead_tokens, rel)
    lines_cache: dict[str, list[str]] = {}

    def lines_of(path: str) -> list[str] | None:
        if path not in lines_cache:
            entry = index.get(path)
            lines_cache[path] = entry.text.split("\n") if entry else None
        return lines_cache[path]

    # 1. imported files: whole or outline
    cap = int(budget * cfg.imports_share)
    whole_limit = max(cfg.whole_file_min_tokens, int(budget * cfg.whole_file_share))
    for path in imports[: cfg.max_imports]:
        entry = index.get(path)
        if entry is None:
            continue
        if (
            estimate_tokens(entry.text) <= 2 * whole_limit
            and count(chunk_key(path, entry.text), entry.text) <= whole_limit
        ):
            used = picker.add(path, entry.text, "file", (path,), (0, 1 << 30), cap)
            if used:
                cap -= used
                continue
        outline = _fit(
            render_outline(entry.text, entry.definitions, entry.language), path, count, picker, cap
        )
        cap -= picker.add(path, outline, "outline", (path,), (-1, -1), cap)

    # 2. definitions of identifiers near the cursor, nearest lines first
    cap = int(budget * cfg.definitions_share)
    before = _lines_before(text, line_start, cfg.identifier_lines_before)
    after = _lines_after(text, line_end, cfg.identifier_lines_after)
    ordered = [*reversed(before), *after]  # roughly by distance from the cursor
    names = dict.fromkeys(
        n for line in ordered for n in _IDENT.findall(line) if len(n) > 2 and n.lower() not in STOPWORDS
    )
    imported = set(imports)
    doc_dir = rel.rsplit("/", 1)[0] if "/" in rel else ""
    for name in names:
        if cap <= 0:
            break
        found = [(p, d) for p, d in index.definitions_named(name) if p != rel]
        if not found or len(found) > cfg.max_definition_candidates:
            continue
        found.sort(
            key=lambda pd: (
                pd[0] not in imported,
                pd[0].rsplit("/", 1)[0] != doc_dir,
                pd[0],
                pd[1].start_line,
            )
        )
        for path, d in found[: cfg.max_definitions_per_name]:
            if picker.overlaps(path, d.start_line, d.end_line + 1):
                continue
            lines = lines_of(path)
            if lines is None:
                continue
            n = d.end_line - d.start_line + 1
            body = (
                "\n".join(lines[d.start_line : d.end_line + 1])
                if n <= cfg.max_definition_lines
                else d.signature
            )
            cap -= picker.add(
                path, body, "definition", (path, d.start_line), (d.start_line, d.end_line + 1), cap
            )

    # 3. recent snippets of other files, most recent first
    cap = int(budget * cfg.recent_share)
    for i in range(len(recent) - 1, -1, -1):
        s = recent[i]
        if picker.overlaps(s.path, s.start_line, s.end_line):
            continue
        cap -= picker.add(s.path, s.text, f"recent_{s.kind}", (i,), (s.start_line, s.end_line), cap)

    # 4. retrieval windows: the rest of the budget
    query = "\n".join(
        _lines_before(text, line_start, cfg.query_lines_before)
        + _lines_after(text, line_end, cfg.query_lines_after)
    )
    k = min(cfg.max_windows, picker.remaining // 64 + 8)
    if query.strip() and picker.remaining > 0:
        for hit in index.search(query, k, exclude_path=rel):
            if picker.remaining <= cfg.chunk_overhead_tokens:
                break
            if picker.overlaps(hit.doc, hit.start, hit.end):
                continue
            lines = lines_of(hit.doc)
            if lines is None:
                continue
            body = "\n".join(lines[hit.start : hit.end])
            picker.add(hit.doc, body, "window", (hit.doc, hit.start), (hit.start, hit.end), picker.remaining)

    return [chunk for _, chunk in sorted(picker.chosen, key=lambda item: item[0])]


def build_context(
    index: RepoIndex,
    doc_path: str,
    text: str,
    offset: int,
    budget_tokens: int,
    count_tokens: CountTokens | None = None,
    recent: RecentSnippets | Iterable[RecentSnippet] | None = None,
    *,
    cache: ContextCache | None = None,
    config: ContextConfig | None = None,
) -> list[ContextChunk]:
    """Context chunks for a completion at `offset` (characters into `text`) of `doc_path`.

    `count_tokens` counts a string's tokens (default: `estimate_tokens`); `recent` supplies recently
    edited/viewed snippets; `cache` keeps the selection stable while typing (see module docstring).
    """
    if budget_tokens <= 0:
        return []
    cfg = config or ContextConfig()
    counter = count_tokens or estimate_tokens
    offset = max(0, min(offset, len(text)))
    rel = index.relpath(doc_path)
    doc_key = rel if rel is not None else doc_path.replace("\\", "/")
    language = language_for_path(doc_key, text)
    line = text.count("\n", 0, offset)
    line_start, line_end = _line_bounds(text, offset)

    recent_items = []
    for s in recent.snippets() if isinstance(recent, RecentSnippets) else list(recent or ()):
        path = index.relpath(s.path) or s.path.replace("\\", "/")
        if path != doc_key:
            recent_items.append(RecentSnippet(path, s.start_line, s.end_line, s.text, s.kind))
    key = (
        budget_tokens,
        count_tokens,
        cfg,
        index.version_excluding(doc_key),
        tuple((s.path, s.start_line, s.end_line, s.kind, hash(s.text)) for s in recent_items),
    )

    previous = cache._get(doc_key) if cache is not None else None
    imports: tuple[str, ...] | None = None
    if previous is not None and previous.key == key and abs(line - previous.line) <= cfg.region_lines:
        same = text == previous.text
        if not same:
            within, old_line = _edit_within_line(previous.text, text, line_start, line_end)
            same = (
                within
                and not _IMPORTISH.search(old_line)
                and not _IMPORTISH.search(text[line_start:line_end])
            )
        if same:
            imports = previous.imports
        else:
            imports = _doc_imports(index, rel, text, language)
        if imports == previous.imports:
            return cache._reuse(previous, text)

    if imports is None:
        imports = _doc_imports(index, rel, text, language)

    def count(key: str, s: str) -> int:
        return cache.count(counter, key, s) if cache is not None else counter(s)

    chunks = _select(
        index, doc_key, text, line_start, line_end, imports, budget_tokens, count, recent_items, cfg
    )
    if cache is not None:
        cache._put(doc_key, _Selection(key, line, text, imports, chunks))
    return chunks
