"""Direct prompt tuning: the no-chain-of-thought baseline of docs/algorithms.md §5.

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

It draws no samples: each target it trains on is charged as one sample
(``Algorithm.train_on_targets``), so a samples budget gives it as many examples and
optimizer steps as TRICE.  No ``train_proposal_acc``: there are no proposals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trice_rl.algorithm import Algorithm, AlgorithmConfig
from trice_rl.options import option


@dataclass
class PromptTuningConfig(AlgorithmConfig):
    """``batch_size`` is M, the examples per step."""

    append_eos: bool = option(True, "the target ends with the EOS token")


class PromptTuning(Algorithm):
    """Supervised tuning of log p(answer | question) with the direct template."""

    name: ClassVar[str] = "prompt-tuning"
    Config: ClassVar[type] = PromptTuningConfig
    config: PromptTuningConfig  # the typed view of Algorithm.config
    prompt_kind: ClassVar[str] = "direct"
    default_tune: ClassVar[str | None] = "prompt"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "grad_norm")

    def step(self) -> dict[str, float]:
        examples = [self.train[i] for i in self.next_batch()]
        prompts = [self.task.direct_prompt(e.question) for e in examples]
        targets = [self.task.direct_completion(e.answer) for e in examples]
        return self.train_on_targets(prompts, targets, append_eos=self.config.append_eos)
