"""Lexical retrieval of code windows with BM25 over identifier tokens.

Offers:
- `tokenize(text)`: identifier-ish terms, lowercased; `getUserName` and `get_user_name` also yield
  `get`, `user`, `name`; keywords common to our languages are dropped.
- `make_windows(text, size, stride)`: a file's windows (line spans) and their term statistics.
- `Bm25Index`: windows of many documents with incremental `add`/`remove` and `search`.

Storage (why it looks like this): a 10,000-file repository (50 MB) has ~200K windows and ~6M
(term, window) postings; Python dicts of that size cost gigabytes and seconds. Postings therefore live in
one immutable CSR *segment* (numpy arrays, built in bulk by `bulk_load` and by `compact`) plus a
small *delta* of per-term `array`s for windows added since; removed windows become tombstones
until the next compaction. Statistics (window count, total length, document frequencies) are kept
exact for live windows, so scores after any sequence of updates equal a fresh build's.
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain

import numpy as np

STOPWORDS = frozenset(
    """if else elif for while do return def class self this const let var function import from as
    in is and or not none null nil true false new int void public private protected static final
    fn pub struct use mut impl func package include define type interface extends implements try
    catch except finally raise throw throws with yield async await break continue switch case
    default pass lambda of to the a an be it on at by char long short unsigned signed bool boolean
    string str float double byte auto enum union typedef sizeof go chan map range defer select
    export module require std mod crate super where match ref move let dyn""".split()
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


@lru_cache(maxsize=1 << 15)  # identifiers repeat (Zipf): a small memo saves most of the splitting
def _terms_of(identifier: str) -> tuple[str, ...]:
    """Terms of one identifier: itself lowercased, then its camelCase/snake_case parts (not numbers)."""
    whole = identifier.lower()
    terms = [whole] if len(whole) >= 2 and whole not in STOPWORDS else []
    parts = _PARTS.findall(identifier)
    if len(parts) > 1:
        lowered = (q.lower() for q in parts if not q.isdigit())
        terms.extend(p for p in lowered if len(p) >= 2 and p not in STOPWORDS and p != whole)
    return tuple(terms)


def tokenize(text: str) -> list[str]:
    """The terms of `text` in order, repeats kept (see `_terms_of`)."""
    return list(chain.from_iterable(map(_terms_of, _IDENT.findall(text))))


@dataclass(frozen=True, eq=False)
class FileWindows:
    """The windows of one document: spans and a compact (term, window, tf) posting list."""

    spans: tuple[tuple[int, int], ...]  # (start line, end line exclusive)
    lengths: tuple[int, ...]  # tokens per window
    terms: tuple[str, ...]  # the document's distinct terms
    term_idx: np.ndarray  # int32 per posting: index into `terms`
    win_idx: np.ndarray  # int32 per posting: index into `spans`
    tf: np.ndarray  # int32 per posting: term frequency in the window

    def window_df(self) -> np.ndarray:
        """Per term of `terms`, the number of this document's windows containing it."""
        return np.bincount(self.term_idx, minlength=len(self.terms)).astype(np.int32)


def window_spans(n_lines: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Windows `[s, min(s + size, n))` every `stride` lines; a window entirely inside the previous
    one (at the end of the file) is dropped."""
    return [
        (s, min(s + size, n_lines))
        for s in range(0, max(n_lines, 1), stride)
        if s == 0 or s + size - stride < n_lines
    ]


def _blocks(text: str, stride: int) -> list[str]:
    """`text` cut into pieces of `stride` lines, as `text.split("\\n")` counts lines."""
    out, start, find = [], 0, text.find
    while True:
        end = start
        for _ in range(stride):
            end = find("\n", end)
            if end < 0:
                out.append(text[start:])
                return out
            end += 1
        out.append(text[start:end])
        start = end


def make_windows(text: str, size: int = 20, stride: int = 10) -> FileWindows:
    """Tokenize `text` once per `stride`-line block and assemble `size`-line windows from blocks."""
    if size <= 0 or stride <= 0 or size % stride:
        raise ValueError(f"window size ({size}) must be a positive multiple of the stride ({stride})")
    n_lines = text.count("\n") + 1
    per = size // stride
    flat: list[str] = []
    offsets = [0]
    for block in _blocks(text, stride):
        flat.extend(tokenize(block))
        offsets.append(len(flat))
    local = dict(zip(dict.fromkeys(flat), range(len(flat)), strict=False))  # term -> id, in first-seen order
    ids = np.fromiter(map(local.__getitem__, flat), np.int64, len(flat))
    spans, lengths, parts, labels = [], [], [], []
    for s, e in window_spans(n_lines, size, stride):
        b = s // stride
        a, z = offsets[b], offsets[min(b + per, len(offsets) - 1)]
        if z == a:
            continue
        labels.append(np.full(z - a, len(spans), np.int64))
        parts.append(ids[a:z])
        spans.append((s, e))
        lengths.append(z - a)
    if not spans:
        empty = np.zeros(0, np.int32)
        return FileWindows((), (), (), empty, empty, empty)
    vocab = max(len(local), 1)
    keys, counts = np.unique(np.concatenate(labels) * vocab + np.concatenate(parts), return_counts=True)
    return FileWindows(
        tuple(spans),
        tuple(lengths),
        tuple(local),
        (keys % vocab).astype(np.int32),
        (keys // vocab).astype(np.int32),
        counts.astype(np.int32),
    )


@dataclass(frozen=True, slots=True)
class WindowHit:
    doc: str
    start: int  # first line, 0-based
    end: int  # line after the last
    score: float


class _Segment:
    """Immutable CSR postings: rows of `ids`/`tfs` per term, `offsets[r]:offsets[r + 1]`."""

    def __init__(self, vocab: dict[str, int], offsets: np.ndarray, ids: np.ndarray, tfs: np.ndarray) -> None:
        self.vocab, self.offsets, self.ids, self.tfs = vocab, offsets, ids, tfs

    @classmethod
    def empty(cls) -> _Segment:
        return cls({}, np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32))

    @classmethod
    def from_postings(
        cls, term_ids: np.ndarray, ids: np.ndarray, tfs: np.ndarray, terms: list[str]
    ) -> _Segment:
        order = np.argsort(term_ids, kind="stable")
        counts = np.bincount(term_ids, minlength=len(terms)) if len(terms) else np.zeros(0, np.int64)
        offsets = np.zeros(len(terms) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls({t: i for i, t in enumerate(terms)}, offsets, ids[order], tfs[order])

    def row(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        r = self.vocab.get(term)
        if r is None:
            return None
        a, b = self.offsets[r], self.offsets[r + 1]
        return self.ids[a:b], self.tfs[a:b]

    def __len__(self) -> int:
        return len(self.ids)


class Bm25Index:
    """BM25 (Okapi, Lucene's non-negative idf) over the windows of many documents.

    Not thread-safe by itself: `RepoIndex` serialises access with its lock.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75, max_query_terms: int = 64) -> None:
        self.k1, self.b, self.max_query_terms = k1, b, max_query_terms
        self._clear()

    def _clear(self) -> None:
        self._segment = _Segment.empty()
        self._delta: dict[str, tuple[array, array]] = {}
        self._delta_postings = 0
        self._refs: list[tuple[str, int, int] | None] = []  # window id -> (doc, start, end); None = removed
        self._lengths = array("i")
        self._alive = bytearray()
        # doc -> (its window ids, its distinct terms, per term the number of its windows containing it)
        self._docs: dict[str, tuple[list[int], tuple[str, ...], np.ndarray]] = {}
        self._df: dict[str, int] = {}
        self._n_live = 0
        self._total_length = 0

    # -- updates ----------------------------------------------------------------------------

    def bulk_load(self, docs: Iterable[tuple[str, FileWindows]]) -> None:
        """Replace the whole index with these documents, building one segment in bulk."""
        self._clear()
        vocab: dict[str, int] = {}
        term_parts, id_parts, tf_parts = [], [], []
        for doc, fw in docs:
            base = len(self._refs)
            self._register(doc, fw, count_df=False)
            if not fw.spans:
                continue
            new = [t for t in fw.terms if t not in vocab]
            vocab.update(zip(new, range(len(vocab), len(vocab) + len(new)), strict=True))
            local = np.fromiter(map(vocab.__getitem__, fw.terms), np.int64, len(fw.terms))
            term_parts.append(local[fw.term_idx])
            id_parts.append(fw.win_idx + np.int32(base))
            tf_parts.append(fw.tf)
        if term_parts:
            term_ids = np.concatenate(term_parts)
            terms = list(vocab)
            self._segment = _Segment.from_postings(
                term_ids, np.concatenate(id_parts), np.concatenate(tf_parts), terms
            )
            self._df = dict(zip(terms, np.bincount(term_ids, minlength=len(terms)).tolist(), strict=True))

    def add(self, doc: str, fw: FileWindows) -> None:
        """Add (or replace) one document's windows."""
        if doc in self._docs:
            self.remove(doc)
        base = len(self._refs)
        self._register(doc, fw)
        terms = fw.terms
        for t, w, n in zip(fw.term_idx.tolist(), fw.win_idx.tolist(), fw.tf.tolist(), strict=True):
            row = self._delta.get(terms[t])
            if row is None:
                row = self._delta[terms[t]] = (array("i"), array("i"))
            row[0].append(base + w)
            row[1].append(n)
        self._delta_postings += len(fw.tf)
        if self._delta_postings > max(200_000, len(self._segment)):
            self.compact()

    def remove(self, doc: str) -> bool:
        entry = self._docs.pop(doc, None)
        if entry is None:
            return False
        ids, terms, window_df = entry
        for wid in ids:
            self._alive[wid] = 0
            self._refs[wid] = None
            self._n_live -= 1
            self._total_length -= self._lengths[wid]
        for term, n in zip(terms, window_df.tolist(), strict=True):
            left = self._df[term] - n
            if left:
                self._df[term] = left
            else:
                del self._df[term]
        if len(self._refs) - self._n_live > max(50_000, self._n_live):
            self.compact()
        return True

    def _register(self, doc: str, fw: FileWindows, count_df: bool = True) -> None:
        base = len(self._refs)
        ids = list(range(base, base + len(fw.spans)))
        for (s, e), n in zip(fw.spans, fw.lengths, strict=True):
            self._refs.append((doc, s, e))
            self._lengths.append(n)
            self._alive.append(1)
            self._total_length += n
        self._n_live += len(fw.spans)
        window_df = fw.window_df()
        if count_df:
            df = self._df
            for term, n in zip(fw.terms, window_df.tolist(), strict=True):
                df[term] = df.get(term, 0) + n
        self._docs[doc] = (ids, fw.terms, window_df)

    def compact(self) -> None:
        """Fold the delta into a new segment and drop tombstones (renumbers windows)."""
        alive = np.frombuffer(bytes(self._alive), np.uint8).astype(bool)
        new_id = np.cumsum(alive, dtype=np.int64) - 1
        vocab: dict[str, int] = {}
        parts_t, parts_i, parts_f = [], [], []
        seg = self._segment
        if len(seg):
            seg_terms = list(seg.vocab)
            remap = np.fromiter(
                (vocab.setdefault(t, len(vocab)) for t in seg_terms), np.int64, len(seg_terms)
            )
            rows = np.repeat(np.arange(len(seg_terms)), np.diff(seg.offsets))
            parts_t.append(remap[rows])
            parts_i.append(seg.ids)
            parts_f.append(seg.tfs)
        for term, (ids, tfs) in self._delta.items():
            tid = vocab.setdefault(term, len(vocab))
            ids_np = np.frombuffer(ids, np.int32)
            parts_t.append(np.full(len(ids_np), tid, np.int64))
            parts_i.append(ids_np.copy())
            parts_f.append(np.frombuffer(tfs, np.int32).copy())
        if parts_t:
            t, i, f = np.concatenate(parts_t), np.concatenate(parts_i), np.concatenate(parts_f)
            keep = alive[i]
            t, i, f = t[keep], new_id[i[keep]].astype(np.int32), f[keep]
            used = np.unique(t)
            dense = np.full(len(vocab), -1, np.int64)
            dense[used] = np.arange(len(used))
            terms = list(vocab)
            self._segment = _Segment.from_postings(dense[t], i, f, [terms[k] for k in used])
        else:
            self._segment = _Segment.empty()
        self._delta, self._delta_postings = {}, 0
        self._refs = [r for r in self._refs if r is not None]
        self._lengths = array("i", (n for n, a in zip(self._lengths, self._alive, strict=True) if a))
        self._alive = bytearray(b"\x01" * len(self._refs))
        for doc, (ids, terms, df) in self._docs.items():
            self._docs[doc] = ([int(new_id[w]) for w in ids], terms, df)

    # -- queries ----------------------------------------------------------------------------

    def __contains__(self, doc: str) -> bool:
        return doc in self._docs

    def stats(self) -> tuple[int, int, dict[str, int]]:
        """(live windows, total tokens in them, document frequency per term)."""
        return self._n_live, self._total_length, dict(self._df)

    def _scores(self, query_terms: Iterable[str]) -> np.ndarray:
        """BM25 score of every window id (0 for removed windows), using the `max_query_terms` rarest
        query terms; each window's contributions are summed in term order, so equal statistics give
        bit-identical scores however the postings are stored."""
        n = len(self._refs)
        if not self._n_live:
            return np.zeros(n, np.float64)
        df = self._df
        terms = sorted((df[t], t) for t in set(query_terms) if t in df)[: self.max_query_terms]
        k1, b, n_live = self.k1, self.b, self._n_live
        lengths = np.frombuffer(self._lengths, np.int32)
        norm = k1 * (1.0 - b + b * lengths / (self._total_length / n_live))  # per window
        ids_parts, weight_parts = [], []
        for _, term in sorted(terms, key=lambda dt: dt[1]):
            idf = math.log(1.0 + (n_live - df[term] + 0.5) / (df[term] + 0.5))
            rows = [self._segment.row(term)]
            delta = self._delta.get(term)
            if delta is not None:
                rows.append((np.frombuffer(delta[0], np.int32), np.frombuffer(delta[1], np.int32)))
            for row in rows:
                if row is not None and len(row[0]):
                    ids, tfs = row
                    tf = tfs.astype(np.float64)
                    ids_parts.append(ids)
                    weight_parts.append(idf * tf * (k1 + 1.0) / (tf + norm[ids]))
        if not ids_parts:
            return np.zeros(n, np.float64)
        scores = np.bincount(np.concatenate(ids_parts), np.concatenate(weight_parts), minlength=n)
        scores[np.frombuffer(bytes(self._alive), np.uint8) == 0] = 0.0
        return scores

    def scores(self, query_terms: Iterable[str]) -> dict[tuple[str, int], float]:
        """Every matching live window's score, keyed by (doc, start line) (for tests and tuning)."""
        scores = self._scores(query_terms)
        return {(r[0], r[1]): float(scores[i]) for i in np.flatnonzero(scores > 0) if (r := self._refs[i])}

    def search(
        self,
        query_terms: Iterable[str],
        k: int,
        exclude_doc: str | None = None,
        exclude_lines: tuple[int, int] | None = None,
    ) -> list[WindowHit]:
        """The `k` best windows, best first; ties broken by (doc, start) so results are deterministic.

        `exclude_doc` drops that document's windows: all of them, or with `exclude_lines=(a, b)`
        only those overlapping lines [a, b).
        """
        if k <= 0:
            return []
        scores = self._scores(query_terms)
        if exclude_doc is not None and exclude_doc in self._docs:
            for wid in self._docs[exclude_doc][0]:
                ref = self._refs[wid]
                if exclude_lines is None or (ref and ref[1] < exclude_lines[1] and exclude_lines[0] < ref[2]):
                    scores[wid] = 0.0
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > k:
            threshold = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
            candidates = candidates[scores[candidates] >= threshold]
        hits = [WindowHit(r[0], r[1], r[2], float(scores[i])) for i in candidates if (r := self._refs[i])]
        hits.sort(key=lambda h: (-h.score, h.doc, h.start))
        return hits[:k]
