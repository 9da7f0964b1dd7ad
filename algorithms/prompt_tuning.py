"""Direct prompt tuning: the no-chain-of-thought baseline of trice-spec.md §5.

The model is tuned to answer straight after the question, with no rationale: maximise

    Σ_n log p_θ(y_n | x_n)

where the context is ``task.direct_prompt(question)`` (``Question: {q}\\nAnswer: The answer
is ``) and the target is ``task.direct_completion(answer)`` (``{answer}.``) followed by the
EOS token (``append_eos``, so that the model learns to stop after the answer; the built-in
model's corpus ends its texts with EOS too).  Each step takes a minibatch of M examples from
the shared order and minimises the mean over the minibatch of −log p_θ(y | x).  Evaluation
uses the same direct template (``prompt_kind = "direct"``).

As in the paper, the tuned parameters are a soft prompt: ``default_tune = "prompt"`` tells
``experiments/compare.py`` to build this algorithm's Policy with ``tune="prompt"`` whatever
``--tune`` says; the class itself tunes whatever its Policy makes tunable.

It draws no samples (``draws_samples = False``): its cost is scored tokens and optimizer
steps, so a run needs a budget in one of those (or seconds); a budget in samples alone
would never be spent.  No ``train_proposal_acc``: there are no proposals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from trice_rl.algorithm import Algorithm, AlgorithmConfig


@dataclass
class PromptTuningConfig(AlgorithmConfig):
    """``batch_size`` is M, the examples per step."""

    append_eos: bool = True  # the target ends with the EOS token

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"PromptTuningConfig.batch_size must be at least 1, got {self.batch_size}")


class PromptTuning(Algorithm):
    """Supervised tuning of log p(answer | question) with the direct template."""

    name: ClassVar[str] = "prompt-tuning"
    Config: ClassVar[type] = PromptTuningConfig
    prompt_kind: ClassVar[str] = "direct"
    default_tune: ClassVar[str | None] = "prompt"
    draws_samples: ClassVar[bool] = False
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "grad_norm")

    def step(self) -> dict[str, float]:
        indices = self.stream.next(self.config.batch_size)
        prompts, targets = self.batch(indices)
        loss = self.policy.accumulate_gradient(prompts, targets, torch.full((len(indices),), 1.0 / len(indices)))
        grad_norm = self.apply_gradient()
        return {"loss": loss, "grad_norm": grad_norm}

    def batch(self, indices: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """Direct prompts and the token ids of their targets (answer, then EOS)."""
        examples = [self.train[i] for i in indices]
        prompts = [self.task.direct_prompt(e.question) for e in examples]
        targets = self.policy.encode_completions([self.task.direct_completion(e.answer) for e in examples])
        eos = _eos_id(self.policy) if self.config.append_eos else None
        return prompts, [ids + [eos] if eos is not None else ids for ids in targets]


def _eos_id(policy) -> int | None:
    eos = policy.tokenizer.eos_token_id
    if eos is None and policy.eos_token_ids:
        eos = policy.eos_token_ids[0]
    return eos
