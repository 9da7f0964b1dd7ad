"""CoT supervised fine-tuning on gold rationales: the "CoT prompt tuning on human
rationales" baseline of docs/algorithms.md §5 (GSM8K's human solutions; the procedural
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

It draws no samples: each gold target it trains on is charged as one sample
(``TargetTuning``), so a samples budget gives it as many examples and
optimizer steps as TRICE.  No ``train_proposal_acc``: there are no proposals.
"""

from __future__ import annotations

from typing import ClassVar

from envs.base import Example
from trice_rl.algorithm import TargetTuning, TargetTuningConfig


class CotSFT(TargetTuning):
    """Supervised tuning of log p(gold rationale | question) with the CoT template."""

    name: ClassVar[str] = "cot-sft"

    def __init__(self, policy, task, config: TargetTuningConfig | None = None, seed: int = 0):
        missing = sum(example.rationale is None for example in task.examples("train"))
        if missing:
            raise ValueError(
                f"cot-sft trains on gold rationales, but task {task.name!r} ({type(task).__name__}) has "
                f"{missing} training example(s) without one (Example.rationale is None); use an algorithm "
                f"that finds its own rationales (trice, star, rft, grpo) for this task"
            )
        super().__init__(policy, task, config, seed)

    def prompt_and_target(self, example: Example) -> tuple[str, str]:
        return self.task.cot_prompt(example.question), example.rationale
