"""The ONNX Runtime backend: a folder written by ``mellum-lsp export`` run through onnxruntime.

Offers ``OrtBackend`` (the ``Backend`` interface, MTP drafting through ``mtp.onnx``) and its
per-sequence ``OrtState``. Imports neither torch nor ``export``: the config is read with the pure
Python ``engine.model.config.from_hf``.

The KV cache is the engine's own, in numpy: one array per group of layers that share a window
policy (full layers, sliding layers, the MTP layer), shaped (layers, 2, 1, K, capacity, D). Full
layers keep every position; sliding layers keep their window plus a rollback margin (trimmed
exactly as ``engine.model.kv.LayerKV`` trims, so both backends refuse the same rollbacks). Each
layer's (1, K, capacity, D) slab is bound through IO binding as both its past input and its present
output: GroupQueryAttention writes the new rows in place at ``seqlens_k``, so a step copies no
cache. Sliding layers pass ``sliding_cache_start`` (the position of row 0) so the graph sees their
buffer as a window. Graphs without in-place attention (``--portable``, or a session on a GPU while
the cache stays in host memory) take the "concat" path: exact-length pasts in, presents copied back.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .. import kv_policy
from ..model.config import (
    EXPORT_METADATA_KEY,
    FULL,
    SLIDING,
    CacheError,
    ConfigError,
    MellumConfig,
    from_hf,
)
from .base import Backend, Sequence

_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class _KV:
    """KV rows of a group of layers with one window policy, as (layers, 2, 1, K, capacity, D) arrays.

    Holds positions [start, end), split at ``split``: the "live" array ``a`` (row r = position
    split + r) is what the session sees; a sliding group keeps only its last window - 1 rows (plus
    up to ``LIVE_SLACK``) live and moves older ones to the ``attic`` array (positions [attic_start,
    split)), because GroupQueryAttention's CPU kernel scans every row it is given, window or not.
    A rollback into the attic moves rows back. What is held follows ``LayerKV`` exactly: growth by
    an eighth (at least 256 rows); a sliding group keeps window - 1 + margin positions, dropping
    older ones in chunks: the rules of ``engine.kv_policy``, shared with ``LayerKV``. Full groups have no attic.
    """

    LIVE_SLACK = 32  # extra live rows before older ones move to the attic (amortises the shift)

    def __init__(self, layers: int, heads: int, dim: int, dtype, window: int | None, margin: int, start=0):
        self.a = np.zeros((layers, 2, 1, heads, 0, dim), dtype)
        self.attic = np.zeros_like(self.a)
        self.window, self.margin = window, margin
        self.origin = self.start = self.split = self.end = self.attic_start = (
            start  # origin: first position ever held
        )
        self.values: list[ort.OrtValue] = []  # per (layer, k/v), views of ``a``
        self.version = 0  # bumped whenever ``a`` is reallocated (bindings must follow)

    @property
    def used(self) -> int:
        """Live rows (what the session sees)."""
        return self.end - self.split

    @property
    def capacity(self) -> int:
        return self.a.shape[4]

    def _realloc(self, cap: int) -> None:
        a = np.zeros((*self.a.shape[:4], cap, self.a.shape[5]), self.a.dtype)
        a[..., : self.used, :] = self.a[..., : self.used, :]
        self.a = a
        self.values = [ort.OrtValue.ortvalue_from_numpy(a[i, j]) for i in range(a.shape[0]) for j in (0, 1)]
        self.version += 1

    def reserve(self, t: int) -> None:
        """Room for ``t`` more live rows."""
        n = self.used + t
        if n > self.capacity:
            self._realloc(kv_policy.grown_capacity(n))

    def _attic_append(self, rows: np.ndarray) -> None:
        """Append rows of positions [split, split + n) to the attic, dropping attic rows below ``start``."""
        n = rows.shape[4]
        lo = min(max(self.attic_start, self.start), self.split + n)  # the first position worth keeping
        kept = max(0, self.split - lo)  # attic rows [lo, split) stay
        skip = max(0, lo - self.split)  # new rows below lo are not kept
        total = kept + n - skip
        if lo != self.attic_start or total > self.attic.shape[4]:
            cap = max(total, self.attic.shape[4])
            attic = np.zeros((*self.attic.shape[:4], cap, self.attic.shape[5]), self.attic.dtype)
            attic[..., :kept, :] = self.attic[..., lo - self.attic_start : lo - self.attic_start + kept, :]
            self.attic, self.attic_start = attic, lo
        self.attic[..., kept:total, :] = rows[..., skip:, :]

    def trim(self) -> None:
        if self.window is None:
            return
        self.start = kv_policy.trimmed_start(self.start, self.end, self.window, self.margin)
        live = self.window - 1
        if self.used > live + self.LIVE_SLACK:
            old = self.used - live
            self._attic_append(self.a[..., :old, :])
            self.a[..., :live, :] = self.a[..., old : self.used, :]  # in place: the bound slabs stay valid
            self.split += old
            if self.capacity > 2 * (live + self.LIVE_SLACK) + 256:  # a long chunk has passed: give it back
                self._realloc(live + self.LIVE_SLACK + 256)
        if self.start - self.attic_start > 2 * self.LIVE_SLACK:
            self._attic_append(self.a[..., :0, :])  # release attic rows no rollback can reach

    def lowest_truncation(self) -> int:
        return kv_policy.lowest_truncation(self.window, self.start, self.origin)

    def truncate(self, n: int) -> None:
        """Forget positions >= n (the caller checked ``lowest_truncation``); refill the live window."""
        self.end = min(self.end, max(n, self.start))
        if self.end < self.split:  # every live row is gone (and the attic rows >= end with them)
            self.split = self.end
        if self.window is None:
            return
        need = max(self.start, self.end - (self.window - 1))  # the first position live rows must hold
        if need >= self.split:
            return
        back, live = self.split - need, self.used  # rows that come back from the attic, rows staying
        self.reserve(back)
        self.a[..., back : back + live, :] = self.a[..., :live, :]
        first = need - self.attic_start
        self.a[..., :back, :] = self.attic[..., first : first + back, :]
        self.split = need

    def reset(self, position: int) -> None:
        """Empty, as a fresh cache whose first position is ``position``."""
        self.origin = self.start = self.split = self.end = self.attic_start = position

    def nbytes(self) -> int:
        return self.a.nbytes + self.attic.nbytes

    def compact(self) -> None:
        if self.capacity > max(self.used, 1):
            self._realloc(max(self.used, 1))
        self._attic_append(self.a[..., :0, :])
        held = self.split - self.attic_start
        if self.attic.shape[4] > held:
            self.attic = self.attic[..., :held, :].copy()

    def copy(self) -> _KV:
        other = copy.copy(self)
        other.attic = self.attic.copy()
        other._realloc(self.capacity)  # a fresh live array holding the used rows, and its own OrtValues
        return other


class _Rows:
    """Main-model hidden states of the positions the MTP layer has not read yet: rows [start, end)."""

    def __init__(self, width: int, dtype) -> None:
        self.a = np.zeros((64, width), dtype)
        self.start = self.end = 0

    def append(self, position: int, rows: np.ndarray) -> None:
        if self.end == self.start:
            self.start = self.end = position
        n, used = rows.shape[0], self.end - self.start
        if used + n > self.a.shape[0]:
            a = np.zeros((2 * (used + n), self.a.shape[1]), self.a.dtype)
            a[:used] = self.a[:used]
            self.a = a
        self.a[used : used + n] = rows
        self.end += n

    def bound(self, keep: int) -> None:
        """Drop all but the last ``keep`` rows once more than twice that many are held."""
        used = self.end - self.start
        if used > 2 * keep:
            self.a[:keep] = self.a[used - keep : used]
            self.start = self.end - keep

    def rows(self, begin: int, end: int) -> np.ndarray:
        return self.a[begin - self.start : end - self.start]


class _IO:
    """The IO binding of one graph for one sequence, what is bound to it, and reusable step buffers.

    Inputs and outputs are bound by pointer to numpy arrays held here; an array bound last time
    is not bound again, so a single-token step (whose buffers are reused and written in place)
    only rebinds the attention mask.
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        self.binding = session.io_binding()
        self.bound: dict[str, object] = {}  # name -> the array (or KV slab key) bound to it
        self._buffers: dict[str, np.ndarray] = {}

    def buffer(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        a = self._buffers.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = self._buffers[name] = np.empty(shape, dtype)
        return a

    def bind_input(self, name: str, a: np.ndarray) -> None:
        if self.bound.get(name) is not a:  # by pointer: bind_cpu_input refuses inputs with a default
            self.binding.bind_input(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
            self.bound[name] = a  # kept alive while bound

    def bind_output(self, name: str, a: np.ndarray) -> None:
        if self.bound.get(name) is not a:
            self.binding.bind_output(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
            self.bound[name] = a


@dataclass
class OrtState:
    groups: dict[str, _KV]  # "full", "sliding" (those present in the model)
    mtp: _KV | None = None
    pending: _Rows | None = None
    io: dict[str, _IO] = field(default_factory=dict)  # per graph ("main", "mtp")


class _Graph:
    """One ONNX session plus what the backend needs to know about its inputs and outputs."""

    def __init__(self, path: Path, options: ort.SessionOptions, providers: list) -> None:
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        if EXPORT_METADATA_KEY not in meta:
            raise RuntimeError(
                f"{path} was not written by `mellum-lsp export` (no {EXPORT_METADATA_KEY} metadata)"
            )
        self.meta = json.loads(meta[EXPORT_METADATA_KEY])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.optional = {i.name for i in self.session.get_overridable_initializers()}
        self.kv_dtype = _NP_DTYPES[self.inputs["past_key_values.0.key"].type]
        self.on_gpu = self.session.get_providers()[0] != "CPUExecutionProvider"
        # In-place KV needs the cache in the memory the kernel runs on; ours lives in host numpy.
        self.in_place = self.meta.get("kv_cache") == "shared" and not self.on_gpu

    def has(self, name: str) -> bool:
        return name in self.inputs or name in self.optional


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, model_dir: str | Path, threads: int | None = None) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "config.json"
        for name in ("model.onnx", "config.json"):
            if not (model_dir / name).is_file():
                raise FileNotFoundError(
                    f"no {name} in {model_dir}: export the model with `mellum-lsp export`"
                )
        try:
            self.config: MellumConfig = from_hf(json.loads(path.read_text()))
        except (ValueError, ConfigError) as e:  # json.JSONDecodeError is a ValueError
            raise ConfigError(f"{path}: {e}") from None
        self.model_dir = str(model_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Worker threads sleep between ops instead of spinning: on a machine shared with an editor
        # (and here with other jobs) spinning threads fight for the cores; measured 2.4x faster decode.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.main = _Graph(model_dir / "model.onnx", options, _providers())
        if self.main.meta.get("num_layers") != self.config.num_layers:
            raise ConfigError(
                f"{path} describes {self.config.num_layers} layers but model.onnx has "
                f"{self.main.meta.get('num_layers')}: the folder mixes two exports"
            )
        if self.main.meta.get("target") == "cuda" and not self.main.on_gpu:
            raise RuntimeError(
                f"{model_dir} was exported with --target cuda (q/k norms fused into GroupQueryAttention), "
                "which the CPU kernel rejects: re-export with --target cpu or run on a CUDA device"
            )
        mtp_path = model_dir / "mtp.onnx"
        self.mtp = _Graph(mtp_path, options, _providers()) if mtp_path.is_file() and self.config.mtp else None
        c = self.config
        self.max_positions = int(self.main.meta.get("max_positions") or c.max_position_embeddings)
        self._layer_slot = []  # layer -> (group, index in group)
        counts: dict[str, int] = {}
        for t in c.layer_types:
            g = "sliding" if t == SLIDING else "full"
            self._layer_slot.append((g, counts.get(g, 0)))
            counts[g] = counts.get(g, 0) + 1
        self._group_sizes = counts
        self._ones = np.ones((1, 1024), np.int64)

    @classmethod
    def load(cls, model_dir: str | Path, threads: int | None = None) -> OrtBackend:
        return cls(model_dir, threads)

    @property
    def has_mtp(self) -> bool:
        return self.mtp is not None

    # -- sequences -------------------------------------------------------------------------

    def new_sequence(self, margin: int = 256) -> Sequence:
        c = self.config
        groups = {
            g: _KV(
                n,
                c.num_kv_heads,
                c.head_dim,
                self.main.kv_dtype,
                c.window_of(FULL if g == "full" else SLIDING),
                margin,
            )
            for g, n in self._group_sizes.items()
        }
        state = OrtState(groups)
        if self.mtp is not None:
            # MTP entry p combines token p with the main hidden state at p-1: it starts at 1.
            state.mtp = _KV(
                1, c.num_kv_heads, c.head_dim, self.mtp.kv_dtype, c.window_of(c.mtp.layer_type), margin, 1
            )
            state.pending = _Rows(c.hidden_size, self.main.kv_dtype)
        return Sequence([], state)

    def _mask(self, n: int) -> np.ndarray:
        if n > self._ones.shape[1]:
            self._ones = np.ones((1, 2 * n), np.int64)
        return self._ones[:, :n]

    def _io(self, st: OrtState, key: str, graph: _Graph) -> _IO:
        io = st.io.get(key)
        if io is None:
            io = st.io[key] = _IO(graph.session)
        return io

    def _run(self, graph: _Graph, io: _IO, feeds: dict, kv: list, outputs: dict) -> dict:
        """Run ``graph`` with numpy ``feeds`` and ``outputs``, and the KV slots ``kv`` [(group, index, rows
        before the step)]; returns the presents it fetched (the concat mode only)."""
        for name, value in feeds.items():
            if graph.has(name):
                io.bind_input(name, np.ascontiguousarray(value))
        for name, value in outputs.items():
            io.bind_output(name, value)
        fetch = []
        for i, (group, index, used) in enumerate(kv):
            for j, kind in enumerate(("key", "value")):
                past, present = f"past_key_values.{i}.{kind}", f"present.{i}.{kind}"
                if graph.in_place:  # one slab as past and present: the op writes the new rows in place
                    if io.bound.get(past) != (id(group), group.version):
                        value = group.values[2 * index + j]
                        io.binding.bind_ortvalue_input(past, value)
                        io.binding.bind_ortvalue_output(present, value)
                        io.bound[past] = (id(group), group.version)
                else:
                    io.bound.pop(past, None)
                    io.binding.bind_cpu_input(past, np.ascontiguousarray(group.a[index, j, :, :, :used]))
                    io.binding.bind_output(present, "cpu")
                    fetch.append(present)
        graph.session.run_with_iobinding(io.binding)
        if not fetch:
            return {}
        names = [o.name for o in graph.session.get_outputs()]
        got = io.binding.get_outputs()
        return {name: got[names.index(name)].numpy() for name in fetch}

    def forward(self, seq: Sequence, ids: list[int], logits_to_keep: int = 1) -> np.ndarray:
        st: OrtState = seq.state
        c = self.config
        n0, s = len(seq.ids), len(ids)
        if s == 0:
            raise ValueError("forward needs at least one token")
        keep = s if logits_to_keep <= 0 else min(logits_to_keep, s)
        if n0 + s > self.max_positions:
            raise ValueError(
                f"{n0 + s} positions exceed the {self.max_positions} this export has rotary tables for"
            )
        for g in st.groups.values():
            g.reserve(s)
        kv = [(st.groups[g], i, st.groups[g].used) for g, i in self._layer_slot]
        sliding = st.groups.get("sliding")
        io = self._io(st, "main", self.main)
        if s == 1:  # a decoding step: reuse the buffers bound last time, written in place
            input_ids = io.buffer("input_ids", (1, 1), np.int64)
            input_ids[0, 0] = ids[0]
            positions = io.buffer("position_ids", (1, 1), np.int64)
            positions[0, 0] = n0
            hidden = io.buffer("hidden_states", (1, 1, c.hidden_size), self.main.kv_dtype)
        else:
            input_ids = np.asarray([ids], np.int64)
            positions = np.arange(n0, n0 + s, dtype=np.int64)[None]
            hidden = np.empty((1, s, c.hidden_size), self.main.kv_dtype)
        start = io.buffer("sliding_cache_start", (1,), np.int64)
        start[0] = sliding.split if sliding else 0  # the position of the live rows' first row
        n_keep = io.buffer("num_logits_to_keep", (1,), np.int64)
        n_keep[0] = keep
        logits = io.buffer("logits", (1, keep, c.vocab_size), np.float32)
        feeds = {
            "input_ids": input_ids,
            "attention_mask": self._mask(n0 + s),
            "position_ids": positions,
            "sliding_cache_start": start,
            "num_logits_to_keep": n_keep,
        }
        presents = self._run(self.main, io, feeds, kv, {"logits": logits, "hidden_states": hidden})
        self._store(kv, presents, s)
        seq.ids.extend(ids)
        if st.pending is not None:
            st.pending.append(n0, hidden[0])
            window = c.window_of(c.mtp.layer_type)
            if window is not None:  # the MTP layer only ever needs its window of positions
                st.pending.bound(window + st.mtp.margin)
        return logits[0].copy()  # the buffer is reused by the next step

    @staticmethod
    def _store(kv: list, presents: dict, s: int) -> None:
        """Advance every group by ``s`` rows (copying the new rows back in the concat mode), then trim."""
        groups = {}
        for i, (group, index, used) in enumerate(kv):
            for j, kind in enumerate(("key", "value")):
                present = presents.get(f"present.{i}.{kind}")
                if present is not None:
                    group.a[index, j, :, :, used : used + s] = present[:, :, used : used + s]
            groups[id(group)] = group
        for group in groups.values():
            group.end += s
            group.trim()

    def truncate(self, seq: Sequence, n: int) -> None:
        st: OrtState = seq.state
        for g in st.groups.values():  # check every group first: a refusal changes nothing
            if n < g.lowest_truncation():
                raise CacheError(
                    f"cannot roll back to {n} tokens: the sliding layers hold positions from {g.start} "
                    f"(window {g.window}, margin {g.margin}); the oldest length they can serve is "
                    f"{g.lowest_truncation()}"
                )
        for g in st.groups.values():
            g.truncate(n)
        del seq.ids[n:]
        if st.mtp is not None:
            # MTP entry p reads token p and main hidden p-1: entries and hidden states >= n go.
            if st.mtp.end > n:
                if n < st.mtp.lowest_truncation() or n < st.mtp.start:
                    st.mtp.reset(1)  # differs from TorchBackend: it keeps an empty cache starting past n
                else:
                    st.mtp.truncate(n)
            p = st.pending
            p.end = max(p.start, min(p.end, n))

    def lowest_truncation(self, seq: Sequence) -> int:
        return max(g.lowest_truncation() for g in seq.state.groups.values())

    def fork(self, seq: Sequence) -> Sequence:
        st: OrtState = seq.state
        pending = None
        if st.pending is not None:
            pending = _Rows.__new__(_Rows)
            pending.a, pending.start, pending.end = st.pending.a.copy(), st.pending.start, st.pending.end
        state = OrtState(
            {g: kv.copy() for g, kv in st.groups.items()},
            st.mtp.copy() if st.mtp is not None else None,
            pending,
        )
        return Sequence(list(seq.ids), state)

    def nbytes(self, seq: Sequence) -> int:
        st: OrtState = seq.state
        held = sum(g.nbytes() for g in st.groups.values())
        if st.mtp is not None:
            held += st.mtp.nbytes() + st.pending.a.nbytes
        return held

    def compact(self, seq: Sequence) -> None:
        st: OrtState = seq.state
        for g in [*st.groups.values(), *([st.mtp] if st.mtp is not None else [])]:
            g.compact()

    # -- MTP drafting ----------------------------------------------------------------------

    def _mtp_step(
        self, st: OrtState, tokens: list[int], hidden: np.ndarray, position: int
    ) -> tuple[int, np.ndarray]:
        """Run the MTP layer on ``tokens`` at positions position.. ; returns the greedy draft and the last hidden."""
        c, m = self.config, st.mtp
        s = len(tokens)
        m.reserve(s)
        io = self._io(st, "mtp", self.mtp)
        feeds = {
            "input_ids": np.asarray([tokens], np.int64),
            "hidden_states": np.ascontiguousarray(hidden[None], dtype=self.mtp.kv_dtype),
            "attention_mask": self._mask(m.used + s),
            "position_ids": np.arange(position, position + s, dtype=np.int64)[None],
            "num_logits_to_keep": np.ones(1, np.int64),
        }
        logits = io.buffer("logits", (1, 1, c.vocab_size), np.float32)
        out = np.empty((1, s, c.hidden_size), self.mtp.kv_dtype)
        kv = [(m, 0, m.used)]
        presents = self._run(self.mtp, io, feeds, kv, {"logits": logits, "hidden_states_out": out})
        self._store(kv, presents, s)
        return int(np.argmax(logits[0, -1])), out[0, -1:]

    def draft(self, seq: Sequence, next_token: int, n: int) -> list[int]:
        """Up to ``n`` greedy drafts of the tokens after ``next_token`` (the main model's next token).

        As ``TorchBackend.draft``: MTP entry p combines token p with the main hidden state at p-1
        and predicts token p+1. The MTP cache first catches up on every position up to
        ``len(seq.ids)``; further drafts chain the layer on its own hidden state and are dropped
        from the MTP cache afterwards, since the main model has not confirmed them.
        """
        st: OrtState = seq.state
        end = len(seq.ids)
        if st.mtp is None or n <= 0 or end == 0 or st.pending.end == st.pending.start:
            return []
        m, p = st.mtp, st.pending
        if m.end > end:  # a draft without a forward since: its entry for ``end`` read another next token
            if end < m.lowest_truncation() or end < m.start:
                m.reset(1)
            else:
                m.truncate(end)
        m0 = m.end
        if m0 - 1 < p.start:  # the hidden states it needs are gone: restart the MTP cache
            m.reset(p.start + 1)
            m0 = m.end
        n = min(n, self.max_positions - end)  # draft p sits at position end + p
        if n <= 0:
            return []
        tokens = seq.ids[m0:end] + [next_token]
        token, h = self._mtp_step(st, tokens, p.rows(m0 - 1, end), m0)
        drafts = [token]
        for i in range(1, n):
            token, h = self._mtp_step(st, [drafts[-1]], h, end + i)
            drafts.append(token)
        if end + 1 < m.lowest_truncation():  # the chain ran past the margin: rebuild on the next draft
            m.reset(1)
        else:
            m.truncate(end + 1)
        return drafts


def _providers() -> list:
    """CUDA when onnxruntime-gpu is installed (ORT falls back to CPU when no device works), else CPU."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
