"""Held out means held out: no pre-training document of a built-in model contains a question
its task validates or tests on, and the procedural training splits avoid both."""

import re

import pytest

from envs.base import question_key
from trice_rl import builtin_model as builtin

QUESTION = re.compile(r"Question: (.*?)\nAnswer: ", re.DOTALL)


def corpus_questions(family: str) -> set[str]:
    """Every question of the family's full default-size corpus (text only, no training)."""
    config = builtin.BuiltinConfig.preset(family)
    questions = set()
    for segments in builtin.corpus_documents(config, config.train_steps * config.batch_size):
        for text, trained in segments:
            if not trained:
                questions |= {question_key(q) for q in QUESTION.findall(text)}
    return questions


@pytest.mark.parametrize("family", builtin.FAMILIES)
def test_no_held_out_question_in_the_pretraining_corpus(family):
    task = builtin.family_task(family)
    held_out = {split: {question_key(e.question) for e in task.examples(split)} for split in ("validation", "test")}
    assert len(held_out["test"]) > 100 and len(held_out["validation"]) > 100
    corpus = corpus_questions(family)
    assert len(corpus) > 1000  # the parser found the corpus's questions
    assert not corpus & held_out["test"]
    assert not corpus & held_out["validation"]
    train = {question_key(e.question) for e in task.examples("train")}
    assert not train & held_out["test"] and not train & held_out["validation"]
