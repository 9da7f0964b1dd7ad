"""``trice_rl/Arithmetic-v0``: procedural chains of modular arithmetic with gold rationales.

A question is a chain of single operations on residues, e.g. "What is 3 + 8 - 5 + 9 modulo
10?", and its gold rationale does one operation per sentence, writing the exact value first
and then, where it falls outside 0..modulus-1, the value after wrapping around: "3 + 8 = 11
= 1. 1 - 5 = -4 = 6. 6 + 9 = 15 = 5. So the answer is 5."  The chain of thought makes every
step a small table look-up, while answering directly means composing all of them at once, so
reasoning helps a lot; chain length (``min_steps``..``max_steps``) makes examples easy or hard.

Why the exact value is written out: a residue on its own is independent of each operand (the
XOR-like structure that makes small models learn modular addition very slowly), while the
exact value and then its last digit (or its distance from the modulus) each follow one input
closely, so a small model learns the steps quickly.

Draw ``i`` of a split is a pure function of ``(seed, split, i)`` and a split holds the first
``num_<split>`` distinct draws, so splits are fixed without being stored.  Each distinct
question belongs to exactly one split (a hash of its text picks the split), which keeps
train, validation and test disjoint even where the space of short chains is small.
"""

from __future__ import annotations

import hashlib
import operator
import re
from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import numpy as np

from envs.answers import normalize_number
from envs.base import Example, Task, register_task

SPLITS = ("train", "validation", "test")
# Out of ten hash buckets of the question space: 8 train, 1 validation, 1 test.
_SPLIT_BUCKETS = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}
# Independent random streams over the same question space: the task's own examples, and the
# corpus that pre-trains the built-in model (which must never coincide with them by index).
STREAMS = ("task", "pretrain")
_OPERATIONS: dict[str, Callable[[int, int], int]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_MAX_ATTEMPTS = 10_000


@dataclass(frozen=True)
class ArithmeticConfig:
    """Difficulty and size of the task.  ``steps`` counts operations (operands = steps + 1)."""

    min_steps: int = 2
    max_steps: int = 7
    modulus: int = 10
    operators: str = "+-"
    num_train: int = 1000
    num_validation: int = 200
    num_test: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}..{self.max_steps}")
        if self.modulus < 2:
            raise ValueError(f"modulus must be at least 2, got {self.modulus}")
        if not self.operators or set(self.operators) - set(_OPERATIONS):
            raise ValueError(f"operators must be a non-empty subset of '+-*', got {self.operators!r}")
        for name in ("num_train", "num_validation", "num_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")


@dataclass(frozen=True)
class Step:
    left: int
    op: str
    right: int
    exact: int  # before wrapping around the modulus
    result: int


@dataclass(frozen=True)
class Chain:
    """One question as data: the builtin model's corpus rewrites its steps with mistakes."""

    operands: tuple[int, ...]
    operators: tuple[str, ...]
    modulus: int

    def question(self) -> str:
        terms = [str(self.operands[0])]
        for op, operand in zip(self.operators, self.operands[1:]):
            terms += [op, str(operand)]
        return f"What is {' '.join(terms)} modulo {self.modulus}?"

    def steps(self, step_result: Callable[[int, str, int, int], int] | None = None) -> list[Step]:
        """The worked steps; ``step_result(left, op, right, modulus)`` may replace the true
        result of a step (a mistake), and later steps then carry the wrong running value."""
        value = self.operands[0]
        steps = []
        for op, right in zip(self.operators, self.operands[1:]):
            result = (step_result or true_step_result)(value, op, right, self.modulus)
            steps.append(Step(value, op, right, _OPERATIONS[op](value, right), result))
            value = result
        return steps

    def answer(self) -> int:
        return self.steps()[-1].result


def true_step_result(left: int, op: str, right: int, modulus: int) -> int:
    return _OPERATIONS[op](left, right) % modulus


def wraps(left: int, op: str, right: int, modulus: int) -> bool:
    """Whether the exact result of a step leaves 0..modulus-1, i.e. the step wraps around."""
    return not 0 <= _OPERATIONS[op](left, right) < modulus


def write_rationale(steps: Sequence[Step]) -> str:
    """One sentence per operation ("3 + 8 = 11 = 1." where it wraps, "3 + 4 = 7." where it
    does not), then the answer sentence (the last running value)."""
    sentences = [
        f"{s.left} {s.op} {s.right} = {s.exact} = {s.result}." if s.exact != s.result else f"{s.left} {s.op} {s.right} = {s.result}."
        for s in steps
    ]
    return " ".join(sentences + [f"So the answer is {steps[-1].result}."])


def split_of(question: str, seed: int) -> str:
    """The split a question belongs to: a stable hash of (seed, text), never Python's hash()."""
    digest = hashlib.blake2b(f"{seed}\0{question}".encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "little") % 10
    return next(split for split, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def generate_chain(config: ArithmeticConfig, split: str, index: int, stream: str = "task") -> Chain:
    """Chain ``index`` of ``split``: redraw (deterministically) until the question hashes into
    ``split``, which needs about 1.25 draws for train and 10 for validation or test."""
    split_id, stream_id = SPLITS.index(split), STREAMS.index(stream)
    for attempt in range(_MAX_ATTEMPTS):
        rng = np.random.default_rng([config.seed, split_id, stream_id, index, attempt])
        num_steps = int(rng.integers(config.min_steps, config.max_steps + 1))
        operands = tuple(int(x) for x in rng.integers(0, config.modulus, size=num_steps + 1))
        operators = tuple(str(config.operators[i]) for i in rng.integers(0, len(config.operators), size=num_steps))
        chain = Chain(operands, operators, config.modulus)
        if split_of(chain.question(), config.seed) == split:
            return chain
    raise RuntimeError(f"no question for split {split!r} after {_MAX_ATTEMPTS} draws; is the question space empty?")


def generate_example(config: ArithmeticConfig, split: str, index: int) -> Example:
    chain = generate_chain(config, split, index)
    return Example(chain.question(), str(chain.answer()), write_rationale(chain.steps()))


class ArithmeticTask(Task):
    """Modular arithmetic chains; keyword arguments override :class:`ArithmeticConfig` fields,
    so ``gymnasium.make("trice_rl/Arithmetic-v0", max_steps=5)`` works."""

    name = "arithmetic"
    max_new_tokens = 160  # the longest gold rationale is about 100 characters
    splits = SPLITS

    def __init__(self, config: ArithmeticConfig | None = None, **overrides: int | str):
        super().__init__()
        known = {f.name for f in fields(ArithmeticConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown ArithmeticConfig fields {unknown}; valid: {sorted(known)}")
        self.config = replace(config or ArithmeticConfig(), **overrides)

    def split_size(self, split: str) -> int:
        return getattr(self.config, f"num_{split}")

    def load_split(self, split: str) -> list[Example]:
        """The first ``num_<split>`` distinct questions of the split's stream (short chains
        repeat otherwise, which would over-weight them)."""
        wanted = self.split_size(split)
        examples: dict[str, Example] = {}
        for index in range(_MAX_ATTEMPTS + 100 * wanted):
            if len(examples) == wanted:
                return list(examples.values())
            example = generate_example(self.config, split, index)
            examples.setdefault(example.question, example)
        raise ValueError(f"the {split} split holds fewer than {wanted} distinct questions; "
                         f"lower num_{split} or widen the chains (steps, modulus, operators)")

    def normalize(self, answer: str) -> str | None:
        return normalize_number(answer)

    def gold_rationale(self, question: str) -> str | None:
        """The worked steps of a question of this task's form ("What is 3 + 8 modulo 10?")."""
        match = _QUESTION.match(question)
        if not match:
            return None
        tokens = match["terms"].split()
        if len(tokens) < 3 or len(tokens) % 2 == 0 or not all(t.isdigit() for t in tokens[::2]) or set(tokens[1::2]) - set(_OPERATIONS):
            return None
        chain = Chain(tuple(int(t) for t in tokens[::2]), tuple(tokens[1::2]), int(match["modulus"]))
        return write_rationale(chain.steps())


_QUESTION = re.compile(r"^What is (?P<terms>.+) modulo (?P<modulus>\d+)\?$")

register_task("trice_rl/Arithmetic-v0", ArithmeticTask)
