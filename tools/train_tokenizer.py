"""Train the byte-level BPE tokenizer of the embedded model on the train split of the corpus.

Offers ``SPECIAL_TOKENS`` (ids 0..11, in that order), ``build_tokenizer`` (the untrained pipeline),
``train_tokenizer`` (BPE on a list of texts), ``tokenizer_config`` (the ``tokenizer_config.json``
dict for ``transformers.PreTrainedTokenizerFast`` and ``engine.tokenizer``), ``write_tokenizer``,
``read_split`` (the texts of one manifest split) and ``bytes_per_token``.

Pipeline: no normalizer, so every string round-trips exactly; a ``Split`` isolates a newline run
with the indentation that follows it (``"\\n        "`` is one piece and the keyword after it has no
leading space, so a FIM prefix ending in indentation tokenizes the way training text did); digits
are split one by one; then the ByteLevel regex and byte-to-unicode map over the full 256-byte
alphabet. The ByteLevel decoder maps tokens back to bytes.

CLI: ``python tools/train_tokenizer.py --corpus runs/corpus/manifest.json --out runs/tokenizer``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.tokenizer import REQUIRED_SPECIAL_TOKENS  # noqa: E402

SPECIAL_TOKENS = REQUIRED_SPECIAL_TOKENS  # the runtime's list: the two cannot drift apart
EOS_TOKENS = ("<|endoftext|>", "<|end|>")
# spm order: <filename>{path}\n{content} blocks, then <fim_suffix>{suffix}<fim_prefix>{prefix}<fim_middle>;
# the model writes the middle and then eot.
FIM_LAYOUT = {
    "order": "spm",
    "prefix": "<fim_prefix>",
    "suffix": "<fim_suffix>",
    "middle": "<fim_middle>",
    "pad": "<fim_pad>",
    "file": "<filename>",
    "file_sep": "<file_sep>",
    "eot": "<|endoftext|>",
}
# Roles map to their tokens; anything else is refused rather than rendered as text.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown chat role ' ~ message['role'] ~ '; expected system, user or assistant') -}}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>\\n' ~ message['content'] ~ '<|end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)
INDENT_PATTERN = r"(?:\r?\n)+[ \t]*"
DEFAULT_VOCAB_SIZE = 8192
DEFAULT_MIN_FREQUENCY = 2
DEFAULT_MODEL_MAX_LENGTH = 8192


class TrainTokenizerError(ValueError):
    """A corpus manifest or training request the tokenizer cannot be trained from."""


def build_tokenizer() -> Tokenizer:
    """An untrained BPE tokenizer with our pre-tokenizer and decoder (no normalizer)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(INDENT_PATTERN), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(
    texts: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = DEFAULT_MIN_FREQUENCY
) -> Tokenizer:
    """Train BPE on ``texts``; ``vocab_size`` counts the 256 byte tokens and the special tokens."""
    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= floor:
        raise TrainTokenizerError(f"vocab_size must exceed {floor} (256 bytes + specials), got {vocab_size}")
    if not texts:
        raise TrainTokenizerError("no training texts; expected at least one")
    tokenizer = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _added_token_entry(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def tokenizer_config(tokenizer: Tokenizer, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> dict:
    """The ``tokenizer_config.json`` of a trained tokenizer (HF fields plus ``mellum_*`` ones)."""
    decoder = {}
    for content in SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(content)
        if token_id is None:
            raise TrainTokenizerError(f"trained tokenizer lacks special token {content!r}")
        decoder[str(token_id)] = _added_token_entry(content)
    named = {"<|endoftext|>", "<fim_pad>"}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<fim_pad>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": decoder,
        "extra_special_tokens": [t for t in SPECIAL_TOKENS if t not in named],
        "chat_template": CHAT_TEMPLATE,
        "mellum_fim": dict(FIM_LAYOUT),
        "mellum_eos_tokens": list(EOS_TOKENS),
    }


def write_tokenizer(
    tokenizer: Tokenizer, out_dir: Path, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``out_dir`` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    config = tokenizer_config(tokenizer, model_max_length)
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def read_split(manifest_path: Path, split: str = "train") -> list[str]:
    """The texts of one split (``train`` or ``heldout``) of a corpus manifest, in manifest order.

    Checks that the manifest's file lists still match its ``files_sha256``.
    """
    manifest_path = Path(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainTokenizerError(f"corpus manifest {manifest_path} does not exist") from None
    if split not in ("train", "heldout"):
        raise TrainTokenizerError(f"split must be 'train' or 'heldout', got {split!r}")
    missing = [key for key in ("stdlib_root", "files_sha256", "train", "heldout") if key not in manifest]
    if missing:
        raise TrainTokenizerError(f"corpus manifest {manifest_path} lacks field(s) {', '.join(missing)}")
    names = sorted(manifest["train"] + manifest["heldout"])
    digest = hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()
    if digest != manifest["files_sha256"]:
        raise TrainTokenizerError(
            f"corpus manifest {manifest_path}: file lists hash to {digest}, expected files_sha256 "
            f"{manifest['files_sha256']}"
        )
    root = Path(manifest["stdlib_root"])
    texts = []
    for rel in manifest[split]:
        path = root / rel
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainTokenizerError(
                f"corpus file {path} listed in {manifest_path} does not exist"
            ) from None
    return texts


def bytes_per_token(tokenizer: Tokenizer, texts: Sequence[str]) -> float:
    """UTF-8 bytes of ``texts`` divided by their token count (higher compresses better)."""
    n_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return n_bytes / max(n_tokens, 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus manifest.json (tools/corpus.py)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--min-frequency", type=int, default=DEFAULT_MIN_FREQUENCY)
    parser.add_argument("--model-max-length", type=int, default=DEFAULT_MODEL_MAX_LENGTH)
    args = parser.parse_args(argv)
    train = read_split(args.corpus, "train")
    start = time.perf_counter()
    tokenizer = train_tokenizer(train, args.vocab_size, args.min_frequency)
    seconds = time.perf_counter() - start
    write_tokenizer(tokenizer, args.out, args.model_max_length)
    heldout = read_split(args.corpus, "heldout")
    print(
        f"{args.out}: vocab {tokenizer.get_vocab_size()}, trained on {len(train)} files in {seconds:.1f}s, "
        f"held-out {len(heldout)} files: {bytes_per_token(tokenizer, heldout):.3f} bytes/token "
        f"(train {bytes_per_token(tokenizer, train):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
