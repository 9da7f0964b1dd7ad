"""The Task owns its prompt kinds and how a completion to each is read: evaluation, the
Gymnasium environment and the TRL reward all ask it, so they agree."""

import pytest

from envs.arithmetic import ArithmeticTask
from envs.base import ReasoningEnv
from trice_rl.trl_adapter import task_reward

QUESTION, ANSWER = "What is 2 + 3 (mod 10)?", "5"


def test_each_kind_has_its_prompt():
    task = ArithmeticTask()
    assert task.prompt("cot", QUESTION) == task.cot_prompt(QUESTION)
    assert task.prompt("hinted", QUESTION, ANSWER) == task.hinted_prompt(QUESTION, ANSWER)
    assert task.prompt("direct", QUESTION).endswith("The answer is ")
    with pytest.raises(ValueError, match="needs the answer"):
        task.prompt("hinted", QUESTION)
    with pytest.raises(ValueError, match="cot, hinted, direct"):
        task.prompt("socratic", QUESTION)


def test_a_direct_completion_is_read_after_the_prompts_answer_is():
    task = ArithmeticTask()
    assert task.score(["5.", "6."], [ANSWER, ANSWER], kind="direct").tolist() == [1.0, 0.0]
    assert task.score(["5."], [ANSWER]).tolist() == [0.0]  # a rationale must state its answer


@pytest.mark.parametrize("kind", ["cot", "direct"])
def test_environment_trl_reward_and_task_agree(kind):
    task = ArithmeticTask(num_train=4)
    example = task.examples("train")[0]
    completions = [f"{example.answer}.", f"So the answer is {example.answer}.", "So the answer is 11.\nQuestion: x"]
    env = ReasoningEnv(task, prompt=kind)
    env.reset(options={"index": 0})
    env_rewards = [env.step(c)[1] for c in completions]
    trl_rewards = task_reward(task, kind)(prompts=[""] * 3, completions=completions, answer=[example.answer] * 3)
    task_rewards = task.score([task.cut_at_stop(c) for c in completions], [example.answer] * 3, kind=kind).tolist()
    assert env_rewards[:2] == trl_rewards[:2] == task_rewards[:2]
    assert env_rewards[0] == (1.0 if kind == "direct" else 0.0)


def test_cut_at_stop_is_the_decoders_cut():
    task = ArithmeticTask()
    assert task.cut_at_stop("1 + 1 = 2.\nQuestion: next") == "1 + 1 = 2."
    assert task.cut_at_stop("no stop here") == "no stop here"
