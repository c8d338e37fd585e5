"""The ONNX Runtime backend: a folder written by ``mellum-lsp export`` run through onnxruntime.

Offers ``OrtBackend`` (the ``Backend`` interface, MTP drafting through ``mtp.onnx``) and its
per-sequence ``OrtState``. Imports neither torch nor ``export``: the config is read with the pure
Python ``engine.model.config.from_hf``.

The KV cache is the engine's own, in numpy, per group of layers that share a window policy (full
layers, sliding layers, the MTP layer; ``engine.backends.ort_kv``), in the dtype the export chose
(``--kv-dtype``, fp16 by default). Sliding layers keep their window plus a rollback margin; each
layer's (1, K, capacity, D) slab is bound through IO binding as both its past input and its
present output, GroupQueryAttention writing the new rows in place at ``seqlens_k``;
``sliding_cache_start`` (the position of row 0) lets the graph see the buffer as a window.

Paged exports (the default): full-attention layers are pages shared copy-on-write between forks
(``engine.model.paged``), bound as the graph's ``kv_segments`` segments, and the graph returns their
new rows, which are stored here -- so ``fork`` costs the same at 32K tokens as at 2K. A few-token
run's attention scores grow with new tokens x cached tokens, so such a forward is split into runs
that stay under ``SCORES_BUDGET`` (longer chunks go through GroupQueryAttention inside the graph). The
MTP graph drafts ``mtp_drafts`` tokens per call.

Contiguous exports (``--kv-layout contiguous``) keep every layer in one growing slab (a fork
copies it); graphs without in-place attention (``--portable``, or a session on a GPU while the
cache stays in host memory) take the "concat" path: exact-length pasts in, presents copied back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..model.config import (
    EXPORT_METADATA_KEY,
    FULL,
    SLIDING,
    CacheError,
    ConfigError,
    MellumConfig,
    from_hf,
)
from ..model.paged import Slab
from .base import Backend, Sequence
from .ort_kv import PagedGroup, Rows, WindowKV, slab_value

_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
KV_DTYPE_NAMES = {"fp32": np.float32, "fp16": np.float16}
SCORES_BUDGET = 192 * 2**20  # bytes of attention scores (and their copies) one run may hold


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

    def bind_value(self, name: str, value: ort.OrtValue) -> None:
        if self.bound.get(name) is not value:
            self.binding.bind_ortvalue_input(name, value)
            self.bound[name] = value  # keeps the OrtValue (and its array) alive while bound


@dataclass
class OrtState:
    groups: dict[str, WindowKV | PagedGroup]  # "full", "sliding" (those present in the model)
    mtp: WindowKV | PagedGroup | None = None
    pending: Rows | None = None
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
        hidden = {i.name: i for i in [*self.session.get_inputs(), *self.session.get_outputs()]}[
            "hidden_states"
        ]
        self.dtype = _NP_DTYPES[hidden.type]  # the compute dtype (hidden states), what sliding layers store
        self.kv_dtype = {"fp16": np.float16, "fp32": np.float32}.get(self.meta.get("kv_dtype"), self.dtype)
        self.on_gpu = self.session.get_providers()[0] != "CPUExecutionProvider"
        self.paged = self.meta.get("kv_cache") == "paged"
        # segments per paged layer: the inputs past_key_values.N.key.J the graph has
        self.segments = 1 + max((int(n.split(".")[3]) for n in self.inputs if n.count(".") == 3), default=0)
        self.drafts = int(self.meta.get("mtp_drafts") or 1)
        # In-place KV needs the cache in the memory the kernel runs on; ours lives in host numpy.
        self.in_place = self.meta.get("kv_cache") in ("shared", "paged") and not self.on_gpu

    def has(self, name: str) -> bool:
        return name in self.inputs or name in self.optional


class OrtBackend(Backend):
    name = "ort"

    def __init__(
        self, model_dir: str | Path, threads: int | None = None, kv_dtype: str | None = None
    ) -> None:
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
        stored = next(k for k, v in KV_DTYPE_NAMES.items() if v == self.main.kv_dtype)
        if kv_dtype is not None and kv_dtype != stored:
            raise ConfigError(
                f"{model_dir} stores its KV cache in {stored} (chosen at export); asked for {kv_dtype}: "
                f"re-export with `mellum-lsp export --kv-dtype {kv_dtype}` or use kv_dtype={stored!r}"
            )
        self.kv_dtype = stored
        mtp_path = model_dir / "mtp.onnx"
        self.mtp = _Graph(mtp_path, options, _providers()) if mtp_path.is_file() and self.config.mtp else None
        if self.mtp is not None and self.mtp.paged != self.main.paged:
            raise ConfigError(f"{model_dir}: model.onnx and mtp.onnx have different KV layouts (two exports)")
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
        # bound to the segment inputs a sequence does not use (length 0: every row masked)
        self._empty = Slab(
            np.zeros((max(counts.values()), 2, 1, c.num_kv_heads, 1, c.head_dim), self.main.kv_dtype)
        )

    @classmethod
    def load(
        cls, model_dir: str | Path, threads: int | None = None, kv_dtype: str | None = None
    ) -> OrtBackend:
        return cls(model_dir, threads, kv_dtype)

    @property
    def has_mtp(self) -> bool:
        return self.mtp is not None

    # -- sequences -------------------------------------------------------------------------

    def _group(self, graph: _Graph, layers: int, layer_type: str, margin: int, start: int = 0):
        c = self.config
        window = c.window_of(layer_type)
        if graph.paged and window is None:
            return PagedGroup(
                layers, c.num_kv_heads, c.head_dim, graph.kv_dtype, graph.segments, margin, start
            )
        dtype = graph.dtype if window is not None else graph.kv_dtype  # sliding layers: the compute dtype
        return WindowKV(layers, c.num_kv_heads, c.head_dim, dtype, window, margin, start)

    def new_sequence(self, margin: int = 256) -> Sequence:
        c = self.config
        groups = {
            g: self._group(self.main, n, FULL if g == "full" else SLIDING, margin)
            for g, n in self._group_sizes.items()
        }
        state = OrtState(groups)
        if self.mtp is not None:
            # MTP entry p combines token p with the main hidden state at p-1: it starts at 1.
            state.mtp = self._group(self.mtp, 1, c.mtp.layer_type, margin, 1)
            state.pending = Rows(c.hidden_size, self.main.dtype)
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

    def _bind_segments(
        self, graph: _Graph, io: _IO, layer: int, group, index: int, lengths: np.ndarray
    ) -> None:
        """Bind a paged graph's segment inputs of ``layer`` to the rows ``group`` holds."""
        if isinstance(group, PagedGroup):
            views = [(slab, n, None) for slab, n in group.views()]
        else:  # a window's live rows, as one segment
            views = [(None, group.used, group.values[2 * index : 2 * index + 2])]
        for j in range(graph.segments):
            slab, n, values = views[j] if j < len(views) else (self._empty, 0, None)
            for kind, name in enumerate(("key", "value")):
                value = values[kind] if values is not None else slab_value(slab, index, kind)
                io.bind_value(f"past_key_values.{layer}.{name}.{j}", value)
            lengths[j] = n

    def _run(self, graph: _Graph, io: _IO, feeds: dict, kv: list, outputs: dict) -> dict:
        """Run ``graph`` with numpy ``feeds`` and ``outputs`` and the KV of its layers ``kv`` [(group,
        index, rows before the step)]: paged groups bind their segments (``outputs`` holds where
        their new rows go), window groups their slab in place, or (concat mode) their exact rows.
        Returns the presents it fetched (the concat mode only)."""
        for name, value in feeds.items():
            if graph.has(name):
                io.bind_input(name, np.ascontiguousarray(value))
        for name, value in outputs.items():
            io.bind_output(name, value)
        fetch = []
        for i, (group, index, used) in enumerate(kv):
            if graph.paged and (isinstance(group, PagedGroup) or graph is self.mtp):
                continue  # bound by the caller through _bind_segments
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

    def _chunks(self, s: int, held: int, heads: int) -> list[int]:
        """Sizes of the runs a forward of ``s`` tokens over ``held`` cached ones is split into."""
        total = held + s + max(256, (held + s) // 8)  # rows attention reads, spare capacity included
        per_token = 3 * 4 * heads * total  # scores, masked scores and probabilities, fp32
        step = max(1, min(s, SCORES_BUDGET // per_token))
        return [min(step, s - i) for i in range(0, s, step)]

    def forward(self, seq: Sequence, ids: list[int], logits_to_keep: int = 1) -> np.ndarray:
        c = self.config
        n0, s = len(seq.ids), len(ids)
        if s == 0:
            raise ValueError("forward needs at least one token")
        keep = s if logits_to_keep <= 0 else min(logits_to_keep, s)
        if n0 + s > self.max_positions:
            raise ValueError(
                f"{n0 + s} positions exceed the {self.max_positions} this export has rotary tables for"
            )
        # paged exports attend to up to prefill_rows new tokens with one MatMul per segment: split a
        # run whose scores would be too large (longer chunks go through GroupQueryAttention)
        short = self.main.paged and s <= int(self.main.meta.get("prefill_rows") or 0)
        sizes = self._chunks(s, n0, c.num_heads) if short else [s]
        if len(sizes) == 1:
            return self._forward(seq, ids, keep)
        out, done = [], 0
        for size in sizes:
            # logits of positions [s - keep, s) that fall in this run
            want = max(0, min(size, done + size - (s - keep)))
            logits = self._forward(seq, ids[done : done + size], max(want, 1))
            if want:
                out.append(logits[-want:])
            done += size
        return np.concatenate(out)

    def _forward(self, seq: Sequence, ids: list[int], keep: int) -> np.ndarray:
        """One run of the decoder on ``ids``: the last ``keep`` logits."""
        st: OrtState = seq.state
        c = self.config
        n0, s = len(seq.ids), len(ids)
        for g in st.groups.values():
            g.reserve(s)
        kv = [(st.groups[g], i, st.groups[g].used if isinstance(st.groups[g], WindowKV) else 0)
              for g, i in self._layer_slot]  # fmt: skip
        sliding = st.groups.get("sliding")
        io = self._io(st, "main", self.main)
        if s == 1:  # a decoding step: reuse the buffers bound last time, written in place
            input_ids = io.buffer("input_ids", (1, 1), np.int64)
            input_ids[0, 0] = ids[0]
            positions = io.buffer("position_ids", (1, 1), np.int64)
            positions[0, 0] = n0
            hidden = io.buffer("hidden_states", (1, 1, c.hidden_size), self.main.dtype)
        else:
            input_ids = np.asarray([ids], np.int64)
            positions = np.arange(n0, n0 + s, dtype=np.int64)[None]
            hidden = np.empty((1, s, c.hidden_size), self.main.dtype)
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
        outputs = {"logits": logits, "hidden_states": hidden}
        full = st.groups.get("full")
        rows = None
        if isinstance(full, PagedGroup):
            lengths = io.buffer("past_lengths", (self.main.segments,), np.int64)
            for i, (group, index, _) in enumerate(kv):
                if group is full:
                    self._bind_segments(self.main, io, i, group, index, lengths)
            feeds["past_lengths"] = lengths
            feeds["attention_bias"] = self._bias(io, full, s)
            k, d = c.num_kv_heads, c.head_dim
            rows = io.buffer("present_full", (self._group_sizes["full"], 2, 1, k, s, d), self.main.kv_dtype)
            for i, (group, index, _) in enumerate(kv):
                if group is full:
                    outputs[f"present.{i}.key"] = rows[index, 0]
                    outputs[f"present.{i}.value"] = rows[index, 1]
        presents = self._run(self.main, io, feeds, kv, outputs)
        if rows is not None:
            full.store(rows)
        self._store(kv, presents, s)
        seq.ids.extend(ids)
        if st.pending is not None:
            st.pending.append(n0, hidden[0])
            window = c.window_of(c.mtp.layer_type)
            if window is not None:  # the MTP layer only ever needs its window of positions
                st.pending.bound(window + st.mtp.margin)
        return logits[0].copy()  # the buffer is reused by the next step

    def _bias(self, io: _IO, full: PagedGroup, s: int) -> np.ndarray:
        """The additive mask of a few-token run over the full layers' bound rows (every segment's
        capacity, then the ``s`` new rows): 0 where a query may look, -1e30 elsewhere. One per run,
        shared by the layers; a longer chunk goes through GroupQueryAttention and reads none."""
        if s > int(self.main.meta.get("prefill_rows") or 0):
            return np.zeros((1, 1), np.float32)
        views = full.views()
        caps = [slab.capacity for slab, _ in views] + [self._empty.capacity] * (
            self.main.segments - len(views)
        )
        held = [n for _, n in views] + [0] * (self.main.segments - len(views))
        bias = io.buffer("attention_bias", (s, sum(caps) + s), np.float32)
        bias.fill(-1e30)
        offset = 0
        for cap, n in zip(caps, held, strict=True):
            bias[:, offset : offset + n] = 0.0
            offset += cap
        bias[:, offset:] = np.triu(np.full((s, s), -1e30, np.float32), 1)  # causal among the new rows
        return bias

    @staticmethod
    def _store(kv: list, presents: dict, s: int) -> None:
        """Advance every window group by ``s`` rows (copying the new rows back in the concat mode), then trim."""
        groups = {}
        for i, (group, index, used) in enumerate(kv):
            if isinstance(group, PagedGroup):
                continue  # stored from its own output buffer
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
        """An independent sequence: full layers of paged exports share pages (no rows copied); sliding
        layers (window + margin rows), the MTP layer and pending hidden states are copied."""
        st: OrtState = seq.state
        state = OrtState(
            {g: kv.copy() for g, kv in st.groups.items()},
            st.mtp.copy() if st.mtp is not None else None,
            st.pending.copy() if st.pending is not None else None,
        )
        return Sequence(list(seq.ids), state)

    def nbytes(self, seq: Sequence) -> int:
        """Bytes the sequence's KV holds; pages shared with forks count divided among their holders."""
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
        """Contiguous exports: the MTP layer on ``tokens`` at positions position.. ; returns the greedy
        draft and the last hidden."""
        c, m = self.config, st.mtp
        s = len(tokens)
        m.reserve(s)
        io = self._io(st, "mtp", self.mtp)
        feeds = {
            "input_ids": np.asarray([tokens], np.int64),
            "hidden_states": np.ascontiguousarray(hidden[None], dtype=self.mtp.dtype),
            "attention_mask": self._mask(m.used + s),
            "position_ids": np.arange(position, position + s, dtype=np.int64)[None],
            "num_logits_to_keep": np.ones(1, np.int64),
        }
        logits = io.buffer("logits", (1, 1, c.vocab_size), np.float32)
        out = np.empty((1, s, c.hidden_size), self.mtp.dtype)
        kv = [(m, 0, m.used)]
        presents = self._run(self.mtp, io, feeds, kv, {"logits": logits, "hidden_states_out": out})
        self._store(kv, presents, s)
        return int(np.argmax(logits[0, -1])), out[0, -1:]

    def _mtp_drafts(
        self, st: OrtState, tokens: list[int], hidden: np.ndarray, position: int
    ) -> tuple[list[int], np.ndarray]:
        """Paged exports: one call of the draft graph on ``tokens`` at positions position.. -> its
        ``mtp_drafts`` drafts and the last hidden state; the rows of the tokens and of the chained
        steps are stored."""
        c, m, g = self.config, st.mtp, self.mtp
        s, rows_out = len(tokens), len(tokens) + g.drafts - 1
        m.reserve(rows_out)
        io = self._io(st, "mtp", g)
        feeds = {
            "input_ids": np.asarray([tokens], np.int64),
            "hidden_states": np.ascontiguousarray(hidden[None], dtype=g.dtype),
            "position_ids": np.arange(position, position + s, dtype=np.int64)[None],
        }
        if g.has("past_lengths"):  # a full-attention MTP layer: its pages as segments
            lengths = io.buffer("past_lengths", (g.segments,), np.int64)
            self._bind_segments(g, io, 0, m, 0, lengths)
            start = io.buffer("past_start", (1,), np.int64)
            start[0] = m.origin
            feeds.update(past_lengths=lengths, past_start=start)
        else:  # a sliding one: its window's live rows as one past, GroupQueryAttention chained in the graph
            feeds["attention_mask"] = self._mask(m.used + s)
            for j, kind in enumerate(("key", "value")):
                feeds[f"past_key_values.0.{kind}"] = m.a[0, j, :, :, : m.used]
        drafts = io.buffer("drafts", (1, g.drafts), np.int64)
        last = io.buffer("hidden_states_out", (1, 1, c.hidden_size), g.dtype)
        rows = io.buffer("present_mtp", (1, 2, 1, c.num_kv_heads, rows_out, c.head_dim), m.dtype)
        outputs = {"drafts": drafts, "present.0.key": rows[0, 0], "present.0.value": rows[0, 1],
                   "hidden_states_out": last}  # fmt: skip
        self._run(g, io, feeds, [(m, 0, 0)], outputs)
        m.store(rows)
        return drafts[0].tolist(), last[0].copy()

    def _draft_paged(self, st: OrtState, tokens: list[int], hidden: np.ndarray, m0: int, n: int) -> list[int]:
        """Catch the MTP cache up on ``tokens`` (from position m0, the last one the main model's next
        token) and draft; further calls chain on the last draft until ``n`` are made."""
        m, end, per_call = st.mtp, m0 + len(tokens) - 1, self.mtp.drafts
        out, h, done = [], None, 0
        for size in self._chunks(len(tokens), m.end - m.start, self.config.num_heads):
            if m.end > m0 + done:  # the chained rows of the previous chunk's call
                m.truncate(m0 + done)
            out, h = self._mtp_drafts(st, tokens[done : done + size], hidden[done : done + size], m0 + done)
            done += size
        while len(out) < n and end + len(out) + per_call <= self.max_positions:
            more, h = self._mtp_drafts(st, [out[-1]], h, end + len(out))
            out += more
        if end + 1 < m.lowest_truncation():  # the chain ran past the margin: rebuild on the next draft
            m.reset(1)
        else:
            m.truncate(end + 1)
        return out[:n]

    def draft(self, seq: Sequence, next_token: int, n: int) -> list[int]:
        """Up to ``n`` greedy drafts of the tokens after ``next_token`` (the main model's next token).

        As ``TorchBackend.draft``: MTP entry p combines token p with the main hidden state at p-1
        and predicts token p+1. The MTP cache first catches up on every position up to
        ``len(seq.ids)``; further drafts chain the layer on its own hidden state and are dropped
        from the MTP cache afterwards, since the main model has not confirmed them. A paged
        export's draft graph makes ``mtp_drafts`` of them per call.
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
        tokens = seq.ids[m0:end] + [next_token]
        hidden = p.rows(m0 - 1, end)
        if self.mtp.paged:
            if end + self.mtp.drafts > self.max_positions:  # the chained drafts would pass the rotary tables
                return []
            return self._draft_paged(st, tokens, hidden, m0, n)
        n = min(n, self.max_positions - end)  # draft p sits at position end + p
        if n <= 0:
            return []
        token, h = self._mtp_step(st, tokens, hidden, m0)
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
