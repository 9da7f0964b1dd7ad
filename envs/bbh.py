"""The 27 BIG-Bench Hard tasks as reasoning tasks (``trice_rl/BBH-<task>-v0``).

## Description
One environment per BBH task (Suzgun et al., 2022), e.g.
``trice_rl/BBH-boolean_expressions-v0``; :data:`BBH_TASKS` lists the 27 names.  BBH ships one
set of examples per task (``<data_dir>/bbh/<task>.json``), split here 60/40 into train and
test as in the TRICE paper (see :class:`BBHTask` for the exact rule).  With
``few_shot=True`` the prompt starts with the task's three chain-of-thought exemplars from
``<data_dir>/bbh/cot-prompts/<task>.txt``, rewritten into this project's template.
``boolean_expressions`` and ``multistep_arithmetic_two`` can instead train on procedurally
generated questions with gold rationales (``train_source="procedural"``), keeping all 250
real items for testing.

## Action Space
Any string: the model's completion after the chain-of-thought prompt.

## Observation Space
The prompt: the few-shot exemplars (if any), then
``Question: <input>\\nAnswer: Let's think step by step.\\n``.

## Rewards
1.0 when the answer after the last "the answer is" matches the target, else 0.0, compared
per answer format: option letters (``(A)``, ``A`` and ``(A) option text`` all mean A),
``True``/``False``, ``Yes``/``No``, ``valid``/``invalid`` (whole words, any case), integers
(exact numeric comparison), Dyck bracket sequences (whitespace ignored) and sorted word lists
(whitespace-normalised, case-insensitive).  Three upstream multiple-choice targets are
option text rather than a letter (e.g. ``Monsters, Inc``); stating that text is correct.

## Episode End
After the single step.

## Arguments
``gymnasium.make("trice_rl/BBH-<task>-v0", data_dir=None, few_shot=False,
train_source="real", seed=0, num_train=1000, num_validation=250, split="train",
prompt="cot")``; see :class:`BBHTask`.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
from typing import Callable

import numpy as np

from envs.answers import normalize_number
from envs.base import COT_TEMPLATE, FEW_SHOT_SEPARATOR, Example, Task, question_key, register_task
from envs.data import DataError, read_data_text
from envs.download import data_file

BBH_TASKS = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)

# Answer formats other than multiple choice; the labels keep the data's spelling.
_LABELS = {
    "boolean_expressions": ("True", "False"),
    "causal_judgement": ("Yes", "No"),
    "formal_fallacies": ("valid", "invalid"),
    "navigate": ("Yes", "No"),
    "sports_understanding": ("yes", "no"),
    "web_of_lies": ("Yes", "No"),
}
_INTEGER_TASKS = ("multistep_arithmetic_two", "object_counting")
PROCEDURAL_TASKS = ("boolean_expressions", "multistep_arithmetic_two")
_EXPECTED_ITEM = "an object with string fields 'input' and 'target'"

TRAIN_FRACTION = 0.6
# Procedural validation questions come from generator indices starting here, so they never
# share an index with training questions and stay the same whatever num_train is.
VALIDATION_INDEX_OFFSET = 1_000_000_000

# "(A)" / "(a)" with anything after it, or a bare capital letter standing alone ("A", "A)",
# "A: ..."); a capital that starts a word ("Alice") is not an option letter.
_OPTION_LETTER = re.compile(r"\(([A-Za-z])\)|([A-Z])(?:[).:]|\s*$)")
_WORD = re.compile(r"[A-Za-z]+")
_BRACKETS = frozenset("()[]{}<>")
# One exemplar of a CoT prompt file: "Q: <input>\nA: Let's think step by step." then the
# rationale (on the same line in sports_understanding), up to the next "Q: " line.
_EXEMPLAR = re.compile(
    r"^Q: (?P<question>.*?)\nA: Let's think step by step\.\s*(?P<rationale>.*?)\s*(?=^Q: |\Z)",
    re.DOTALL | re.MULTILINE,
)


def _option_letter(answer: str) -> str | None:
    match = _OPTION_LETTER.match(answer)
    return f"({(match[1] or match[2]).upper()})" if match else None


def _label(labels: tuple[str, ...], answer: str) -> str | None:
    """The label that ``answer`` starts with as a whole word (so "invalid" is not "valid")."""
    match = _WORD.match(answer)
    by_lower = {label.lower(): label for label in labels}
    return by_lower.get(match[0].lower()) if match else None


def _dyck(answer: str) -> str | None:
    """The bracket sequence without whitespace; ``None`` if anything else is in it."""
    brackets = "".join(answer.split())
    return brackets if brackets and set(brackets) <= _BRACKETS else None


# Completion lengths of the tasks whose gold rationales the procedural generator writes
# (longest: about 200 and 170 characters); the others keep Task's default.
MAX_NEW_TOKENS = {"boolean_expressions": 320, "multistep_arithmetic_two": 280}


class BBHTask(Task):
    """One BIG-Bench Hard task.

    Split rule (``train_source="real"``): the task's ``n`` examples, in file order, are
    permuted with ``numpy.random.default_rng(seed).permutation(n)``; the first
    ``round(0.6 * n)`` indices of that permutation form the train split and the rest the test
    split, both in permutation order (250 examples give 150/100).  ``seed=0`` is the
    project's fixed split; other seeds give other splits of the same data.

    ``train_source="procedural"`` (``boolean_expressions`` and ``multistep_arithmetic_two``
    only) trains on generated questions with gold rationales from :mod:`envs.procedural_bbh`:
    train holds ``num_train`` examples from generator indices 0, 1, 2, ... and validation
    ``num_validation`` examples from indices ``VALIDATION_INDEX_OFFSET``, +1, ...; a generated
    question identical to a real item (or, for validation, to a training question) is skipped
    and the next index is used, so the counts are exact and no real item is trained on.
    The test split is then all real items, in file order.

    Arguments: ``task_name`` (one of :data:`BBH_TASKS`), ``data_dir`` (default
    ``$TRICE_RL_DATA``, else the download cache of :mod:`envs.download`), ``few_shot``
    (prepend the task's 3 CoT exemplars), ``train_source`` (``"real"`` or ``"procedural"``),
    ``seed`` (split seed for real data, generator seed for procedural data), ``num_train``,
    ``num_validation`` and ``generator`` (procedural only; ``(index, seed) -> Example``,
    default: the task's generator in :mod:`envs.procedural_bbh`).
    """

    def __init__(
        self,
        task_name: str,
        data_dir: str | os.PathLike | None = None,
        few_shot: bool = False,
        train_source: str = "real",
        seed: int = 0,
        num_train: int = 1000,
        num_validation: int = 250,
        generator: Callable[[int, int], Example] | None = None,
    ):
        super().__init__()
        if task_name not in BBH_TASKS:
            raise ValueError(f"unknown BBH task {task_name!r}; valid: {', '.join(BBH_TASKS)}")
        if train_source not in ("real", "procedural"):
            raise ValueError(f"train_source must be 'real' or 'procedural', got {train_source!r}")
        if train_source == "procedural":
            if task_name not in PROCEDURAL_TASKS:
                raise ValueError(
                    f"train_source='procedural' exists only for {', '.join(PROCEDURAL_TASKS)}, not {task_name!r}"
                )
            if not 0 <= num_train <= VALIDATION_INDEX_OFFSET or num_validation < 0:
                raise ValueError(f"need 0 <= num_train <= {VALIDATION_INDEX_OFFSET} and num_validation >= 0")
            self.splits = ("train", "validation", "test")
        self.name = f"bbh/{task_name}"
        self.task_name = task_name
        self.max_new_tokens = MAX_NEW_TOKENS.get(task_name, Task.max_new_tokens)
        self.data_dir = data_dir
        self.train_source = train_source
        self.seed = seed
        self.num_train = num_train
        self.num_validation = num_validation
        # (index, seed) -> Example: the task's procedural generator unless one is given
        self.generator = generator
        if few_shot:
            self.few_shot_prefix = "".join(
                COT_TEMPLATE.format(question=question) + rationale + FEW_SHOT_SEPARATOR
                for question, rationale in self._exemplars()
            )

    # ----------------------------------------------------------------- examples
    def load_split(self, split: str) -> list[Example]:
        real = self._real_examples
        if self.train_source == "procedural":
            if split == "test":
                return real
            return self._procedural(split, real)
        order = np.random.default_rng(self.seed).permutation(len(real))
        cut = round(TRAIN_FRACTION * len(real))
        return [real[i] for i in (order[:cut] if split == "train" else order[cut:])]

    @functools.cached_property
    def _real_examples(self) -> list[Example]:
        path = data_file(self.data_dir, f"bbh/{self.task_name}.json")
        try:
            data = json.loads(read_data_text(path))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {error.lineno} column {error.colno}: not valid JSON ({error.msg})") from None
        if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
            raise DataError(f"{path}: field 'examples' is missing or not a list (of items, each {_EXPECTED_ITEM})")
        examples = [self._real_example(f"{path}, examples[{i}]", item) for i, item in enumerate(data["examples"])]
        # The 60/40 split needs two items for a non-empty test split; procedural tests on all.
        minimum = 1 if self.train_source == "procedural" else 2
        if len(examples) < minimum:
            raise DataError(
                f"{path}: field 'examples' has {len(examples)} item(s), expected at least {minimum} "
                f"(each {_EXPECTED_ITEM}), so that no split is empty"
            )
        return examples

    def _real_example(self, where: str, item: object) -> Example:
        """One item of the task file (the files are one line each, so ``where`` names its index)."""
        for field in ("input", "target"):
            if not isinstance(item, dict) or not isinstance(item.get(field), str):
                raise DataError(f"{where}: field {field!r} is missing or not a string (expected {_EXPECTED_ITEM})")
        if self.normalize(item["target"]) is None:
            raise DataError(
                f"{where}: field 'target' is {item['target']!r}, not an answer in {self.task_name}'s format "
                "(no completion could ever match it)"
            )
        return Example(question=item["input"], answer=item["target"])

    def _procedural(self, split: str, real: list[Example]) -> list[Example]:
        generate = self.generator or getattr(importlib.import_module("envs.procedural_bbh"), f"generate_{self.task_name}")
        taken = {question_key(example.question) for example in real}
        if split == "train":
            start, count = 0, self.num_train
        else:
            start, count = VALIDATION_INDEX_OFFSET, self.num_validation
            taken |= {question_key(example.question) for example in self.examples("train")}
        examples: list[Example] = []
        index, max_draws = start, 100 * count + 1000  # only a broken generator repeats this much
        while len(examples) < count:
            if index - start == max_draws:
                raise RuntimeError(
                    f"{self.name}: only {len(examples)} of {count} generated {split} questions "
                    f"differ from the held-out ones after {max_draws} draws; the question space may "
                    "be used up (boolean_expressions has 2,122): lower num_train or num_validation"
                )
            example = generate(index, self.seed)
            if question_key(example.question) not in taken:
                examples.append(example)
            index += 1
        return examples

    def _exemplars(self) -> list[tuple[str, str]]:
        """(question, rationale) pairs of the CoT prompt file, after its canary, separator and
        task-description lines."""
        path = data_file(self.data_dir, f"bbh/cot-prompts/{self.task_name}.txt")
        lines = read_data_text(path).split("\n", 3)
        body = lines[3] if len(lines) == 4 else ""
        exemplars = [(m["question"], m["rationale"]) for m in _EXEMPLAR.finditer(body)]
        if not exemplars:
            raise DataError(
                f"{path}: no exemplars of the form \"Q: ...\\nA: Let's think step by step. ...\" after line 3"
            )
        return exemplars

    def gold_rationale(self, question: str) -> str | None:
        """Worked steps for the tasks whose questions the procedural generators can solve."""
        if self.task_name not in PROCEDURAL_TASKS:
            return None
        return importlib.import_module("envs.procedural_bbh").gold_rationale(self.task_name, question)

    # ------------------------------------------------------------------ answers
    def normalize(self, answer: str) -> str | None:
        if self.task_name in _LABELS:
            return _label(_LABELS[self.task_name], answer)
        if self.task_name in _INTEGER_TASKS:
            return normalize_number(answer)
        if self.task_name == "dyck_languages":
            return _dyck(answer)
        if self.task_name == "word_sorting":
            return super().normalize(answer)  # whitespace-normalised, case-insensitive
        # Multiple choice: the option letter, else the text itself, which is how the three
        # option-text targets (``Monsters, Inc``) are matched.
        return _option_letter(answer) or super().normalize(answer)


for _task_name in BBH_TASKS:
    register_task(f"trice_rl/BBH-{_task_name}-v0", functools.partial(BBHTask, _task_name))
