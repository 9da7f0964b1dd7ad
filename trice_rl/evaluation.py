"""Held-out accuracy: greedy decoding and majority-of-k self-consistency.

Evaluation runs with the budget meter paused: it is never charged to training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from envs.base import Task
from trice_rl.policy import Policy


@dataclass
class EvalConfig:
    split: str = "test"
    max_examples: int | None = None  # None: the whole split
    majority_k: int = 8  # samples per question for self-consistency (0: skip)
    greedy: bool = True  # False: majority-of-k only (greedy accuracy already known)
    max_new_tokens: int = 256
    batch_size: int = 128


def majority_vote(answers: list[str | None]) -> str | None:
    """The most frequent extracted answer (ties: first seen); unanswered samples don't vote."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)


def evaluate(policy: Policy, task: Task, config: EvalConfig | None = None, prompt_kind: str = "cot", seed: int = 0) -> dict[str, float]:
    """Greedy accuracy and (if ``majority_k``) majority-of-k and mean sampled accuracy on a
    split, with prompts of ``prompt_kind`` (see ``Task.prompt``)."""
    config = config or EvalConfig()
    examples = task.examples(config.split)[: config.max_examples]
    questions = [e.question for e in examples]
    targets = [task.normalize(e.answer) for e in examples]
    prompts = [task.prompt(prompt_kind, e.question, e.answer) for e in examples]
    results: dict[str, float] = {}
    with policy.meter.paused():
        if config.greedy:
            greedy = policy.greedy(prompts, max_new_tokens=config.max_new_tokens, stop=task.stop_strings, batch_size=config.batch_size)
            answers = [task.extract_answer(task.answer_text(t, prompt_kind)) for t in greedy.texts]
            results["eval_acc_greedy"] = float(np.mean([a is not None and a == t for a, t in zip(answers, targets)]))
            steps_right = task.steps_right(questions, greedy.texts) if prompt_kind != "direct" else None
            if steps_right is not None:  # the share of items solved with every step right
                results["eval_steps_right"] = float(steps_right.mean())
        if config.majority_k:
            sampled = sampled_answers(policy, task, prompts, config, prompt_kind, seed)
            votes = [majority_vote(row) for row in sampled]
            results["eval_acc_majority"] = float(np.mean([v is not None and v == t for v, t in zip(votes, targets)]))
            results["eval_acc_sampled"] = float(sampled_correct(sampled, targets).mean())
    return results


def sampled_answers(policy: Policy, task: Task, prompts: list[str], config: EvalConfig, prompt_kind: str = "cot", seed: int = 0) -> list[list[str | None]]:
    """Per prompt, the answers of ``config.majority_k`` samples at temperature 1."""
    k = config.majority_k
    samples = policy.sample(prompts, n=k, max_new_tokens=config.max_new_tokens, stop=task.stop_strings, seed=seed, batch_size=config.batch_size)
    answers = [task.extract_answer(task.answer_text(t, prompt_kind)) for t in samples.texts]
    return [answers[i * k : (i + 1) * k] for i in range(len(prompts))]


def sampled_correct(sampled: list[list[str | None]], targets: list[str | None]) -> np.ndarray:
    """Per prompt and sample, whether the sample's answer is the (normalised) target."""
    return np.array([[a is not None and a == target for a in row] for row, target in zip(sampled, targets)], dtype=bool).reshape(len(targets), -1)
