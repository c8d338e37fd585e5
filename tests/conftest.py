import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Build tiny transformers checkpoints on demand, once per (name, overrides)."""
    from hf_reference import make_checkpoint

    made = {}

    def get(name: str = "default", with_mtp: bool = True, **overrides):
        key = (name, with_mtp, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in made:
            made[key] = make_checkpoint(tmp_path_factory.mktemp(name), with_mtp=with_mtp, **overrides)
        return made[key]

    return get


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Mellum with MTP and a real BPE tokenizer (vocab 1000): a complete model folder.

    Sliding window 16 and a rollback margin of a few tokens make the window logic matter in
    prompts of a few hundred tokens.
    """
    import importlib.util
    import sysconfig

    from hf_reference import make_checkpoint

    spec = importlib.util.spec_from_file_location(
        "train_tokenizer", Path(__file__).parents[1] / "tools" / "train_tokenizer.py"
    )
    train_tokenizer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tokenizer)
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [
        (root / f).read_text(encoding="utf-8") for f in ("textwrap.py", "bisect.py", "heapq.py", "fnmatch.py")
    ]
    folder = tmp_path_factory.mktemp("tiny_model")
    train_tokenizer.write_tokenizer(train_tokenizer.train_tokenizer(texts, vocab_size=1000), folder)
    make_checkpoint(folder, seed=3, vocab_size=1000, sliding_window=16, max_position_embeddings=4096)
    return folder
