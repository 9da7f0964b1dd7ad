"""Held-out accuracy: greedy decoding and majority-of-k self-consistency.

Evaluation runs with the budget meter paused: it is never charged to training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from envs.base import Task
from trice_rl.policy import Policy

PROMPT_KINDS = ("cot", "direct")


@dataclass
class EvalConfig:
    split: str = "test"
    max_examples: int | None = None  # None: the whole split
    majority_k: int = 8  # samples per question for self-consistency (0: skip)
    greedy: bool = True  # False: majority-of-k only (greedy accuracy already known)
    max_new_tokens: int = 256
    batch_size: int = 128


def prompts_for(task: Task, questions: list[str], prompt_kind: str) -> list[str]:
    if prompt_kind == "cot":
        return [task.cot_prompt(q) for q in questions]
    if prompt_kind == "direct":
        return [task.direct_prompt(q) for q in questions]
    raise ValueError(f"prompt_kind must be one of {PROMPT_KINDS}, got {prompt_kind!r}")


def completion_texts(task: Task, texts: list[str], prompt_kind: str) -> list[str]:
    """What the answer checker reads: a direct completion continues "The answer is "."""
    if prompt_kind == "direct":
        return ["The answer is " + text for text in texts]
    return texts


def majority_vote(answers: list[str | None]) -> str | None:
    """The most frequent extracted answer (ties: first seen); unanswered samples don't vote."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)


def evaluate(policy: Policy, task: Task, config: EvalConfig | None = None, prompt_kind: str = "cot", seed: int = 0) -> dict[str, float]:
    """Greedy accuracy and (if ``majority_k``) majority-of-k accuracy on a split."""
    config = config or EvalConfig()
    examples = task.examples(config.split)[: config.max_examples]
    questions = [e.question for e in examples]
    targets = [task.normalize(e.answer) for e in examples]
    prompts = prompts_for(task, questions, prompt_kind)
    stop = task.stop_strings
    results: dict[str, float] = {}
    with policy.meter.paused():
        if config.greedy:
            greedy = policy.greedy(prompts, max_new_tokens=config.max_new_tokens, stop=stop, batch_size=config.batch_size)
            answers = [task.extract_answer(t) for t in completion_texts(task, greedy.texts, prompt_kind)]
            results["eval_acc_greedy"] = float(np.mean([a is not None and a == t for a, t in zip(answers, targets)]))
            steps_right = task.steps_right(questions, greedy.texts) if prompt_kind == "cot" else None
            if steps_right is not None:  # the share of items solved with every step right
                results["eval_steps_right"] = float(steps_right.mean())
        if config.majority_k:
            k = config.majority_k
            samples = policy.sample(prompts, n=k, max_new_tokens=config.max_new_tokens, stop=stop, seed=seed, batch_size=config.batch_size)
            sampled = [task.extract_answer(t) for t in completion_texts(task, samples.texts, prompt_kind)]
            votes = [majority_vote(sampled[i * k : (i + 1) * k]) for i in range(len(examples))]
            results["eval_acc_majority"] = float(np.mean([v is not None and v == t for v, t in zip(votes, targets)]))
            results["eval_acc_sampled"] = float(np.mean([a is not None and a == targets[i // k] for i, a in enumerate(sampled)]))
    return results
