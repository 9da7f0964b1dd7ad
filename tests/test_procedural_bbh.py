"""Procedural BIG-Bench Hard training data: generated questions that never repeat a real
(test) item or each other across splits, through a stand-in generator and the real ones."""

import json

import gymnasium as gym
import pytest

from envs import BBHTask, Example
from envs.bbh import VALIDATION_INDEX_OFFSET


def _read(data_dir, name):
    return json.loads((data_dir / "bbh" / f"{name}.json").read_text(encoding="utf-8"))["examples"]


@pytest.fixture
def stand_in_generator(data_dir):
    """A stand-in procedural generator whose draws 3 and VALIDATION_INDEX_OFFSET + 1 repeat real
    items and whose validation draw OFFSET + 2 repeats training draw 0."""
    real = _read(data_dir, "boolean_expressions")
    calls = []

    def generate(index, seed):
        calls.append(index)
        if index == 3:
            return Example(real[0]["input"], real[0]["target"], "copy of a real item")
        if index == VALIDATION_INDEX_OFFSET + 1:
            return Example("  " + real[1]["input"].replace(" ", "  "), real[1]["target"], "real, spaced out")
        if index == VALIDATION_INDEX_OFFSET + 2:
            index = 0
        return Example(f"made up {index} seed {seed} is", "True", "So the answer is True.")

    return real, calls, generate


def test_procedural_splits_with_a_stand_in_generator(stand_in_generator, data_dir):
    real, calls, generate = stand_in_generator
    task = BBHTask("boolean_expressions", data_dir, train_source="procedural", num_train=5, num_validation=4, seed=7, generator=generate)
    assert task.splits == ("train", "validation", "test")
    train, validation, test = task.examples("train"), task.examples("validation"), task.examples("test")
    assert [e.question for e in train] == [f"made up {i} seed 7 is" for i in (0, 1, 2, 4, 5)]
    offset = VALIDATION_INDEX_OFFSET
    assert [e.question for e in validation] == [f"made up {i} seed 7 is" for i in (offset, offset + 3, offset + 4, offset + 5)]
    assert [(e.question, e.answer) for e in test] == [(i["input"], i["target"]) for i in real]  # all 250, in order
    assert all(e.rationale for e in train + validation)


def test_procedural_env_via_gymnasium_make(stand_in_generator, data_dir):
    env = gym.make("trice_rl/BBH-multistep_arithmetic_two-v0", train_source="procedural", num_train=3, num_validation=2, generator=stand_in_generator[2])
    prompt, info = env.reset(seed=0, options={"split": "validation", "index": 1})
    assert info["question"] in prompt and info["split"] == "validation"
    _, info = env.reset(options={"split": "test", "index": 249})
    assert info["question"] == _read(data_dir, "multistep_arithmetic_two")[249]["input"]


def test_procedural_generator_that_only_repeats_real_items_fails_clearly(data_dir):
    real = _read(data_dir, "boolean_expressions")
    task = BBHTask("boolean_expressions", data_dir, train_source="procedural", num_train=2, generator=lambda index, seed: Example(real[0]["input"], "True"))
    with pytest.raises(RuntimeError, match="only 0 of 2 generated train questions"):
        task.examples("train")


@pytest.mark.parametrize("name", ["boolean_expressions", "multistep_arithmetic_two"])
def test_procedural_with_the_real_generators(name, data_dir):
    task = BBHTask(name, data_dir, train_source="procedural", num_train=300, num_validation=100)
    train, validation, test = task.examples("train"), task.examples("validation"), task.examples("test")
    assert (len(train), len(validation), len(test)) == (300, 100, 250)
    real = {e.question for e in test}
    assert not real & {e.question for e in train + validation}
    assert not {e.question for e in train} & {e.question for e in validation}
    assert task.score([e.rationale for e in train + validation], [e.answer for e in train + validation]).all()
    again = BBHTask(name, data_dir, train_source="procedural", num_train=300, num_validation=100)
    assert again.examples("train") == train and again.examples("validation") == validation
