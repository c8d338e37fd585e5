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
