"""The README's examples run as written."""

import re

import gymnasium as gym
from gymnasium.utils.env_checker import check_env

from tests.conftest import REPO


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_registers_a_new_task_in_under_30_lines():
    block = next(b for b in readme_python_blocks() if "register_task" in b)
    assert len(block.strip().splitlines()) < 30
    exec(compile(block, "README.md", "exec"), {})
    env = gym.make("my_project/Parity-v0")
    check_env(env.unwrapped)
    env.reset(options={"split": "train", "index": 0})  # "1101": three ones
    assert env.step("So the answer is odd.")[1] == 1.0
    assert env.step("So the answer is even.")[1] == 0.0


def test_readme_gsm8k_example_runs(data_dir):
    block = next(b for b in readme_python_blocks() if "GSM8K-v0" in b)
    exec(compile(block.replace('"../shared/data"', repr(str(data_dir))), "README.md", "exec"), {})
