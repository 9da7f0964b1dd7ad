"""Right for the right reasons: procedural tasks know their gold steps, so a correct answer
reached through a wrong step is told apart from a fully right rationale."""

import pytest
import torch

from algorithms.trice import Trice, TriceConfig
from envs.arithmetic import ArithmeticTask
from envs import make_task
from trice_rl.evaluation import EvalConfig, evaluate
from trice_rl.policy import Samples


def test_arithmetic_gold_rationales_and_a_lucky_one():
    task = ArithmeticTask(num_train=20)
    examples = task.examples("train")
    assert task.steps_right([e.question for e in examples], [e.rationale for e in examples]).all()
    # "What is 7 + 5 - 2 modulo 10?": 7 + 5 = 12 = 2, 2 - 2 = 0.  A wrong first step (3) and a
    # wrong second one (3 - 2 = 0) still end at 0: right answer, wrong steps.
    question = "What is 7 + 5 - 2 modulo 10?"
    gold = task.gold_rationale(question)
    assert gold == "7 + 5 = 12 = 2. 2 - 2 = 0. So the answer is 0."
    lucky = "7 + 5 = 12 = 3. 3 - 2 = 0. So the answer is 0."
    assert task.is_correct(lucky, "0") and task.is_correct(gold, "0")
    assert task.steps_right([question] * 3, [gold, "  " + gold.replace(" ", "  "), lucky]).tolist() == [True, True, False]
    assert task.gold_rationale("What is the capital of France?") is None


@pytest.mark.parametrize("name", ["boolean_expressions", "multistep_arithmetic_two"])
def test_bbh_procedural_tasks_solve_their_real_items(name, data_dir):
    task = make_task(f"trice_rl/BBH-{name}-v0", train_source="procedural")
    real = task.examples("test")
    golds = [task.gold_rationale(e.question) for e in real]
    assert all(g is not None for g in golds)
    assert task.score(golds, [e.answer for e in real]).all()  # the derived steps reach the target
    train = task.examples("train")[:30]
    assert task.steps_right([e.question for e in train], [e.rationale for e in train]).all()


def test_tasks_without_gold_steps_say_so(data_dir):
    task = make_task("trice_rl/BBH-navigate-v0")
    assert task.steps_right(["q"], ["a"]) is None


def test_the_algorithm_logs_the_share_of_correct_samples_with_right_steps(make_tiny_policy):
    task = ArithmeticTask(num_train=4)
    algorithm = Trice(make_tiny_policy(), task, TriceConfig(batch_size=4, max_new_tokens=160), seed=0)
    example = task.examples("train")[0]
    wrong_step = example.rationale.replace("= ", "= 9", 1)  # the answer sentence is untouched
    texts = [example.rationale, wrong_step, "So the answer is 99."]
    ids = algorithm.policy.encode_completions(texts)
    samples = Samples(texts, ids, torch.zeros(3), [0, 0, 0], [True] * 3)
    correct = algorithm.correct(samples, [0])
    assert correct.tolist() == [True, True, False]
    assert algorithm.pop_rationale_stats() == {"correct_steps_right": 0.5}
    assert algorithm.pop_rationale_stats() == {}  # counted once
    # The memory holds a right rationale for example 0.
    algorithm._write_memory([0], [ids[0]], torch.tensor([True]))
    assert algorithm.pop_rationale_stats() == {"held_steps_right": 1.0}


def test_evaluation_reports_greedy_outputs_with_every_step_right(make_tiny_policy):
    task = ArithmeticTask(num_test=4)
    policy = make_tiny_policy()
    gold = [e.rationale for e in task.examples("test")]

    def greedy(prompts, **_):  # two right rationales, two lucky ones
        texts = [g if i < 2 else g.replace("= ", "= 9", 1) for i, g in enumerate(gold)]
        return Samples(texts, [[1]] * 4, torch.zeros(4), list(range(4)), [True] * 4)

    policy.greedy = greedy
    result = evaluate(policy, task, EvalConfig(majority_k=0, max_new_tokens=8))
    assert result["eval_acc_greedy"] == 1.0 and result["eval_steps_right"] == 0.5
