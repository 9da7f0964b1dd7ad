"""Rejection fine-tuning (RFT): the paper's "4-particle rejection sampling" baseline
(trice-spec.md §5, Figure 2 of Phan et al. 2023), plus an offline ReST-EM mode.

**Online mode** (default, ``mode="online"``).  No memory.  Each step takes a minibatch of M
examples from the shared order and draws k particles z_1..z_k ~ p_θ(z | x) per example
(un-hinted CoT prompt, ``particles`` = 4).  Rejection sampling keeps the correct ones: their
self-normalised average score is an estimate of the posterior expectation
E_{p_θ(z|x,y)}[∇ log p_θ(z|x)] = ∇ log p_θ(y|x) (the Fisher identity, spec §1):

    g_n = Σ_k c_nk ∇log p_θ(z_nk|x_n) / Σ_k c_nk          (examples with Σ_k c_nk > 0)
    ĝ   = (1/E) Σ_{n: Σ_k c_nk > 0} g_n,  E = #examples of the batch with a correct particle

Normalisation ([UNCERTAIN] in the spec): the mean over the examples that have at least one
correct particle, like TRICE's 1/K; examples with none contribute nothing (a batch with none
at all gives a zero gradient, and the optimizer step is still taken and counted).  So every
particle's coefficient is ``c_nk / (Σ_k c_nk) / E`` (:func:`rft_coefficients`), and only the
correct particles are scored and back-propagated.  Spec §4: since an example enters only
when a particle is correct, hard examples are down-weighted relative to TRICE.

**ReST-EM mode** (``mode="rest_em"``, Singh et al. 2023, "Beyond Human Data").  Offline
rounds: draw ``rest_samples_per_example`` samples for every training example with the
current model, keep up to ``rest_max_kept_per_example`` distinct correct ones per example,
then fine-tune *from the base parameters* on the kept set for ``rest_inner_steps`` steps;
repeat.  That is exactly STaR's loop without rationalization and with a fixed number of
inner steps, so this mode drives an :class:`algorithms.star.Star` with those settings (its
state machine, checkpoints and metrics; see ``algorithms/star.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from algorithms.star import Star, StarConfig
from trice_rl.algorithm import Algorithm, AlgorithmConfig
from trice_rl.policy import Samples

MODES = ("online", "rest_em")


@dataclass
class RftConfig(AlgorithmConfig):
    """``batch_size`` is M, the examples per step (online) or per sampling step (ReST-EM)."""

    particles: int = 4  # k samples per example (online mode)
    mode: str = "online"  # "online" (4-particle rejection sampling) or "rest_em"
    rest_samples_per_example: int = 8  # ReST-EM: samples per example and round
    rest_max_kept_per_example: int = 4  # ReST-EM: cap c on kept correct samples per example
    rest_inner_steps: int = 40  # ReST-EM: fine-tuning steps per round (from base each round)
    rest_examples_per_iteration: int | None = None  # ReST-EM: examples per round (None: all)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"RftConfig.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("particles", "rest_samples_per_example", "rest_max_kept_per_example", "rest_inner_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"RftConfig.{name} must be at least 1, got {getattr(self, name)}")


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
    metric_names: ClassVar[tuple[str, ...]] = ("train_proposal_acc", "examples_with_correct", "loss", "grad_norm")

    def __init__(self, policy, task, config: RftConfig | None = None, seed: int = 0):
        super().__init__(policy, task, config, seed)
        config = self.config
        self.offline: Star | None = None
        if config.mode == "rest_em":
            self.offline = Star(
                policy,
                task,
                StarConfig(
                    batch_size=config.batch_size,
                    lr=config.lr,
                    weight_decay=config.weight_decay,
                    max_grad_norm=config.max_grad_norm,
                    max_new_tokens=config.max_new_tokens,
                    rationalize=False,
                    restart_from_base=True,
                    initial_inner_steps=config.rest_inner_steps,
                    inner_steps_growth=1.0,
                    examples_per_iteration=config.rest_examples_per_iteration,
                    samples_per_example=config.rest_samples_per_example,
                    max_kept_per_example=config.rest_max_kept_per_example,
                ),
                seed,
            )
            self.metric_names = Star.metric_names
        # Whether each example's latest visit drew at least one correct particle.
        self.solved = np.zeros(len(self.train), dtype=bool)

    # ------------------------------------------------------------------ step
    def step(self) -> dict[str, float]:
        if self.offline is not None:
            return self.offline.step()
        indices = self.stream.next(self.config.batch_size)
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
        return self.policy.accumulate_gradient(prompts, completions, coefficients[rows])

    def estimate_gradient(self, indices: Sequence[int]) -> torch.Tensor | None:
        """One draw of the online estimator at the current parameters (fresh particles, no
        optimizer step); ``None`` in ReST-EM mode (see Star.estimate_gradient)."""
        if self.offline is not None:
            return None
        samples, correct = self._draw(indices)
        self._accumulate(indices, samples, correct)
        return self.flat_gradient()

    def solved_examples(self) -> np.ndarray:
        return self.solved.copy() if self.offline is None else self.offline.solved_examples()

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.offline is not None:
            return {"steps_done": self.steps_done, "offline": self.offline.state_dict()}
        return super().state_dict() | {"solved": self.solved.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.offline is not None:
            if "offline" not in state:
                raise ValueError("this checkpoint is from an online rft run, but mode='rest_em'")
            self.steps_done = int(state["steps_done"])
            self.offline.load_state_dict(state["offline"])
            return
        if "offline" in state:
            raise ValueError("this checkpoint is from a rest_em rft run, but mode='online'")
        super().load_state_dict(state)
        self.solved = np.asarray(state["solved"], dtype=bool).copy()
