"""The HumanEval-infilling harness runs a task's tests in a sandboxed subprocess and scores honestly."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "eval_humaneval", Path(__file__).parents[2] / "tools" / "eval_humaneval.py"
)
eval_humaneval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_humaneval)

TASK = {
    "prompt": "def add(a, b):\n",
    "suffix": "",
    "test": "def check(f):\n    assert f(2, 3) == 5\n",
    "entry_point": "add",
}


def program(middle: str) -> str:
    return TASK["prompt"] + middle + TASK["suffix"] + "\n\n" + TASK["test"] + "\n\ncheck(add)\n"


def test_a_correct_middle_passes_and_a_wrong_one_fails():
    assert eval_humaneval.run_tests(program("    return a + b\n"))
    assert not eval_humaneval.run_tests(program("    return a - b\n"))


def test_the_sandbox_has_no_environment_and_a_timeout():
    assert not eval_humaneval.run_tests(
        program("    import os\n    assert os.environ.get('HOME')\n    return a + b\n")
    )
    assert not eval_humaneval.run_tests(program("    while True: pass\n"), timeout=2)
