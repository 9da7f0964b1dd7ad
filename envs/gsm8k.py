"""GSM8K grade-school math word problems as a reasoning task (``trice_rl/GSM8K-v0``).

## Description
The standard GSM8K split (Cobbe et al., 2021): 7,473 training and 1,319 test problems, read
from ``<data_dir>/gsm8k/train.jsonl`` and ``<data_dir>/gsm8k/test.jsonl`` (JSON Lines with
string fields ``question`` and ``answer``; the reference answer ends with ``#### N``).
Every training example carries a gold rationale: the reference solution without its
calculator annotations, ending in "So the answer is N.".

## Action Space
Any string: the model's completion after the chain-of-thought prompt.

## Observation Space
The prompt: ``Question: <problem>\\nAnswer: Let's think step by step.\\n``.

## Rewards
1.0 when the completion's final answer equals the reference number, else 0.0.  The answer
is the number after the last "the answer is"; a completion that never says "the answer is"
is read by its last number.  Numbers compare exactly after normalisation
(:func:`envs.answers.normalize_number`): thousands commas, ``$``, ``%``, trailing ``.0`` and
minus signs are handled, so ``$1,080.00`` equals ``1080``.

## Episode End
After the single step.

## Arguments
``gymnasium.make("trice_rl/GSM8K-v0", data_dir=None, split="train", prompt="cot")``;
``data_dir`` defaults to ``$TRICE_RL_DATA``; without either the files are downloaded from
the upstream repository, verified and cached (:mod:`envs.download`).
"""

from __future__ import annotations

import json
import os
import re

from envs.answers import last_number, normalize_number
from envs.base import Example, Task, register_task
from envs.data import DataError, read_data_text
from envs.download import data_file

_CALCULATOR_ANNOTATION = re.compile(r"<<.*?>>")
_FINAL_ANSWER_MARKER = "#### "
_EXPECTED_RECORD = "an object with string fields 'question' and 'answer'"


class GSM8KTask(Task):
    """GSM8K: the standard train/test files, numeric answers, gold rationales for every example.

    ``data_dir`` defaults to ``$TRICE_RL_DATA``, else the download cache.  The target is the
    text after the last ``#### `` with commas removed (``"1080"``); answers compare by
    :func:`envs.answers.normalize_number`, and a completion without "the answer is" is read
    by its last number, since models trained on GSM8K often just end on the result.
    """

    name = "gsm8k"

    def __init__(self, data_dir: str | os.PathLike | None = None):
        super().__init__()
        self.data_dir = data_dir

    def load_split(self, split: str) -> list[Example]:
        path = data_file(self.data_dir, f"gsm8k/{split}.jsonl")
        lines = read_data_text(path).split("\n")
        if lines[-1] == "":
            lines.pop()  # what follows the newline that ends the last line
        if not lines:
            raise DataError(f"{path}: no examples (expected one JSON object per line, {_EXPECTED_RECORD})")
        return [self._parse_line(f"{path}, line {number}", line) for number, line in enumerate(lines, start=1)]

    def _parse_line(self, where: str, line: str) -> Example:
        """One line's example; ``where`` (file and line) starts every error message."""
        if not line.strip():
            raise DataError(f"{where}: empty line (expected one JSON object per line, {_EXPECTED_RECORD})")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        for field in ("question", "answer"):
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise DataError(f"{where}: field {field!r} is missing or not a string (expected {_EXPECTED_RECORD})")
        if _FINAL_ANSWER_MARKER not in record["answer"]:
            raise DataError(f"{where}: field 'answer' has no '{_FINAL_ANSWER_MARKER}' line (expected it to end with '#### N')")
        example = self._example(record["question"], record["answer"])
        if self.normalize(example.answer) is None:
            raise DataError(f"{where}: field 'answer' ends in '{_FINAL_ANSWER_MARKER}{example.answer}', expected a number")
        return example

    def _example(self, question: str, solution: str) -> Example:
        """The target (text after the last ``#### ``, commas removed) and the gold rationale."""
        steps, _, final = solution.rpartition(_FINAL_ANSWER_MARKER)
        answer = final.strip().replace(",", "")
        steps = _CALCULATOR_ANNOTATION.sub("", steps).rstrip()
        rationale = f"{steps}\n{self.answer_sentence(answer)}" if steps else self.answer_sentence(answer)
        return Example(question=question, answer=answer, rationale=rationale)

    def normalize(self, answer: str) -> str | None:
        return normalize_number(answer)

    def fallback_answer(self, completion: str) -> str | None:
        return last_number(completion)


register_task("trice_rl/GSM8K-v0", GSM8KTask)
