"""Runtime tokenizer of the inference engine: a byte-level BPE ``tokenizer.json`` plus its config.

Offers ``Tokenizer`` (``from_folder``, ``encode``/``encode_batch`` that never turn user text into
special tokens, ``decode``/``decode_bytes``),
``IncrementalDecoder`` for streaming, ``FimTokens``/``FimTemplate`` (the FIM prompt layout read from
``tokenizer_config.json["mellum_fim"]``), ``validate_against_vocab`` and ``TokenizerError``.
A folder is checked when loaded: every token the runtime relies on must exist as a single special
token, and the ids in ``tokenizer.json`` and ``tokenizer_config.json`` must agree.
Depends on ``tokenizers`` only (no torch, no transformers). Chat templates: ``engine.chat.template``.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from tokenizers import Tokenizer as _Backend

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
# Tokens every Mellum tokenizer folder must carry, besides the ones its config names.
REQUIRED_SPECIAL_TOKENS = (
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
)
FIM_ORDERS = ("spm", "psm")


class TokenizerError(ValueError):
    """A tokenizer folder, token or id the runtime cannot use."""


@dataclass(frozen=True)
class FimTemplate:
    """The FIM prompt layout: token strings and the order (``spm``: suffix, prefix, middle)."""

    order: str = "spm"
    prefix: str = "<fim_prefix>"
    suffix: str = "<fim_suffix>"
    middle: str = "<fim_middle>"
    pad: str = "<fim_pad>"
    file: str = "<filename>"
    file_sep: str = "<file_sep>"
    eot: str = "<|endoftext|>"

    @classmethod
    def from_config(cls, entry: Mapping | None, source: str) -> FimTemplate:
        """Read a ``mellum_fim`` entry; ``None`` (field absent) gives the default spm layout."""
        if entry is None:
            return cls()
        if not isinstance(entry, Mapping):
            raise TokenizerError(f"{source}: mellum_fim must be an object, got {type(entry).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(entry) - set(names))
        missing = [n for n in names if n not in entry]
        if unknown or missing:
            raise TokenizerError(
                f"{source}: mellum_fim has unknown key(s) {unknown} and lacks key(s) {missing}; expected {names}"
            )
        bad = [n for n in names if not isinstance(entry[n], str)]
        if bad:
            raise TokenizerError(f"{source}: mellum_fim values for {bad} must be strings")
        if entry["order"] not in FIM_ORDERS:
            raise TokenizerError(
                f"{source}: mellum_fim order is {entry['order']!r}; expected one of {FIM_ORDERS}"
            )
        return cls(**{n: entry[n] for n in names})

    def tokens(self) -> dict[str, str]:
        """Role -> token string for every token of the layout (all fields but ``order``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "order"}


@dataclass(frozen=True)
class FimTokens:
    """Ids of the FIM tokens of a tokenizer."""

    prefix: int
    suffix: int
    middle: int
    pad: int
    file: int
    file_sep: int
    eot: int


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by the ByteLevel pre-tokenizer and decoder."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer folder {path.parent} has no {path.name}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _token_content(value: object, cfg_file: str, key: str) -> str:
    """A token named in the config, either a string or an AddedToken dict with ``content``."""
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, str):
        return value
    raise TokenizerError(f"{cfg_file}: {key} must name a token, got {value!r}")


def _required_tokens(
    config: Mapping, template: FimTemplate, cfg_file: str
) -> tuple[dict[str, str], list[str]]:
    """Tokens the folder must carry, each with what needs it (for error messages), and the eos tokens."""
    required = dict.fromkeys(REQUIRED_SPECIAL_TOKENS, "the runtime")
    for role, token in template.tokens().items():
        required.setdefault(token, f"{CONFIG_FILE} mellum_fim.{role}")
    for key in ("eos_token", "pad_token"):
        if config.get(key) is not None:
            required.setdefault(_token_content(config[key], cfg_file, key), f"{CONFIG_FILE} {key}")
    eos_tokens = config.get("mellum_eos_tokens", [config.get("eos_token") or template.eot])
    if not isinstance(eos_tokens, list) or not eos_tokens:
        raise TokenizerError(f"{cfg_file}: mellum_eos_tokens must be a non-empty list, got {eos_tokens!r}")
    eos_tokens = [_token_content(t, cfg_file, "mellum_eos_tokens") for t in eos_tokens]
    for token in eos_tokens:
        required.setdefault(token, f"{CONFIG_FILE} mellum_eos_tokens")
    return required, eos_tokens


def _check_pipeline(tokenizer_json: dict, tok_file: str) -> None:
    """Byte-exact decoding needs a BPE model, a ByteLevel decoder and no normalizer."""
    model = (tokenizer_json.get("model") or {}).get("type")
    decoder = (tokenizer_json.get("decoder") or {}).get("type")
    normalizer = tokenizer_json.get("normalizer")
    if model != "BPE" or decoder != "ByteLevel" or normalizer is not None:
        raise TokenizerError(
            f"{tok_file} has model {model!r}, decoder {decoder!r}, normalizer {normalizer and normalizer.get('type')!r};"
            " expected a BPE model, a ByteLevel decoder and no normalizer"
        )


def _check_added_tokens(tokenizer_json: dict, tok_file: str) -> None:
    """Each entry of ``added_tokens`` must carry the id the model vocabulary gives its content."""
    vocab = tokenizer_json["model"].get("vocab", {})
    wrong = [
        f"{t.get('content')!r} has id {t.get('id')} but the vocabulary has id {vocab[t.get('content')]}"
        for t in tokenizer_json.get("added_tokens", [])
        if t.get("content") in vocab and vocab[t.get("content")] != t.get("id")
    ]
    if wrong:
        raise TokenizerError(f"{tok_file}: added_tokens disagree with the vocabulary: {'; '.join(wrong)}")


class Tokenizer:
    """A loaded, validated tokenizer folder. Build it with ``Tokenizer.from_folder``."""

    def __init__(self, tokenizer_json: dict, config: dict, source: str):
        self.source = source
        tok_file, cfg_file = f"{source}/{TOKENIZER_FILE}", f"{source}/{CONFIG_FILE}"
        _check_pipeline(tokenizer_json, tok_file)
        try:
            serialized = json.dumps(tokenizer_json)
            self._text = _Backend.from_str(serialized)  # user text: specials stay plain text
            self._with_special = _Backend.from_str(serialized)  # template text: specials parsed
        except Exception as exc:  # the Rust loader raises a plain Exception
            raise TokenizerError(f"{tok_file} cannot be loaded by tokenizers: {exc}") from None
        self._text.encode_special_tokens = True
        _check_added_tokens(tokenizer_json, tok_file)
        self.template = FimTemplate.from_config(config.get("mellum_fim"), cfg_file)
        required, eos_tokens = _required_tokens(config, self.template, cfg_file)
        self._check_single_tokens(required, tok_file)
        self._check_config_ids(config.get("added_tokens_decoder", {}), cfg_file)

        self.special_ids: frozenset[int] = frozenset(
            t["id"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")
        )
        self.fim = FimTokens(**{role: self._id(tok) for role, tok in self.template.tokens().items()})
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(self._id(t) for t in eos_tokens))
        self.vocab_size: int = 1 + max(self._with_special.get_vocab(with_added_tokens=True).values())
        self._token_bytes = self._build_byte_table(tok_file)

    @classmethod
    def from_folder(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` and ``tokenizer_config.json`` from ``path`` and validate them."""
        folder = Path(path)
        if not folder.is_dir():
            raise TokenizerError(f"tokenizer folder {folder} does not exist or is not a directory")
        return cls(_read_json(folder / TOKENIZER_FILE), _read_json(folder / CONFIG_FILE), str(folder))

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size})"

    # -- validation done once at load ---------------------------------------------------------

    def _id(self, token: str) -> int:
        token_id = self._with_special.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"{self.source}: token {token!r} is not in the vocabulary")
        return token_id

    def _check_single_tokens(self, required: Mapping[str, str], tok_file: str) -> None:
        missing = [
            f"{t} (needed by {why})"
            for t, why in required.items()
            if self._with_special.token_to_id(t) is None
        ]
        if missing:
            raise TokenizerError(f"{tok_file} lacks special token(s) {', '.join(missing)}")
        split = [
            t for t in required if self._with_special.encode(t, add_special_tokens=False).ids != [self._id(t)]
        ]
        if split:
            raise TokenizerError(
                f"{tok_file}: special token(s) {', '.join(split)} do not encode to a single token; "
                "expected each in added_tokens with special=true"
            )
        plain = [t for t in required if self._text.encode(t, add_special_tokens=False).ids == [self._id(t)]]
        if plain:
            raise TokenizerError(
                f"{tok_file}: token(s) {', '.join(plain)} are added but not marked special=true"
            )

    def _check_config_ids(self, added_tokens_decoder: Mapping, cfg_file: str) -> None:
        wrong = []
        for key, entry in added_tokens_decoder.items():
            content = entry.get("content") if isinstance(entry, Mapping) else None
            actual = self._with_special.token_to_id(content) if isinstance(content, str) else None
            if not key.isdigit() or actual != int(key):
                wrong.append(f"{content!r} listed as id {key} but the vocabulary has id {actual}")
        if wrong:
            raise TokenizerError(
                f"{cfg_file}: added_tokens_decoder disagrees with the vocabulary: {'; '.join(wrong)}"
            )

    def _build_byte_table(self, tok_file: str) -> list[bytes]:
        byte_of = {ch: b for b, ch in _byte_to_unicode().items()}
        added = set(self._with_special.get_added_tokens_decoder())
        table = []
        for token_id in range(self.vocab_size):
            token = self._with_special.id_to_token(token_id)
            if token is None:
                table.append(b"")
            elif token_id in added:
                table.append(token.encode("utf-8"))
            else:
                try:
                    table.append(bytes(byte_of[ch] for ch in token))
                except KeyError as exc:
                    raise TokenizerError(
                        f"{tok_file}: token {token!r} (id {token_id}) has character {exc.args[0]!r} outside "
                        "the byte-level alphabet; expected a byte-level BPE vocabulary"
                    ) from None
        return table

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``. Special-token strings in it stay text unless ``allow_special``."""
        backend = self._with_special if allow_special else self._text
        return backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = False) -> list[list[int]]:
        """``encode`` of each text, in parallel."""
        backend = self._with_special if allow_special else self._text
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]

    # -- decoding -----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> bytes:
        """The exact bytes of ``ids``; a partial UTF-8 sequence is returned as is."""
        table, out = self._token_bytes, []
        for token_id in ids:
            if not 0 <= token_id < len(table):
                raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{len(table) - 1})")
            if not (skip_special_tokens and token_id in self.special_ids):
                out.append(table[token_id])
        return b"".join(out)

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids, skip_special_tokens=skip_special_tokens).decode(
            "utf-8", errors="replace"
        )

    # -- vocabulary ---------------------------------------------------------------------------

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (vocabulary or special), or ``None`` if there is none."""
        return self._with_special.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        """Token string of an id (byte-level form for vocabulary tokens)."""
        token = self._with_special.id_to_token(token_id) if 0 <= token_id < self.vocab_size else None
        if token is None:
            raise TokenizerError(f"token id {token_id} is not in the vocabulary of {self.source}")
        return token


class IncrementalDecoder:
    """Streaming decode: ``push`` ids one or more at a time, get only complete UTF-8 text back.

    Incomplete trailing bytes of a multi-byte character are held until the next push; ``flush``
    ends the stream (a dangling partial character becomes U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: int | Iterable[int]) -> str:
        """Text completed by ``ids`` (possibly empty)."""
        ids = [ids] if isinstance(ids, int) else ids
        return self._utf8.decode(self._tokenizer.decode_bytes(ids, skip_special_tokens=self._skip_special))

    def flush(self) -> str:
        """Whatever is held back, then reset for a new stream."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


def validate_against_vocab(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raise if the tokenizer can produce an id the model's embedding (``vocab_size`` rows) lacks."""
    if tokenizer.vocab_size > vocab_size:
        raise TokenizerError(
            f"tokenizer {tokenizer.source} has ids up to {tokenizer.vocab_size - 1} but the model's vocab_size "
            f"is {vocab_size}; expected every id below vocab_size"
        )
