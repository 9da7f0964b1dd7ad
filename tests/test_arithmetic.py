"""The procedural tasks: trice_rl/Arithmetic-v0 and the BBH generators of envs.procedural_bbh."""

import json
import re
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the environments)
from envs.arithmetic import ArithmeticConfig, ArithmeticTask, generate_chain, generate_example, split_of
from envs.procedural_bbh import (
    all_boolean_expressions,
    boolean_reductions,
    generate_boolean_expressions,
    generate_multistep_arithmetic_two,
)

SMALL = dict(num_train=300, num_validation=60, num_test=100)


def rationale_answer(rationale: str) -> str:
    match = re.fullmatch(r".*So the answer is (\S+)\.", rationale)
    assert match, rationale
    return match.group(1)


# -------------------------------------------------------------------- arithmetic
def test_examples_are_a_pure_function_of_seed_split_and_index():
    config = ArithmeticConfig(seed=3)
    assert generate_example(config, "train", 17) == generate_example(ArithmeticConfig(seed=3), "train", 17)
    assert ArithmeticTask(seed=3, **SMALL).examples("test") == ArithmeticTask(seed=3, **SMALL).examples("test")
    assert ArithmeticTask(seed=3, **SMALL).examples("train") != ArithmeticTask(seed=4, **SMALL).examples("train")


def test_splits_are_disjoint_and_sized():
    task = ArithmeticTask()  # the default sizes, where short chains would collide by chance
    questions = {split: [e.question for e in task.examples(split)] for split in task.splits}
    assert {split: len(q) for split, q in questions.items()} == {"train": 1000, "validation": 200, "test": 500}
    assert all(len(set(q)) == len(q) for q in questions.values())
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["train"]) & set(questions["validation"])
    assert not set(questions["validation"]) & set(questions["test"])
    assert all(split_of(q, 0) == split for split, qs in questions.items() for q in qs)


def test_gold_rationales_compute_the_answer():
    task = ArithmeticTask(operators="+-*", **SMALL)
    for example in task.examples("train"):
        numbers = [int(x) for x in re.findall(r"\d+", example.question)]
        *operands, modulus = numbers
        operators = re.findall(r" ([-+*]) ", example.question)
        value = operands[0]
        for op, operand in zip(operators, operands[1:]):
            value = {"+": value + operand, "-": value - operand, "*": value * operand}[op] % modulus
        assert example.answer == str(value) == rationale_answer(example.rationale)
        assert task.is_correct(example.rationale, example.answer)
        assert len(example.rationale.split(". ")) == len(operators) + 1  # one sentence per step


def test_gymnasium_make_passes_config_overrides():
    env = gym.make("trice_rl/Arithmetic-v0", max_steps=3, min_steps=3, modulus=7, num_train=50)
    task = env.unwrapped.task
    assert task.config.modulus == 7 and len(task.examples("train")) == 50
    prompt, info = env.reset(seed=0, options={"split": "validation", "index": 4})
    assert prompt == task.cot_prompt(info["question"]) and "modulo 7" in prompt
    assert info["question"].count(" + ") + info["question"].count(" - ") == 3
    _, reward, terminated, _, step_info = env.step(f"So the answer is {info['target']}.")
    assert reward == 1.0 and terminated and step_info["correct"]
    assert env.step("no idea")[1] == 0.0
    with pytest.raises(TypeError, match="unknown ArithmeticConfig fields"):
        ArithmeticTask(max_step=3)


def test_difficulty_controls_change_the_chains():
    def stats(**overrides):
        chains = [generate_chain(ArithmeticConfig(**overrides), "train", i) for i in range(200)]
        return {len(c.operators) for c in chains}, {op for c in chains for op in c.operators}, max(max(c.operands) for c in chains)

    assert stats() == ({2, 3, 4, 5, 6, 7}, {"+", "-"}, 9)
    assert stats(min_steps=8, max_steps=9, operators="*", modulus=100) == ({8, 9}, {"*"}, 99)
    with pytest.raises(ValueError):
        ArithmeticConfig(min_steps=4, max_steps=3)


def test_a_split_too_small_for_its_size_fails_clearly():
    with pytest.raises(ValueError, match="distinct questions"):
        ArithmeticTask(min_steps=1, max_steps=1, modulus=3, operators="+", num_train=50).examples("train")


# ----------------------------------------------------------------- procedural BBH
def real_items(data_dir, task):
    return json.loads((data_dir / "bbh" / f"{task}.json").read_text())["examples"]


def boolean_profile(questions):
    """Literal, "not" and parenthesis counts: the shape statistics of the real items."""
    tokens = [q.removesuffix(" is").split() for q in questions]
    return {
        "length": Counter(len(t) for t in tokens),
        "literals": Counter(sum(x in ("True", "False") for x in t) for t in tokens),
        "nots": Counter(t.count("not") for t in tokens),
        "parentheses": Counter(t.count("(") for t in tokens),
    }


def assert_close(real: Counter, generated: Counter, tolerance: float):
    keys = set(real) | set(generated)
    real_total, generated_total = sum(real.values()), sum(generated.values())
    for key in keys:
        assert abs(real[key] / real_total - generated[key] / generated_total) < tolerance, (key, real, generated)


def test_boolean_expressions_match_the_real_distribution(data_dir):
    real = real_items(data_dir, "boolean_expressions")
    generated = [generate_boolean_expressions(i, seed=0) for i in range(2000)]
    real_profile, generated_profile = boolean_profile([r["input"] for r in real]), boolean_profile([g.question for g in generated])
    for name in real_profile:
        assert_close(real_profile[name], generated_profile[name], tolerance=0.07)
    assert_close(Counter(r["target"] for r in real), Counter(g.answer for g in generated), tolerance=0.07)
    # Every real item is one of the expressions the generator draws from.
    assert {r["input"].removesuffix(" is") for r in real} <= set(all_boolean_expressions())


def test_boolean_rationales_reduce_once_per_step_to_the_answer(data_dir):
    for item in real_items(data_dir, "boolean_expressions"):
        forms = boolean_reductions(item["input"].removesuffix(" is"))
        assert forms[-1] == item["target"]
        assert all(len(a.split()) > len(b.split()) for a, b in zip(forms, forms[1:]))
    for i in range(300):
        example = generate_boolean_expressions(i, seed=1)
        expression = example.question.removesuffix(" is")
        assert str(eval(expression)) == example.answer == rationale_answer(example.rationale)
        assert example.rationale.startswith(f"{expression} = ")
    assert generate_boolean_expressions(5, seed=1) == generate_boolean_expressions(5, seed=1)


def multistep_profile(questions):
    groups = [re.fullmatch(r"\(\((.*)\) ([-+*]) \((.*)\)\) =", q) for q in questions]
    assert all(groups)
    terms = [g.group(i).split() for g in groups for i in (1, 3)]
    return {
        "group_length": Counter(len(t) for t in terms),
        "operands": Counter(int(x) for t in terms for x in t[0::2]),
        "operators": Counter(op for t in terms for op in t[1::2]),
        "middle": Counter(g.group(2) for g in groups),
    }


def test_multistep_arithmetic_matches_the_real_distribution(data_dir):
    real = [r["input"] for r in real_items(data_dir, "multistep_arithmetic_two")]
    generated = [generate_multistep_arithmetic_two(i, seed=0).question for i in range(2000)]
    real_profile, generated_profile = multistep_profile(real), multistep_profile(generated)
    for name in real_profile:
        assert set(real_profile[name]) == set(generated_profile[name]), name
        assert_close(real_profile[name], generated_profile[name], tolerance=0.08)


def test_multistep_rationales_compute_the_answer():
    for i in range(300):
        example = generate_multistep_arithmetic_two(i, seed=2)
        assert example.answer == str(eval(example.question.removesuffix(" ="))) == rationale_answer(example.rationale)
        a, b, final, _ = example.rationale.split(". ")
        assert a.startswith("A = ") and b.startswith("B = ") and final.startswith("A ")
    assert generate_multistep_arithmetic_two(7, seed=2) == generate_multistep_arithmetic_two(7, seed=2)
    assert generate_multistep_arithmetic_two(7, seed=2) != generate_multistep_arithmetic_two(7, seed=3)


def test_generated_answers_use_the_bbh_target_format():
    boolean_answers = {generate_boolean_expressions(i, 0).answer for i in range(100)}
    assert boolean_answers == {"True", "False"}
    assert all(re.fullmatch(r"-?\d+", generate_multistep_arithmetic_two(i, 0).answer) for i in range(100))
    assert np.mean([generate_multistep_arithmetic_two(i, 0).answer.startswith("-") for i in range(400)]) > 0.2
