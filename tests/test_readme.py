"""The README's examples run as written: every Python block is executed, and every
compare.py command in a shell block passes compare.py's own flag checks."""

import re
import shlex

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from tests.conftest import REPO, load_script

README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def compare_commands() -> list[list[str]]:
    commands = []
    for block in blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words[:2] == ["python", "experiments/compare.py"]:
                commands.append(words[2:])
    return commands


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_every_python_block_runs(index, data_dir):
    block = blocks("python")[index].replace('"../shared/data"', repr(str(data_dir)))
    exec(compile(block, "README.md", "exec"), {})


def test_readme_registers_a_new_task_in_under_30_lines():
    block = next(b for b in blocks("python") if "register_task" in b)
    assert len(block.strip().splitlines()) < 30
    exec(compile(block, "README.md", "exec"), {})
    env = gym.make("my_project/Parity-v0")
    check_env(env.unwrapped)
    env.reset(options={"split": "train", "index": 0})  # "1101": three ones
    assert env.step("So the answer is odd.")[1] == 1.0
    assert env.step("So the answer is even.")[1] == 0.0


@pytest.mark.parametrize("index", range(len(compare_commands())))
def test_every_compare_command_passes_the_flag_checks(index, data_dir, tmp_path):
    """The flags are checked without training; a GPU or a hub model that this machine lacks
    is swapped for its CPU / built-in stand-in."""
    flags = compare_commands()[index]
    stand_ins = {"--device": "cpu", "--model": "builtin", "--out": str(tmp_path / "out")}
    for flag, value in stand_ins.items():
        if flag in flags:
            flags[flags.index(flag) + 1] = value
    try:
        args = load_script("compare").parse_args(flags)
    except SystemExit as done:  # --list, --algo-help: print and exit
        assert done.code == 0
        return
    assert args.algos and args.budget
