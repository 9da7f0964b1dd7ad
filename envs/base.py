"""The Task abstraction and the single-step Gymnasium environment around it.

A :class:`Task` owns everything that is specific to one reasoning benchmark: its examples
per split, its prompt templates, how an answer is pulled out of a completion and how it is
compared with the target.  Algorithms talk to Tasks directly (batched, no Python round-trip
per example); :class:`ReasoningEnv` exposes the same Task through the Gymnasium API for
users who prefer it.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

COT_TEMPLATE = "Question: {question}\nAnswer: Let's think step by step.\n"
HINTED_TEMPLATE = "Question: {question}\nAnswer: The answer is {answer}. Let's think step by step.\n"
DIRECT_TEMPLATE = "Question: {question}\nAnswer: The answer is "
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


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file, line and field."""


DATA_LAYOUT = (
    "a folder laid out as gsm8k/train.jsonl, gsm8k/test.jsonl, bbh/<task>.json, "
    "bbh/cot-prompts/<task>.txt (GSM8K: github.com/openai/grade-school-math, BIG-Bench Hard: "
    "github.com/suzgunmirac/BIG-Bench-Hard)"
)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` if given, else ``$TRICE_RL_DATA``; ``None`` means the files download themselves."""
    if data_dir is None:
        data_dir = os.environ.get("TRICE_RL_DATA")
    return Path(data_dir).expanduser() if data_dir else None


def data_file(data_dir: str | os.PathLike | None, relative: str) -> Path:
    """The file ``relative`` in the user's data folder, or else the verified download cache's
    copy (:mod:`envs.download`); a DataError names a file the user's folder lacks."""
    folder = resolve_data_dir(data_dir)
    if folder is None:
        from envs.download import fetch  # envs.download imports this module

        return fetch(relative)
    path = folder / relative
    if not path.is_file():
        raise DataError(f"missing data file {path}: data_dir (or TRICE_RL_DATA) must be {DATA_LAYOUT}")
    return path


def read_data_text(path: Path) -> str:
    """The file's UTF-8 text; a DataError names the line and column of a byte that is not UTF-8
    (Python's own error names neither the file nor the line)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - raw.rfind(b"\n", 0, error.start)
        raise DataError(
            f"{path}, line {line} column {column}: byte 0x{raw[error.start]:02x} is not UTF-8 (expected UTF-8 text)"
        ) from None


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
        cut = min((text.find(s) for s in self.stop_strings if s in text), default=-1)
        return text[:cut] if cut >= 0 else text

    def steps_right(self, questions: Sequence[str], completions: Sequence[str]) -> np.ndarray | None:
        """Per completion, whether its every step is right: its text (whitespace collapsed)
        is the gold rationale.  A right answer from wrong steps is right by luck; ``None``
        where the task has no gold rationales."""
        golds = [self.gold_rationale(q) for q in questions]
        if any(gold is None for gold in golds):
            return None
        return np.array([question_key(c) == question_key(g) for c, g in zip(completions, golds)], dtype=bool)

    # ------------------------------------------------------------------ prompts
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

    def score(self, completions: Sequence[str], targets: Sequence[str]) -> np.ndarray:
        """Batched correctness: a float array of 0/1, one entry per (completion, target)."""
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
    1.0 if the answer extracted from the completion equals the target, else 0.0.

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
        if prompt not in ("cot", "direct"):
            raise ValueError(f"prompt must be 'cot' or 'direct', got {prompt!r}")
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
        if self.prompt == "direct":
            return self.task.direct_prompt(example.question)
        return self.task.cot_prompt(example.question)

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
        predicted = self.task.extract_answer(completion)
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


def make_task(env_id: str, **kwargs: Any) -> Task:
    """The Task behind a registered environment id (no Gymnasium wrappers), for algorithms."""
    import envs  # noqa: F401  (registers the built-in ids)

    if env_id not in gym.registry:
        known = ", ".join(sorted(k for k in gym.registry if k.startswith("trice_rl/")))
        raise ValueError(f"unknown environment {env_id!r}; registered: {known}")
    spec = gym.registry[env_id]
    spec_kwargs = dict(spec.kwargs or {})
    factory = spec_kwargs.pop("task_factory", None)
    if factory is None:
        raise ValueError(f"{env_id!r} is not a trice_rl reasoning environment")
    for key in _ENV_KEYWORDS:
        spec_kwargs.pop(key, None)
    spec_kwargs.update(kwargs)
    return factory(**spec_kwargs)
