"""Held-out accuracy: greedy decoding and majority-of-k self-consistency.

Evaluation runs with the budget meter paused: it is never charged to training.  In a
data-parallel run (:mod:`trice_rl.distributed`) each rank evaluates its share of the split
and every rank gets every answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from envs.base import Task
from trice_rl import distributed
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
    split, with prompts of ``prompt_kind`` (see ``Task.prompt``).

    With W ranks each decodes its share of the prompts: greedy answers are those of one
    process; the k samples of a question are drawn from its rank's own seeded stream, so
    they are other draws (of the same distribution) than one process's."""
    config = config or EvalConfig()
    examples = task.examples(config.split)[: config.max_examples]
    questions = [e.question for e in examples]
    targets = [task.normalize(e.answer) for e in examples]
    prompts = [task.prompt(prompt_kind, e.question, e.answer) for e in examples]
    mine = prompts[distributed.shard(len(prompts))]
    results: dict[str, float] = {}
    with policy.meter.paused():
        if config.greedy:
            greedy = policy.greedy(mine, max_new_tokens=config.max_new_tokens, stop=task.stop_strings, batch_size=config.batch_size)
            texts = distributed.gather(greedy.texts)
            answers = [task.extract_answer(task.answer_text(t, prompt_kind)) for t in texts]
            results["eval_acc_greedy"] = float(np.mean([a is not None and a == t for a, t in zip(answers, targets)]))
            steps_right = task.steps_right(questions, texts) if prompt_kind != "direct" else None
            if steps_right is not None:  # the share of items solved with every step right
                results["eval_steps_right"] = float(steps_right.mean())
        if config.majority_k:
            sampled = distributed.gather(sampled_answers(policy, task, mine, config, prompt_kind, distributed.rank_seed(seed)))
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


def hardest_quartile(policy: Policy, task: Task, samples_per_example: int, max_new_tokens: int, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """The policy's sampled accuracy per training example (not charged to the budget), and
    the indices of the lowest quartile (ties broken by index, so the set is fixed)."""
    train = task.examples("train")
    prompts = [task.prompt("cot", e.question) for e in train]
    config = EvalConfig(split="train", majority_k=samples_per_example, max_new_tokens=max_new_tokens, batch_size=policy.max_batch_size)
    with policy.meter.paused():
        answers = sampled_answers(policy, task, prompts, config, seed=seed)
    accuracy = sampled_correct(answers, [task.normalize(e.answer) for e in train]).mean(axis=1)
    order = np.lexsort((np.arange(len(train)), accuracy))
    return sorted(int(i) for i in order[: max(1, len(train) // 4)]), accuracy

