"""Procedural training items for two BIG-Bench Hard tasks, drawn like the real ones.

BBH has no training split, so ``BBHTask(train_source="procedural")`` trains on these and
tests on the real 250 items.  Both generators match the measured distribution of the real
files (see tests/test_arithmetic.py):

* boolean_expressions: every real item is an expression of exactly 8 tokens over
  ``True False not and or ( )``, and the 250 items are distinct draws that fit a uniform
  choice among all 2,122 such expressions (literal counts 1/2/3/4: real 5/65/118/62,
  uniform 4.9/56.6/128.2/60.3).  Note that the space is small: the real items are in it.
* multistep_arithmetic_two: always ``((a o b o c o d) O (e o f o g o h)) =`` with operands
  uniform in -9..9 and each operator uniform over ``+ - *``.

Gold rationales rewrite the expression one reduction per ``=`` (copy, change one spot), a
regular form that a small character-level model can learn.  Each reduction goes through an
``evaluate`` hook so that the built-in model's corpus can write systematic mistakes.
"""

from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from envs.base import Example

BOOLEAN_TOKENS = 8
LITERALS = ("True", "False")
_BOOLEAN_OPERATORS = {"not": operator.not_, "and": operator.and_, "or": operator.or_}
# Reduction order of ready sub-expressions: parentheses around a literal go first, then
# "not", "and", "or" (their precedence), leftmost first within a kind.
_REDUCTION_ORDER = ("()", "not", "and", "or")

ARITHMETIC_OPERATORS = ("+", "-", "*")
OPERAND_RANGE = (-9, 9)
OPERANDS_PER_GROUP = 4
_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul}

# evaluate(operator, operands) -> value; the default is the true value.
BooleanEvaluate = Callable[[str, tuple[bool, ...]], bool]
ArithmeticEvaluate = Callable[[str, int, int], int]


def true_boolean(op: str, operands: tuple[bool, ...]) -> bool:
    return _BOOLEAN_OPERATORS[op](*operands)


def true_arithmetic(op: str, left: int, right: int) -> int:
    return _ARITHMETIC[op](left, right)


# ------------------------------------------------------------------ boolean_expressions
@dataclass
class _Node:
    kind: str  # "literal", "()", "not", "and", "or"
    children: list["_Node"]
    value: bool | None = None

    def render(self) -> str:
        if self.kind == "literal":
            return str(self.value)
        if self.kind == "()":
            return f"( {self.children[0].render()} )"
        if self.kind == "not":
            return f"not {self.children[0].render()}"
        return f" {self.kind} ".join(child.render() for child in self.children)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def _parse_boolean(tokens: list[str]) -> _Node:
    """Recursive descent: or < and < not < parentheses; binary operators associate left."""
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal position
        token = peek()
        if token is None or (expected is not None and token != expected):
            raise ValueError(f"malformed boolean expression {' '.join(tokens)!r} at token {position}")
        position += 1
        return token

    def binary(kind: str, operand: Callable[[], _Node]) -> Callable[[], _Node]:
        def parse() -> _Node:
            node = operand()
            while peek() == kind:
                take()
                node = _Node(kind, [node, operand()])
            return node

        return parse

    def unary() -> _Node:
        token = take()
        if token == "not":
            return _Node("not", [unary()])
        if token == "(":
            inner = disjunction()
            take(")")
            return _Node("()", [inner])
        if token in LITERALS:
            return _Node("literal", [], token == "True")
        raise ValueError(f"malformed boolean expression {' '.join(tokens)!r}: unexpected {token!r}")

    conjunction = binary("and", unary)
    disjunction = binary("or", conjunction)
    tree = disjunction()
    if peek() is not None:
        raise ValueError(f"malformed boolean expression {' '.join(tokens)!r}: trailing {peek()!r}")
    return tree


def boolean_reductions(expression: str, evaluate: BooleanEvaluate = true_boolean) -> list[str]:
    """The expression, then each form after one more reduction, down to one literal."""
    tree = _parse_boolean(expression.split())
    forms = [tree.render()]
    while tree.kind != "literal":
        ready = [n for n in tree.walk() if n.kind != "literal" and all(c.kind == "literal" for c in n.children)]
        node = min(ready, key=lambda n: _REDUCTION_ORDER.index(n.kind))  # min keeps the leftmost
        operands = tuple(child.value for child in node.children)
        node.value = operands[0] if node.kind == "()" else evaluate(node.kind, operands)
        node.kind, node.children = "literal", []
        forms.append(tree.render())
    return forms


def boolean_rationale(forms: list[str]) -> str:
    return f"{' = '.join(forms)}. So the answer is {forms[-1]}."


@functools.cache
def all_boolean_expressions(num_tokens: int = BOOLEAN_TOKENS) -> tuple[str, ...]:
    """Every distinct well-formed expression of exactly ``num_tokens`` tokens, sorted."""

    @functools.cache
    def shapes(n: int) -> frozenset[tuple[str, ...]]:
        out = {("L",)} if n == 1 else set()
        if n >= 2:
            out |= {("not", *rest) for rest in shapes(n - 1)}
        if n >= 3:
            out |= {("(", *inner, ")") for inner in shapes(n - 2)}
            for left_size in range(1, n - 1):
                for left in shapes(left_size):
                    for right in shapes(n - 1 - left_size):
                        out |= {(*left, op, *right) for op in ("and", "or")}
        return frozenset(out)

    expressions = []
    for shape in shapes(num_tokens):
        slots = [i for i, token in enumerate(shape) if token == "L"]
        for values in np.ndindex(*(2,) * len(slots)):
            tokens = list(shape)
            for slot, value in zip(slots, values):
                tokens[slot] = LITERALS[value]
            expressions.append(" ".join(tokens))
    return tuple(sorted(expressions))


def draw_boolean_expression(rng: np.random.Generator) -> str:
    """Uniform over all 8-token expressions, as the real items are."""
    expressions = all_boolean_expressions()
    return expressions[int(rng.integers(len(expressions)))]


def generate_boolean_expressions(index: int, seed: int) -> Example:
    """A BBH boolean_expressions item ("... is", target "True"/"False") with a gold rationale."""
    expression = draw_boolean_expression(np.random.default_rng([seed, index]))
    forms = boolean_reductions(expression)
    return Example(f"{expression} is", forms[-1], boolean_rationale(forms))


# -------------------------------------------------------------- multistep_arithmetic_two
def group_reductions(terms: list[int | str], evaluate: ArithmeticEvaluate = true_arithmetic) -> list[list[int | str]]:
    """``terms`` (operand, operator, operand, ...) and each form after one more reduction:
    the leftmost "*" first, then the leftmost "+" or "-"."""
    forms = [list(terms)]
    while len(terms) > 1:
        ops = terms[1::2]
        at = 2 * ops.index("*") + 1 if "*" in ops else 1
        terms = terms[: at - 1] + [evaluate(terms[at], terms[at - 1], terms[at + 1])] + terms[at + 2 :]
        forms.append(terms)
    return forms


def render_terms(terms: list[int | str]) -> str:
    return " ".join(str(term) for term in terms)


def multistep_rationale(
    left: list[int | str], middle: str, right: list[int | str], evaluate: ArithmeticEvaluate = true_arithmetic
) -> tuple[str, int]:
    """"A = ... = a. B = ... = b. A o B = a o b = c. So the answer is c." and c."""
    sentences, values = [], []
    for name, terms in (("A", left), ("B", right)):
        forms = group_reductions(terms, evaluate)
        sentences.append(f"{name} = {' = '.join(render_terms(form) for form in forms)}.")
        values.append(forms[-1][0])
    answer = evaluate(middle, *values)
    sentences.append(f"A {middle} B = {values[0]} {middle} {values[1]} = {answer}.")
    return " ".join(sentences + [f"So the answer is {answer}."]), answer


def draw_multistep(rng: np.random.Generator) -> tuple[list[int | str], str, list[int | str]]:
    """(left group terms, middle operator, right group terms) of one BBH-shaped question."""

    def group() -> list[int | str]:
        operands = rng.integers(OPERAND_RANGE[0], OPERAND_RANGE[1] + 1, size=OPERANDS_PER_GROUP)
        ops = rng.choice(ARITHMETIC_OPERATORS, size=OPERANDS_PER_GROUP - 1)
        terms: list[int | str] = [int(operands[0])]
        for op, operand in zip(ops, operands[1:]):
            terms += [str(op), int(operand)]
        return terms

    left, right = group(), group()
    return left, str(rng.choice(ARITHMETIC_OPERATORS)), right


def multistep_question(left: list[int | str], middle: str, right: list[int | str]) -> str:
    return f"(({render_terms(left)}) {middle} ({render_terms(right)})) ="


def generate_multistep_arithmetic_two(index: int, seed: int) -> Example:
    """A BBH multistep_arithmetic_two item ("((...) o (...)) =", integer target) with a gold
    rationale."""
    left, middle, right = draw_multistep(np.random.default_rng([seed, index]))
    rationale, answer = multistep_rationale(left, middle, right)
    return Example(multistep_question(left, middle, right), str(answer), rationale)


# ------------------------------------------------------------------ gold rationales
_MULTISTEP_QUESTION = re.compile(r"^\(\((?P<left>[^()]+)\) (?P<middle>[-+*]) \((?P<right>[^()]+)\)\) =$")


def _terms(text: str) -> list[int | str]:
    tokens = text.split()
    return [int(token) if i % 2 == 0 else token for i, token in enumerate(tokens)]


def gold_rationale(task_name: str, question: str) -> str | None:
    """The worked rationale of a boolean_expressions or multistep_arithmetic_two question
    (generated or real: they share one format), in the generator's format; ``None`` for
    other tasks or a question of another shape."""
    try:
        if task_name == "boolean_expressions" and question.endswith(" is"):
            return boolean_rationale(boolean_reductions(question[: -len(" is")]))
        match = _MULTISTEP_QUESTION.match(question.strip())
        if task_name == "multistep_arithmetic_two" and match:
            return multistep_rationale(_terms(match["left"]), match["middle"], _terms(match["right"]))[0]
    except (ValueError, IndexError, KeyError):
        return None
    return None
