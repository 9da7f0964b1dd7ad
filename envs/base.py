"""The Task abstraction and the single-step Gymnasium environment around it.

A :class:`Task` owns everything that is specific to one reasoning benchmark: its examples
per split, its prompt templates, how an answer is pulled out of a completion and how it is
compared with the target.  Algorithms talk to Tasks directly (batched, no Python round-trip
per example); :class:`ReasoningEnv` exposes the same Task through the Gymnasium API for
users who prefer it.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.data import DataError  # noqa: F401  (re-exported: raised by every task)

COT_TEMPLATE = "Question: {question}\nAnswer: Let's think step by step.\n"
HINTED_TEMPLATE = "Question: {question}\nAnswer: The answer is {answer}. Let's think step by step.\n"
# A direct completion ("7.") continues this, so the answer checker reads the two together.
DIRECT_ANSWER_PREFIX = "The answer is "
DIRECT_TEMPLATE = "Question: {question}\nAnswer: " + DIRECT_ANSWER_PREFIX
# The prompt kinds a task writes (:meth:`Task.prompt`): chain of thought, chain of thought
# with the answer revealed (STaR's rationalization, TRICE's hinted initialisation), and a
# direct answer.
PROMPT_KINDS = ("cot", "hinted", "direct")
# The kinds a model is evaluated or rewarded on (a hinted prompt would give the answer away).
ANSWERING_PROMPT_KINDS = ("cot", "direct")
FEW_SHOT_SEPARATOR = "\n\n"

# Answer statements (the rules: ``Task.extract_answer``).  "the answer is X": X runs to the
# end of its line or to the next "the answer is" on it (so a second statement on the same
# line is found too); a colon after "is" is skipped.  "\boxed{X}": X may hold one level of
# braces ("\boxed{\text{(D)}}").
_ANSWER_IS = re.compile(r"the answer is\s*:?((?:(?!the answer is)[^\n])*)", re.IGNORECASE)
_BRACED = r"\{((?:[^{}]|\{[^{}]*\})*)\}"
_BOXED = re.compile(r"\\boxed\s*" + _BRACED)
# Markup that wraps a whole answer: \boxed{X}, \text{X} (and kin), \(X\), \[X\].
_WRAPPED = re.compile(
    r"\\(?:boxed|text|textbf|mathrm|mathbf)\s*" + _BRACED + r"|\\\(((?:(?!\\\)).)*)\\\)|\\\[((?:(?!\\\]).)*)\\\]",
    re.DOTALL,
)
# Stripped from both ends of an answer (bold, code, quotes, math dollars); full stops (the
# sentence's end) are stripped from its end only.
_EDGE_MARKUP = string.whitespace + "*`\"'$"

MAX_COMPLETION_CHARS = 100_000


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of the ``stop`` strings."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


@dataclass(frozen=True)
class Example:
    """One question with its target answer and, where the task has one, a gold rationale.

    The rationale is the text the model should write after the CoT prompt, ending with the
    answer sentence (``... So the answer is 42.``).
    """

    question: str
    answer: str
    rationale: str | None = None


def question_key(question: str) -> str:
    """A question's text with whitespace collapsed: two questions that differ only in spacing
    are the same item (for keeping splits and pre-training corpora disjoint)."""
    return " ".join(question.split())


class Task:
    """Base class of a reasoning task.

    Subclasses set ``name`` and implement :meth:`load_split` (a list of :class:`Example`) and,
    where the default is not right, :meth:`normalize` (canonical form of an answer string,
    or ``None`` if it is not a well-formed answer).  Everything else has working defaults
    that follow the paper's templates.
    """

    name: str = "task"
    splits: tuple[str, ...] = ("train", "test")
    few_shot_prefix: str = ""
    # Where a sampler should stop when the model runs on past its rationale (it would start
    # the next few-shot question).  The EOS token always stops a sample too.
    stop_strings: tuple[str, ...] = ("\nQuestion:",)
    # Tokens a completion may take: enough for every gold rationale of the task.
    max_new_tokens: int = 256

    def __init__(self) -> None:
        self._cache: dict[str, list[Example]] = {}

    # ----------------------------------------------------------------- examples
    def load_split(self, split: str) -> list[Example]:
        raise NotImplementedError

    def examples(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        if split not in self._cache:
            self._cache[split] = list(self.load_split(split))
        return self._cache[split]

    def has_rationales(self, split: str = "train") -> bool:
        return all(example.rationale is not None for example in self.examples(split))

    # --------------------------------------------------------- rationale steps
    def gold_rationale(self, question: str) -> str | None:
        """The fully worked rationale of a question, where the task can derive it (the
        procedural tasks); ``None`` where it cannot."""
        return None

    def cut_at_stop(self, text: str) -> str:
        """A completion's text up to the first of :attr:`stop_strings` (as decoding cuts it)."""
        return cut_at_stop(text, self.stop_strings)

    def steps_right(self, questions: Sequence[str], completions: Sequence[str]) -> np.ndarray | None:
        """Per completion, whether its every step is right: its text (whitespace collapsed)
        is the gold rationale.  A right answer from wrong steps is right by luck; ``None``
        where the task has no gold rationales."""
        golds = [self.gold_rationale(q) for q in questions]
        if any(gold is None for gold in golds):
            return None
        return np.array([question_key(c) == question_key(g) for c, g in zip(completions, golds)], dtype=bool)

    # ------------------------------------------------------------------ prompts
    def prompt(self, kind: str, question: str, answer: str | None = None) -> str:
        """The prompt of a kind (:data:`PROMPT_KINDS`); ``hinted`` needs the answer."""
        if kind == "cot":
            return self.cot_prompt(question)
        if kind == "direct":
            return self.direct_prompt(question)
        if kind == "hinted":
            if answer is None:
                raise ValueError("a hinted prompt needs the answer")
            return self.hinted_prompt(question, answer)
        raise ValueError(f"prompt kind must be one of {', '.join(PROMPT_KINDS)}, got {kind!r}")

    def answer_text(self, completion: str, kind: str = "cot") -> str:
        """What the answer checker reads of a completion to a prompt of ``kind``: a direct
        completion is read after the prompt's "The answer is "."""
        return DIRECT_ANSWER_PREFIX + completion if kind == "direct" else completion

    def cot_prompt(self, question: str) -> str:
        return self.few_shot_prefix + COT_TEMPLATE.format(question=question)

    def hinted_prompt(self, question: str, answer: str) -> str:
        return self.few_shot_prefix + HINTED_TEMPLATE.format(question=question, answer=answer)

    def direct_prompt(self, question: str) -> str:
        return DIRECT_TEMPLATE.format(question=question)

    def direct_completion(self, answer: str) -> str:
        """The text that follows :meth:`direct_prompt` when the model answers directly."""
        return f"{answer}."

    def answer_sentence(self, answer: str) -> str:
        return f"So the answer is {answer}."

    # ------------------------------------------------------------------ answers
    def normalize(self, answer: str) -> str | None:
        """Canonical form of an answer; ``None`` when the text is not a valid answer."""
        answer = " ".join(answer.split())
        return answer.lower() or None

    @staticmethod
    def clean_answer(text: str) -> str:
        """``text`` without the markup that models put around an answer: whitespace, trailing
        full stops, **bold**, `code`, quotes, $...$, \\(...\\), \\[...\\], \\boxed{...},
        \\text{...}, also nested."""
        while True:
            stripped = text.lstrip(_EDGE_MARKUP).rstrip(_EDGE_MARKUP + ".")
            wrapped = _WRAPPED.fullmatch(stripped)
            if wrapped:
                stripped = next(group for group in wrapped.groups() if group is not None)
            if stripped == text:
                return text
            text = stripped

    def extract_answer(self, completion: str) -> str | None:
        """The normalised answer that a completion states, or ``None``; one rule set for
        every task (README, "Answer extraction").

        A statement is "the answer is X" (any case, an optional colon) or "\\boxed{X}"; the
        last statement whose :meth:`clean_answer`-ed X :meth:`normalize` accepts wins, and a
        completion whose statements are all invalid has no answer.  Without any statement,
        :meth:`fallback_answer` decides.
        """
        completion = completion[-MAX_COMPLETION_CHARS:]
        found = [(m.start(1), m[1]) for pattern in (_ANSWER_IS, _BOXED) for m in pattern.finditer(completion)]
        if not found:
            return self.fallback_answer(completion)
        for _, candidate in sorted(found, reverse=True):
            normalized = self.normalize(self.clean_answer(candidate))
            if normalized is not None:
                return normalized
        return None

    def fallback_answer(self, completion: str) -> str | None:
        """The answer of a completion that never says "the answer is": none by default
        (GSM8K reads a bare final number)."""
        return None

    def is_correct(self, completion: str, target: str) -> bool:
        predicted = self.extract_answer(completion)
        return predicted is not None and predicted == self.normalize(target)

    def score(self, completions: Sequence[str], targets: Sequence[str], kind: str = "cot") -> np.ndarray:
        """Batched correctness: a float array of 0/1, one entry per (completion, target);
        ``kind`` is the kind of prompt the completions answer (see :meth:`answer_text`)."""
        if kind != "cot":
            completions = [self.answer_text(completion, kind) for completion in completions]
        if len(completions) != len(targets):
            raise ValueError(f"score: {len(completions)} completions but {len(targets)} targets")
        normalized_targets: dict[str, str | None] = {}
        out = np.zeros(len(completions), dtype=np.float32)
        for i, (completion, target) in enumerate(zip(completions, targets)):
            if target not in normalized_targets:
                normalized_targets[target] = self.normalize(target)
            predicted = self.extract_answer(completion)
            out[i] = float(predicted is not None and predicted == normalized_targets[target])
        return out


class UnicodeText(spaces.Text):
    """A Text space that contains every string up to ``max_length`` characters.

    Gymnasium's ``Text`` only accepts a finite character set; questions and completions are
    arbitrary unicode.  Samples are drawn from printable ASCII.
    """

    def __init__(self, max_length: int, seed: int | np.random.Generator | None = None):
        super().__init__(max_length=max_length, min_length=0, charset=string.printable, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"UnicodeText(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, UnicodeText) and other.max_length == self.max_length


class ReasoningEnv(gym.Env):
    """A one-step reasoning environment: read a question, write a completion, get 1 if right.

    ## Description
    Each episode is one example of a :class:`Task`. The observation is the prompt the model
    should continue (the chain-of-thought template by default); the action is the model's
    completion; the episode ends after that single step.

    ## Action Space
    ``UnicodeText(max_action_length)``: any string. Garbage, empty or over-long text is a
    valid action and earns 0.

    ## Observation Space
    ``UnicodeText(max_observation_length)``: the prompt text.

    ## Rewards
    1.0 if the answer extracted from the completion equals the target, else 0.0 (with the
    direct prompt, the completion is read as the continuation of its "The answer is ").

    ## Episode End
    Always terminated after one step (``terminated=True``, ``truncated=False``).

    ## Arguments
    * ``task``: the :class:`Task` instance.
    * ``split``: default split for ``reset`` (``options={"split": ...}`` overrides it).
    * ``prompt``: ``"cot"`` (default) or ``"direct"`` (no chain of thought).
    * ``render_mode``: ``None`` or ``"ansi"``.

    ``reset(seed, options={"split": "train" | "test", "index": i})`` returns
    ``(prompt, info)`` with ``info`` holding ``split``, ``index``, ``question`` and ``target``;
    without an index the example is drawn with ``self.np_random``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        task: Task,
        split: str = "train",
        prompt: str = "cot",
        render_mode: str | None = None,
        max_observation_length: int = 1_000_000,
        max_action_length: int = 1_000_000,
    ):
        if prompt not in ANSWERING_PROMPT_KINDS:
            raise ValueError(f"prompt must be one of {', '.join(ANSWERING_PROMPT_KINDS)}, got {prompt!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        if split not in task.splits:
            raise ValueError(f"{task.name}: unknown split {split!r}; valid splits: {', '.join(task.splits)}")
        self.task = task
        self.split = split
        self.prompt = prompt
        self.render_mode = render_mode
        self.observation_space = UnicodeText(max_observation_length)
        self.action_space = UnicodeText(max_action_length)
        self._example: Example | None = None
        self._observation = ""
        self._last: tuple[str, float] | None = None

    def _prompt_for(self, example: Example) -> str:
        return self.task.prompt(self.prompt, example.question)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        split = options.pop("split", self.split)
        index = options.pop("index", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; valid: 'split', 'index'")
        examples = self.task.examples(split)
        if index is None:
            index = int(self.np_random.integers(len(examples)))
        elif not 0 <= int(index) < len(examples):
            raise IndexError(f"{self.task.name}: index {index} out of range for split {split!r} ({len(examples)} examples)")
        index = int(index)
        self._example = examples[index]
        self._observation = self._prompt_for(self._example)
        self._last = None
        info = {"split": split, "index": index, "question": self._example.question, "target": self._example.answer}
        return self._observation, info

    def step(self, action: str):
        if self._example is None:
            raise RuntimeError("call reset() before step()")
        completion = action if isinstance(action, str) else str(action)
        predicted = self.task.extract_answer(self.task.answer_text(completion, self.prompt))
        correct = predicted is not None and predicted == self.task.normalize(self._example.answer)
        reward = 1.0 if correct else 0.0
        self._last = (completion, reward)
        info = {"target": self._example.answer, "predicted": predicted, "correct": correct}
        return self._observation, reward, True, False, info

    def render(self):
        if self.render_mode != "ansi":
            return None
        text = self._observation
        if self._last is not None:
            text += self._last[0] + f"\n[reward {self._last[1]:.0f}]"
        return text


def register_task(env_id: str, task_factory: Callable[..., Task], **env_defaults: Any) -> None:
    """Register ``env_id`` with Gymnasium; ``gymnasium.make(env_id, **kwargs)`` then builds
    ``ReasoningEnv(task_factory(**task_kwargs), **env_kwargs)``, splitting ``kwargs`` between
    the two by the names ``ReasoningEnv`` accepts."""
    if env_id in gym.registry:
        return
    gym.register(id=env_id, entry_point=_make_env, kwargs={"task_factory": task_factory, **env_defaults})


_ENV_KEYWORDS = ("split", "prompt", "render_mode", "max_observation_length", "max_action_length")


def _make_env(task_factory: Callable[..., Task], **kwargs: Any) -> ReasoningEnv:
    env_kwargs = {key: kwargs.pop(key) for key in _ENV_KEYWORDS if key in kwargs}
    return ReasoningEnv(task_factory(**kwargs), **env_kwargs)


def env_task_factory(env_id: str) -> tuple[Callable[..., Task], dict[str, Any]]:
    """The task factory of a registered reasoning environment and its registered task
    arguments (the environment's own arguments left out)."""
    spec_kwargs = dict(gym.registry[env_id].kwargs or {})
    factory = spec_kwargs.pop("task_factory", None)
    if factory is None:
        raise ValueError(f"{env_id!r} is not a trice_rl reasoning environment")
    return factory, {key: value for key, value in spec_kwargs.items() if key not in _ENV_KEYWORDS}

