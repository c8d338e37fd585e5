"""Model roles in one engine: a completion model and a chat model, loaded on first use and
evicted under a memory budget — with the real embedded model folder (twice, as two models)."""

from __future__ import annotations

import shutil

import pytest

from engine.embedded import embedded_model_dir
from engine.jobs import Job
from engine.models import Models, ModelSpec
from engine.protocol import parse_params
from engine.server import build_parser, load_model


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    other = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(embedded_model_dir(), other)
    return ModelSpec(path=str(embedded_model_dir())), ModelSpec(path=str(other))


def loader(args=()):
    a = build_parser().parse_args(["--backend", "ort", "--cache-mb", "8", *args])
    loaded = []

    def load(spec):
        loaded.append(spec.name)
        return load_model(spec, a)

    return load, loaded


def job(method="complete", **params):
    p = parse_params(method, {"prefix": "def add(a, b):\n    return ", "max_tokens": 4, **params})
    return Job(1, method, p, lambda _: None, lambda r, e: None)


def test_one_model_serves_both_roles(two_models):
    load, loaded = loader()
    models = Models(two_models[0], None, load)
    assert models.execute(job())["tokens"] >= 1
    assert models.executor("chat") is models.executor("completion") and len(loaded) == 1
    assert models.handshake()["roles"] == {"completion": two_models[0].name, "chat": two_models[0].name}


def test_chat_model_loads_on_first_use_and_the_budget_evicts_the_other(two_models):
    completion, chat = two_models
    one = completion.footprint_mb(8)
    load, loaded = loader()
    models = Models(completion, chat, load, memory_mb=one * 1.5, cache_mb=8)
    assert loaded == [completion.name]  # the completion model at start, the chat model not yet
    models.executor("chat")
    assert loaded == [completion.name, chat.name] and models.evictions == 1
    assert models.stats()["models_loaded"] == ["chat"]
    assert models.execute(job())["tokens"] >= 1  # the completion model comes back
    assert models.evictions == 2 and loaded[-1] == completion.name


def test_a_model_over_the_budget_is_refused_naming_the_sizes(two_models):
    load, _ = loader()
    with pytest.raises(MemoryError, match="more than --memory-mb 1"):
        Models(two_models[0], None, load, memory_mb=1, cache_mb=8)


def test_a_model_is_a_folder_or_a_url():
    with pytest.raises(ValueError, match="exactly one"):
        ModelSpec()
    with pytest.raises(ValueError, match="exactly one"):
        ModelSpec(path="a", url="http://b")
