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
(``TargetTuning``), so a samples budget gives it as many examples and
optimizer steps as TRICE.  No ``train_proposal_acc``: there are no proposals.
"""

from __future__ import annotations

from typing import ClassVar

from envs.base import Example
from trice_rl.algorithm import TargetTuning


class PromptTuning(TargetTuning):
    """Supervised tuning of log p(answer | question) with the direct template."""

    name: ClassVar[str] = "prompt-tuning"
    prompt_kind: ClassVar[str] = "direct"
    default_tune: ClassVar[str | None] = "prompt"

    def prompt_and_target(self, example: Example) -> tuple[str, str]:
        return self.task.direct_prompt(example.question), self.task.direct_completion(example.answer)
