"""Settings from camelCase JSON: nested dataclasses, defaults for bad fields, named problems."""

from __future__ import annotations

from mellum_lsp.settings import Settings, camel, merge, parse_settings, section


def test_defaults_from_nothing():
    settings, problems = parse_settings(None)
    assert settings == Settings() and problems == []
    assert parse_settings({})[0] == Settings()


def test_camel_case_fields():
    raw = {
        "model": {"path": "/m", "backend": "torch"},
        "completion": {"maxTokens": 32, "debounceMs": 10, "multiline": False, "stop": ["\n\n"]},
        "context": {"budgetTokens": 131072, "enabled": False},
        "engine": {"socket": "/tmp/e.sock", "url": None, "idleExitS": 30},
        "telemetry": {"enabled": False},
    }
    s, problems = parse_settings(raw)
    assert problems == []
    assert (s.model.path, s.model.backend) == ("/m", "torch")
    assert (s.completion.max_tokens, s.completion.debounce_ms, s.completion.multiline) == (32, 10, False)
    assert s.completion.stop == ("\n\n",)
    assert (s.context.budget_tokens, s.context.enabled) == (131072, False)
    assert s.engine.socket == "/tmp/e.sock" and s.engine.idle_exit_s == 30.0
    assert s.telemetry.enabled is False


def test_bad_fields_fall_back_to_their_defaults_and_are_named():
    s, problems = parse_settings(
        {
            "completion": {
                "maxTokens": "many",
                "debounceMs": -5,
                "multiline": "yes",
                "fallback": "sometimes",
            },
            "model": {"backend": "cuda"},
            "context": 7,
            "bogus": 1,
        }
    )
    d = Settings()
    assert s.completion.max_tokens == d.completion.max_tokens
    assert s.completion.debounce_ms == d.completion.debounce_ms
    assert s.model.backend == "auto" and s.context == d.context
    text = "\n".join(problems)
    for name in ("mellum.completion.maxTokens", "mellum.completion.debounceMs", "mellum.completion.multiline",
                 "mellum.completion.fallback", "mellum.model.backend", "mellum.context", "mellum.bogus"):  # fmt: skip
        assert name in text, (name, text)
    assert "must be an integer in 1..2048, got 'many'; using 64" in text


def test_valid_fields_survive_next_to_bad_ones():
    s, problems = parse_settings({"completion": {"maxTokens": 0, "debounceMs": 20}})
    assert s.completion.debounce_ms == 20 and s.completion.max_tokens == 64
    assert len(problems) == 1


def test_booleans_are_not_numbers_and_integral_floats_are_integers():
    s, problems = parse_settings({"completion": {"maxTokens": True}})
    assert problems and s.completion.max_tokens == 64
    s, problems = parse_settings({"completion": {"maxTokens": 16.0}})
    assert not problems and s.completion.max_tokens == 16


def test_merge_and_section():
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    assert merge({"a": 1}, None) == {"a": 1}
    assert section({"mellum": {"x": 1}}) == {"x": 1}
    assert section({"x": 1}) == {"x": 1}
    assert camel("idle_exit_s") == "idleExitS" and camel("max_tokens") == "maxTokens"
