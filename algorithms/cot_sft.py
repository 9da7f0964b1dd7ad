"""CoT supervised fine-tuning on gold rationales: the "CoT prompt tuning on human
rationales" baseline of trice-spec.md §5 (GSM8K's human solutions; the procedural
arithmetic task's worked steps).

Maximise Σ_n log p_θ(z_n | x_n) where x_n is the un-hinted CoT prompt
(``task.cot_prompt(question)``) and z_n the task's gold rationale (``Example.rationale``,
which ends with the answer sentence) followed by the EOS token (``append_eos``: the model
learns to stop after its answer, as the built-in model's corpus does).  Each step takes a
minibatch of M examples from the shared order and minimises the mean over the minibatch of
−log p_θ(z | x) (summed over tokens).  Evaluation uses the CoT template.

A task without gold rationales (``task.has_rationales()`` false, e.g. BIG-Bench Hard, whose
few-shot rationales are prompts, not training targets) cannot be used: the constructor
raises a ``ValueError`` naming the task.

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
class CotSftConfig(AlgorithmConfig):
    """``batch_size`` is M, the examples per step."""

    append_eos: bool = True  # the target rationale ends with the EOS token

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"CotSftConfig.batch_size must be at least 1, got {self.batch_size}")


class CotSft(Algorithm):
    """Supervised tuning of log p(gold rationale | question) with the CoT template."""

    name: ClassVar[str] = "cot-sft"
    Config: ClassVar[type] = CotSftConfig
    default_tune: ClassVar[str | None] = None
    draws_samples: ClassVar[bool] = False
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "grad_norm")

    def __init__(self, policy, task, config: CotSftConfig | None = None, seed: int = 0):
        missing = sum(example.rationale is None for example in task.examples("train"))
        if missing:
            raise ValueError(
                f"cot-sft trains on gold rationales, but task {task.name!r} ({type(task).__name__}) has "
                f"{missing} training example(s) without one (Example.rationale is None); use an algorithm "
                f"that finds its own rationales (trice, star, rft, grpo) for this task"
            )
        super().__init__(policy, task, config, seed)

    def step(self) -> dict[str, float]:
        indices = self.stream.next(self.config.batch_size)
        prompts, targets = self.batch(indices)
        loss = self.policy.accumulate_gradient(prompts, targets, torch.full((len(indices),), 1.0 / len(indices)))
        grad_norm = self.apply_gradient()
        return {"loss": loss, "grad_norm": grad_norm}

    def batch(self, indices: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """CoT prompts and the token ids of the gold rationales (then EOS)."""
        prompts = self.cot_prompts(indices)
        targets = self.policy.encode_completions([self.train[i].rationale for i in indices])
        eos = _eos_id(self.policy) if self.config.append_eos else None
        return prompts, [ids + [eos] if eos is not None else ids for ids in targets]


def _eos_id(policy) -> int | None:
    eos = policy.tokenizer.eos_token_id
    if eos is None and policy.eos_token_ids:
        eos = policy.eos_token_ids[0]
    return eos
