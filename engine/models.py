"""The engine's models by role: one for completion (a Base model: fill-in-the-middle) and one for
chat (an Instruct or Thinking model: code actions, chat, the agent). Each is a model folder or a
remote OpenAI-compatible URL; when only one is configured it serves both roles.

``Models`` is itself an ``Executor``: ``execute`` routes a job to the model of its role, loading it
on first use. Loaded models count against ``memory_mb`` (their weight files plus their KV-cache
budget); loading one that does not fit evicts the least recently used other model first, with
its caches. The completion model is loaded at start, so a wrong folder is reported at once.
Jobs run one at a time on the scheduler's worker; ``handshake``/``stats`` (event loop) never load.
Offers ``ModelSpec``, ``Models``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .jobs import Executor, Job, Stats

log = logging.getLogger(__name__)
CHAT_METHODS = ("chat",)


@dataclass(frozen=True)
class ModelSpec:
    """Where a role's model comes from: a folder (``path``) or an OpenAI-compatible ``url``."""

    path: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.url is None):
            raise ValueError("a model is a folder or a URL: give exactly one")

    @property
    def name(self) -> str:
        return self.url or str(self.path)

    def footprint_mb(self, cache_mb: float) -> float:
        """What loading it costs in memory: its weight files plus its KV-cache budget."""
        if self.url is not None:
            return 0.0
        files = [f for f in Path(self.path).rglob("*") if f.is_file()]
        onnx = [f for f in files if ".onnx" in f.name]  # an export is what the ORT backend loads
        weights = onnx or [f for f in files if f.suffix == ".safetensors"]
        return sum(f.stat().st_size for f in weights) / 2**20 + cache_mb


class Models:
    """Executors by role, loaded lazily through ``load(spec) -> Executor`` under ``memory_mb``."""

    def __init__(
        self,
        completion: ModelSpec,
        chat: ModelSpec | None,
        load: Callable[[ModelSpec], Executor],
        memory_mb: float | None = None,
        cache_mb: float = 1024.0,
    ) -> None:
        self.specs = {"completion": completion, "chat": chat or completion}
        self._load, self.memory_mb, self.cache_mb = load, memory_mb, cache_mb
        self.accounting = Stats()  # requests of every model (each executor also keeps its own)
        self._lock = threading.Lock()  # guards _loaded (loads on the worker, reads on the event loop)
        self._loaded: OrderedDict[ModelSpec, Executor] = OrderedDict()
        self.evictions = 0
        self.executor("completion")

    def role_of(self, job: Job) -> str:
        return "chat" if job.method in CHAT_METHODS else "completion"

    def executor(self, role: str) -> Executor:
        """The loaded model of ``role``, loading it (and evicting others) when needed."""
        spec = self.specs[role]
        with self._lock:
            if spec in self._loaded:
                self._loaded.move_to_end(spec)
                return self._loaded[spec]
        need = spec.footprint_mb(self.cache_mb)
        self._make_room(spec, need)
        t0 = time.monotonic()
        executor = self._load(spec)
        executor.accounting = self.accounting  # one set of totals across models
        log.info("loaded the %s model %s in %.1f s", role, spec.name, time.monotonic() - t0)
        with self._lock:
            self._loaded[spec] = executor
        return executor

    def _make_room(self, spec: ModelSpec, need: float) -> None:
        if self.memory_mb is None:
            return
        if need > self.memory_mb:
            raise MemoryError(
                f"the model {spec.name} needs about {need:.0f} MiB (weights + KV cache), more than "
                f"--memory-mb {self.memory_mb:g}"
            )
        with self._lock:
            while self._loaded and need + self._used_mb() > self.memory_mb:
                victim, _ = self._loaded.popitem(last=False)
                self.evictions += 1
                log.info("evicted the model %s (memory budget %g MiB)", victim.name, self.memory_mb)

    def _used_mb(self) -> float:
        return sum(s.footprint_mb(self.cache_mb) for s in self._loaded)

    # ---- Executor ----------------------------------------------------------------------------
    def execute(self, job: Job) -> dict:
        return self.executor(self.role_of(job)).execute(job)

    def handshake(self) -> dict:
        with self._lock:
            completion = self._loaded.get(self.specs["completion"])
            chat = self._loaded.get(self.specs["chat"])
        info = (
            dict(completion.handshake())
            if completion is not None
            else {"model": self.specs["completion"].name}
        )
        info["chat_model"] = chat.handshake().get("model") if chat is not None else self.specs["chat"].name
        info["roles"] = {role: spec.name for role, spec in self.specs.items()}
        return info

    def stats(self) -> dict:
        with self._lock:
            loaded = list(self._loaded.items())
        out = dict(loaded[-1][1].stats()) if loaded else {"totals": self.accounting.snapshot()["totals"]}
        spec_of = {spec: role for role, spec in self.specs.items()}
        out["models"] = {
            spec.name: {"roles": [r for r, s in self.specs.items() if s == spec], "stats": ex.stats()}
            for spec, ex in loaded
        }
        out["models_loaded"] = [spec_of.get(s, s.name) for s, _ in loaded]
        out["evictions"] = self.evictions
        return out
