"""engine/tokenizer.py and tools/train_tokenizer.py on a small tokenizer trained from stdlib text.

Checks exact round-trip of any string and any byte, streaming decode, that user text never turns
into special ids, the folder checks of ``Tokenizer.from_folder``, the chat and FIM layouts, and that
training is deterministic.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import sysconfig
from itertools import accumulate
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.tokenizer import (
    FimTemplate,
    IncrementalDecoder,
    Tokenizer,
    TokenizerError,
    _byte_to_unicode,
    validate_against_vocab,
)

REPO = Path(__file__).resolve().parents[2]
TRAINING_FILES = [
    "argparse.py",
    "textwrap.py",
    "dataclasses.py",
    "json/decoder.py",
    "json/encoder.py",
    "enum.py",
]
SPECIALS = [
    "<|endoftext|>",
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<filename>",
    "<file_sep>",
    "<|repo_name|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]
# Pieces that stress the byte level: CRLF, tabs, NUL, astral and combining characters, specials.
TRICKY = ["\r\n", "\t", "\x00", " ", "    ", "\n        ", "😀", "\u0301", "é", "中", "\U0010ffff", *SPECIALS]
tricky_text = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=5)), max_size=20).map("".join)


def _load_tool(name: str):
    """Import ``tools/<name>.py`` (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"mellum_tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


train_tokenizer = _load_tool("train_tokenizer")


@pytest.fixture(scope="session")
def training_texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [(root / rel).read_text(encoding="utf-8") for rel in TRAINING_FILES]


@pytest.fixture(scope="session")
def folder(tmp_path_factory, training_texts) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer.write_tokenizer(train_tokenizer.train_tokenizer(training_texts, vocab_size=1000), out)
    return out


@pytest.fixture(scope="session")
def tok(folder) -> Tokenizer:
    return Tokenizer.from_folder(folder)


# -- round trip ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text() | tricky_text)
def test_any_string_round_trips_and_never_yields_special_ids(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert not set(ids) & tok.special_ids


def test_edge_strings_round_trip(tok):
    for text in [
        "",
        " leading",
        "\tx\r\n\ty\r\n",
        "a\x00b",
        "\u0301",
        " \u0301x",
        "😀👍🏽",
        "    \n\n    ",
        "0123456789",
    ]:
        assert tok.decode(tok.encode(text)) == text


def test_encode_batch_equals_encode(tok):
    texts = ["def f():\n    return 1\n", "😀", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_every_byte_value_is_a_token(tok):
    byte_ids = [tok.token_to_id(ch) for _, ch in sorted(_byte_to_unicode().items())]
    assert None not in byte_ids
    assert [tok.decode_bytes([i]) for i in byte_ids] == [bytes([b]) for b in range(256)]
    assert tok.decode_bytes(byte_ids) == bytes(range(256))


@given(st.binary(max_size=64))
def test_any_bytes_decode_exactly(tok, data):
    table = _byte_to_unicode()
    assert tok.decode_bytes([tok.token_to_id(table[b]) for b in data]) == data


def test_indentation_ends_at_the_keyword(tok):
    """A FIM prefix ending in indentation must tokenize like the same spot inside a whole line."""
    text = "if x:\n        return y"
    cuts = set(accumulate(len(tok.decode([i])) for i in tok.encode(text)))
    assert len("if x:\n        ") in cuts
    assert tok.encode("if x:\n        ") == tok.encode(text)[: len(tok.encode("if x:\n        "))]


def test_digits_are_split_individually(tok):
    assert [tok.decode([i]) for i in tok.encode("12345")] == list("12345")


# -- streaming ---------------------------------------------------------------------------------


def test_incremental_decode_one_token_at_a_time(tok):
    text = "naïve 😀 中文 e\u0301 \U0001f9d1\u200d\U0001f4bb done"
    ids = tok.encode(text)
    assert any(_incomplete_utf8(tok.decode_bytes([i])) for i in ids), "the test needs a split character"
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) + decoder.flush() == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


@given(st.text() | tricky_text)
def test_incremental_decode_matches_full_decode(tok, text):
    decoder = IncrementalDecoder(tok)
    assert "".join(decoder.push(i) for i in tok.encode(text)) + decoder.flush() == text


def test_incremental_decoder_holds_back_and_flushes_a_partial_character(tok):
    lead = tok.token_to_id(_byte_to_unicode()[0xF0])
    decoder = IncrementalDecoder(tok)
    assert decoder.push(lead) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.push(tok.encode("ok")) == "ok"


def _incomplete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# -- special tokens ----------------------------------------------------------------------------


def test_specials_are_single_tokens_with_ids_in_order(tok):
    for expected_id, token in enumerate(SPECIALS):
        assert tok.token_to_id(token) == expected_id
        assert tok.encode(token, allow_special=True) == [expected_id]
        assert tok.id_to_token(expected_id) == token
    assert tok.special_ids == frozenset(range(len(SPECIALS)))


def test_special_string_in_user_text_stays_text(tok):
    text = 'PREFIX = "<fim_prefix>"  # also <|endoftext|>'
    ids = tok.encode(text)
    assert tok.fim.prefix not in ids and tok.fim.eot not in ids
    assert tok.decode(ids) == text
    assert tok.fim.prefix in tok.encode(text, allow_special=True)


def test_fim_tokens_eos_and_default_template(tok):
    fim = tok.fim
    assert (fim.prefix, fim.middle, fim.suffix, fim.pad, fim.file, fim.file_sep, fim.eot) == (
        1,
        2,
        3,
        4,
        5,
        6,
        0,
    )
    assert tok.template == FimTemplate()
    assert tok.eos_ids == (tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|end|>"))
    assert tok.vocab_size == 1000


def test_fim_prompt_spm_layout(tok):
    from engine.prompt import assemble, fim_pieces

    ids = assemble(
        tok, fim_pieces(tok, "def f():\n    ", "\n    return x\n", [("pkg/a.py", "A = '<fim_middle>'\n")])
    )
    assert tok.decode(ids) == (
        "<filename>pkg/a.py\nA = '<fim_middle>'\n<fim_suffix>\n    return x\n<fim_prefix>def f():\n    <fim_middle>"
    )
    assert ids[-1] == tok.fim.middle and ids.count(tok.fim.middle) == 1


def test_decode_can_skip_special_tokens(tok):
    ids = [tok.fim.prefix, *tok.encode("x"), tok.fim.eot]
    assert tok.decode(ids, skip_special_tokens=True) == "x"
    assert tok.decode(ids) == "<fim_prefix>x<|endoftext|>"


def test_bad_ids_raise(tok):
    with pytest.raises(TokenizerError, match="1000"):
        tok.decode([1000])
    with pytest.raises(TokenizerError, match="-1"):
        tok.id_to_token(-1)


def test_validate_against_vocab(tok):
    validate_against_vocab(tok, 1000)
    validate_against_vocab(tok, 1024)
    with pytest.raises(TokenizerError, match=r"ids up to 999 .* vocab_size is 512"):
        validate_against_vocab(tok, 512)


# -- chat --------------------------------------------------------------------------------------

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does <|end|> mean?"},
    {"role": "assistant", "content": "A stop token."},
    {"role": "user", "content": "Thanks"},
]
RENDERED = (
    "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat does <|end|> mean?<|end|>\n"
    "<|assistant|>\nA stop token.<|end|>\n<|user|>\nThanks<|end|>\n"
)


# -- folder validation -------------------------------------------------------------------------


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _drop_special(tokenizer_json: dict, token: str, from_vocab: bool) -> None:
    tokenizer_json["added_tokens"] = [t for t in tokenizer_json["added_tokens"] if t["content"] != token]
    if from_vocab:
        del tokenizer_json["model"]["vocab"][token]


def _set_added_id(tokenizer_json: dict, token: str, new_id: int) -> None:
    for entry in tokenizer_json["added_tokens"]:
        if entry["content"] == token:
            entry["id"] = new_id


def _swap_decoder_ids(config: dict) -> None:
    decoder = config["added_tokens_decoder"]
    decoder["1"], decoder["3"] = decoder["3"], decoder["1"]


BAD_FOLDERS = {
    "missing tokenizer.json": ("tokenizer.json", None, "tokenizer.json"),
    "missing config": ("tokenizer_config.json", None, "tokenizer_config.json"),
    "missing special token": (
        "tokenizer.json",
        lambda d: _drop_special(d, "<fim_middle>", True),
        "<fim_middle>",
    ),
    "special not single token": ("tokenizer.json", lambda d: _drop_special(d, "<|user|>", False), "<|user|>"),
    "added_tokens id mismatch": (
        "tokenizer.json",
        lambda d: _set_added_id(d, "<fim_suffix>", 999),
        "<fim_suffix>",
    ),
    "added_tokens_decoder mismatch": ("tokenizer_config.json", _swap_decoder_ids, "<fim_prefix>"),
    "fim names unknown token": (
        "tokenizer_config.json",
        lambda c: c["mellum_fim"].update(middle="<fim_mid>"),
        "<fim_mid> (needed by tokenizer_config.json mellum_fim.middle)",
    ),
    "fim lacks a key": (
        "tokenizer_config.json",
        lambda c: c["mellum_fim"].pop("eot"),
        "lacks key(s) ['eot']",
    ),
    "eos token unknown": (
        "tokenizer_config.json",
        lambda c: c.update(mellum_eos_tokens=["<|eot|>"]),
        "<|eot|>",
    ),
    "normalizer": ("tokenizer.json", lambda d: d.update(normalizer={"type": "NFC"}), "'NFC'"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_bad_folder_raises_naming_the_problem(folder, tmp_path, case):
    filename, edit, expected = BAD_FOLDERS[case]
    bad = _copy(folder, tmp_path)
    if edit is None:
        (bad / filename).unlink()
    else:
        _edit_json(bad / filename, edit)
    with pytest.raises(TokenizerError) as excinfo:
        Tokenizer.from_folder(bad)
    assert expected in str(excinfo.value)
    assert filename in str(excinfo.value)


def test_not_a_folder_and_bad_json(folder, tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_folder(tmp_path / "nowhere")
    bad = _copy(folder, tmp_path)
    (bad / "tokenizer_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_folder(bad)


def test_fim_template_defaults_when_field_absent(folder, tmp_path):
    bad = _copy(folder, tmp_path)
    _edit_json(bad / "tokenizer_config.json", lambda c: c.pop("mellum_fim"))
    assert Tokenizer.from_folder(bad).template == FimTemplate()


# -- training and interoperability -------------------------------------------------------------


def test_training_is_deterministic(training_texts, tmp_path):
    outputs = []
    for run in ("a", "b"):
        tokenizer = train_tokenizer.train_tokenizer(training_texts[:3], vocab_size=600)
        train_tokenizer.write_tokenizer(tokenizer, tmp_path / run)
        outputs.append(
            [(tmp_path / run / name).read_bytes() for name in ("tokenizer.json", "tokenizer_config.json")]
        )
    assert outputs[0] == outputs[1]


def test_read_split_checks_the_manifest(tmp_path):
    (tmp_path / "a.py").write_text("a = 1\n", encoding="utf-8")
    manifest = {"stdlib_root": str(tmp_path), "files_sha256": "0" * 64, "train": ["a.py"], "heldout": []}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(train_tokenizer.TrainTokenizerError, match="files_sha256"):
        train_tokenizer.read_split(path)


def test_engine_tokenizer_imports_neither_torch_nor_transformers():
    code = "import sys, engine.tokenizer; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_transformers_loads_the_folder_and_agrees(folder, tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    text = "class A:\n\tdef f(self):\r\n        return 'é😀' * 12\n"
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token) == (tok.fim.eot, tok.fim.pad, None)
