"""Repository context for FIM completions, from text alone (no engine, model or LSP dependency).

- `RepoIndex` (index.py): per-file definitions, imports and BM25 windows; full and incremental builds.
- `build_context` (builder.py): the chunks to put before the FIM part, under a token budget,
  ordered for prefix-cache reuse; `ContextCache` keeps them stable while the user types.
- `RecentSnippets` (recent.py): recently edited / viewed regions.
- files.py (gitignore-aware walking), languages.py (grammars, queries), symbols.py (extraction,
  outlines), resolve.py (import resolution), retrieval.py (tokenizer, BM25).
"""

from .builder import ContextCache, ContextChunk, ContextConfig, build_context, estimate_tokens
from .index import FileEntry, IndexConfig, RepoIndex
from .recent import RecentSnippet, RecentSnippets

__all__ = [
    "ContextCache",
    "ContextChunk",
    "ContextConfig",
    "FileEntry",
    "IndexConfig",
    "RecentSnippet",
    "RecentSnippets",
    "RepoIndex",
    "build_context",
    "estimate_tokens",
]
