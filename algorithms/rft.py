"""Rejection fine-tuning (RFT): the paper's "4-particle rejection sampling" baseline
(docs/algorithms.md §5, Figure 2 of Phan et al. 2023).  Its offline relative, ReST-EM, is a
STaR configuration: ``algorithms/star.py``'s ``rest-em``.

No memory.  Each step takes a minibatch of M
examples from the shared order and draws k particles z_1..z_k ~ p_θ(z | x) per example
(un-hinted CoT prompt, ``particles`` = 4).  Rejection sampling keeps the correct ones: their
self-normalised average score is an estimate of the posterior expectation
E_{p_θ(z|x,y)}[∇ log p_θ(z|x)] = ∇ log p_θ(y|x) (the Fisher identity, spec §1):

    g_n = Σ_k c_nk ∇log p_θ(z_nk|x_n) / Σ_k c_nk          (examples with Σ_k c_nk > 0)
    ĝ   = (1/E) Σ_{n: Σ_k c_nk > 0} g_n,  E = #examples of the batch with a correct particle

Normalisation (the paper does not say): the mean over the examples that have at least one
correct particle, like TRICE's 1/K; examples with none contribute nothing (a batch with none
at all gives a zero gradient, and the optimizer step is still taken and counted).  So every
particle's coefficient is ``c_nk / (Σ_k c_nk) / E`` (:func:`rft_coefficients`), and only the
correct particles are scored and back-propagated.  Spec §4: since an example enters only
when a particle is correct, hard examples are down-weighted relative to TRICE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from trice_rl.algorithm import Algorithm, AlgorithmConfig
from trice_rl.options import option
from trice_rl.policy import Samples

@dataclass
class RftConfig(AlgorithmConfig):
    """``batch_size`` is M, the examples per step."""

    particles: int = option(4, "k samples per example")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.particles < 1:
            raise ValueError(f"RftConfig.particles must be at least 1, got {self.particles}")


def rft_coefficients(correct: torch.Tensor) -> torch.Tensor:
    """Per-particle coefficients of the rejection-sampling estimator.

    Args:
        correct: bool or 0/1 tensor (M, k), whether particle k of example m is correct.

    Returns:
        float tensor (M, k): ``c_mk / Σ_k c_mk / E`` with E the number of examples that have
        a correct particle; all zeros where an example has none (and everywhere if E = 0).
        The gradient estimate is Σ coefficient_mk ∇log p_θ(z_mk | x_m); the coefficients sum
        to 1 unless E = 0.
    """
    c = torch.as_tensor(correct).to(torch.get_default_dtype())
    if c.ndim != 2:
        raise ValueError(f"correct must have shape (M, k), got {tuple(c.shape)}")
    per_example = c.sum(-1, keepdim=True)
    has_correct = per_example > 0
    num_valid = has_correct.sum()
    if num_valid == 0:
        return torch.zeros_like(c)
    return torch.where(has_correct, c / per_example.clamp(min=1), torch.zeros_like(c)) / num_valid


class RejectionFineTuning(Algorithm):
    """Rejection fine-tuning; see the module docstring."""

    name: ClassVar[str] = "rft"
    Config: ClassVar[type] = RftConfig
    config: RftConfig  # the typed view of Algorithm.config
    metric_names: ClassVar[tuple[str, ...]] = ("train_proposal_acc", "examples_with_correct", "loss", "grad_norm")

    def __init__(self, policy, task, config: RftConfig | None = None, seed: int = 0):
        super().__init__(policy, task, config, seed)
        # Whether each example's latest visit drew at least one correct particle.
        self.solved = np.zeros(len(self.train), dtype=bool)

    # ------------------------------------------------------------------ step
    def samples_per_example(self) -> int:
        return self.config.particles

    def step(self) -> dict[str, float]:
        indices = self.next_batch()
        samples, correct = self._draw(indices)
        loss = self._accumulate(indices, samples, correct)
        grad_norm = self.apply_gradient()
        self.solved[indices] = correct.any(-1).numpy()
        return {
            "train_proposal_acc": float(correct.float().mean()),
            "examples_with_correct": float(correct.any(-1).float().mean()),
            "loss": loss,
            "grad_norm": grad_norm,
        }

    def _draw(self, indices: Sequence[int]) -> tuple[Samples, torch.Tensor]:
        """k particles per example (prompt-major) and their correctness, shape (M, k)."""
        k = self.config.particles
        samples = self.sample(self.cot_prompts(indices), n=k)
        correct = torch.as_tensor(self.correct(samples, indices)).reshape(len(indices), k)
        return samples, correct

    def _accumulate(self, indices: Sequence[int], samples: Samples, correct: torch.Tensor) -> float:
        """Back-propagate the estimator's surrogate loss over the correct particles only
        (the others have coefficient 0); returns the loss."""
        coefficients = rft_coefficients(correct).flatten()
        rows = torch.nonzero(coefficients).flatten().tolist()
        if not rows:
            return 0.0
        prompts = self.cot_prompts([indices[samples.prompt_index[r]] for r in rows])
        completions = [samples.token_ids[r] for r in rows]
        return self.accumulate_gradient(prompts, completions, coefficients[rows])

    def estimate_gradient(self, indices: Sequence[int]) -> torch.Tensor | None:
        """One draw of the estimator at the current parameters (fresh particles, no
        optimizer step)."""
        samples, correct = self._draw(indices)
        self._accumulate(indices, samples, correct)
        return self.flat_gradient()

    def solved_examples(self) -> np.ndarray:
        return self.solved.copy()

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"solved": self.solved.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.solved = np.asarray(state["solved"], dtype=bool).copy()
