"""GRPO: group-relative policy optimisation (Shao et al. 2024, "DeepSeekMath"), a
reinforcement-learning baseline with the correctness of the answer as the reward.

Each step takes a minibatch of M examples from the shared order and draws a *group* of G
rationales per example under the un-hinted CoT prompt (``group_size`` = 8).  With reward
r_i = 1 if rationale i states the right answer, else 0, the advantage of a sample is its
reward relative to its own group:

    A_i = (r_i − mean_group(r)) / (std_group(r) + eps)      (``scale_rewards=True``)
    A_i =  r_i − mean_group(r)                              (``scale_rewards=False``, Dr. GRPO)

std is the unbiased sample standard deviation and eps = 1e-4, as in TRL's GRPOTrainer.  A
group whose rewards are all equal (all right or all wrong) has A = 0 exactly: it gives no
gradient.  The loss is the policy-gradient surrogate

    loss = −(1/(M·G)) Σ_i A_i · log p_θ(z_i | x_i)

with log p the summed token log-probability of the sample's exact tokens (the project's
convention; ``length_normalize=True`` divides each term by the sample's token count, the
per-sequence token mean of DeepSeekMath's formula).  Each batch gets one on-policy update,
so PPO's importance ratio π_θ/π_old is exactly 1 and clipping never acts: the clipped
surrogate reduces to the plain one above.  Samples and updates go through the Policy, so the
budget meter charges GRPO like every other algorithm.

Optional KL penalty to the base policy (``kl_coef`` > 0; off by default).  π_ref is the
policy with the tunable parameters it had at construction.  The penalty β·KL(π_θ‖π_ref) is
estimated at the sequence level: its gradient is E[(log π_θ(z) − log π_ref(z)) ∇log π_θ(z)],
so each sample's coefficient gets −β·(log π_θ(z_i) − log π_ref(z_i))/(M·G).  log π_ref is
computed by loading the base parameters into the policy for one no-grad scoring pass and
putting the current ones back (charged as scored tokens, like any scoring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from trice_rl import distributed
from trice_rl.algorithm import Algorithm, AlgorithmConfig
from trice_rl.options import option
from trice_rl.policy import Samples


@dataclass
class GrpoConfig(AlgorithmConfig):
    """``batch_size`` is M, the prompts per step; a step draws M·G samples."""

    group_size: int = option(8, "G samples per prompt")
    scale_rewards: bool = option(True, "divide the centred reward by the group's std")
    advantage_eps: float = option(1e-4, "added to the group std")
    length_normalize: bool = option(False, "divide each sample's term by its token count")
    kl_coef: float = option(0.0, "β of the KL penalty to the base policy (0: off)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError(f"GrpoConfig.group_size must be at least 2 (a group needs a baseline), got {self.group_size}")
        if self.advantage_eps < 0 or self.kl_coef < 0:
            raise ValueError("GrpoConfig.advantage_eps and kl_coef must be non-negative")


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages.

    Args:
        rewards: float tensor (M, G), one row per prompt.
        scale: divide by the group's (unbiased) standard deviation + ``eps``.

    Returns:
        (M, G): ``r − mean_row(r)`` (divided by ``std_row(r) + eps`` if ``scale``); exactly
        zero for a row whose rewards are all equal.
    """
    r = torch.as_tensor(rewards).to(torch.get_default_dtype())
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"rewards must have shape (M, G) with G >= 2, got {tuple(r.shape)}")
    advantages = r - r.mean(-1, keepdim=True)
    if scale:
        advantages = advantages / (r.std(-1, keepdim=True) + eps)
    all_equal = (r == r[:, :1]).all(-1, keepdim=True)
    return torch.where(all_equal, torch.zeros_like(advantages), advantages)


class GRPO(Algorithm):
    """GRPO with correctness rewards; see the module docstring."""

    name: ClassVar[str] = "grpo"
    Config: ClassVar[type] = GrpoConfig
    config: GrpoConfig  # the typed view of Algorithm.config
    metric_names: ClassVar[tuple[str, ...]] = ("train_proposal_acc", "zero_advantage_groups", "loss", "grad_norm", "kl")

    def __init__(self, policy, task, config: GrpoConfig | None = None, seed: int = 0):
        super().__init__(policy, task, config, seed)
        self.reference_state = (
            {name: value.cpu() for name, value in policy.tunable_state_dict().items()} if self.config.kl_coef > 0 else None
        )

    # ------------------------------------------------------------------ step
    def samples_per_example(self) -> int:
        return self.config.group_size

    def step(self) -> dict[str, float]:
        indices = self.next_batch()
        samples, rewards = self._draw(indices)
        loss, kl = self._accumulate(indices, samples, rewards)
        grad_norm = self.apply_gradient()
        metrics = {
            "train_proposal_acc": float(rewards.mean()),
            "zero_advantage_groups": float((rewards == rewards[:, :1]).all(-1).float().mean()),
            "loss": loss,
            "grad_norm": grad_norm,
        }
        if kl is not None:
            metrics["kl"] = kl
        return metrics

    def _draw(self, indices: Sequence[int]) -> tuple[Samples, torch.Tensor]:
        """A group of G samples per example (prompt-major) and their rewards, (M, G)."""
        g = self.config.group_size
        samples = self.sample(self.cot_prompts(indices), n=g)
        rewards = torch.as_tensor(self.correct(samples, indices), dtype=torch.float32).reshape(len(indices), g)
        return samples, rewards

    def coefficients(self, samples: Samples, rewards: torch.Tensor) -> torch.Tensor:
        """Per-sample coefficients of the policy-gradient surrogate (before the KL term):
        A_i / (M·G), divided by the sample's token count if ``length_normalize``."""
        config = self.config
        advantages = group_advantages(rewards, scale=config.scale_rewards, eps=config.advantage_eps).flatten()
        coefficients = advantages / advantages.numel()
        if config.length_normalize:
            lengths = torch.tensor([max(len(ids), 1) for ids in samples.token_ids], dtype=coefficients.dtype)
            coefficients = coefficients / lengths
        return coefficients

    def _accumulate(self, indices: Sequence[int], samples: Samples, rewards: torch.Tensor) -> tuple[float, float | None]:
        """Back-propagate the surrogate over the samples with a non-zero coefficient;
        returns (loss, mean sequence-level KL estimate or None)."""
        coefficients = self.coefficients(samples, rewards)
        prompts = self.cot_prompts([indices[i] for i in samples.prompt_index])
        kl = None
        if self.reference_state is not None:
            log_ratio = samples.logprobs.to(coefficients.dtype) - self._reference_logprob(prompts, samples.token_ids)
            coefficients = coefficients - self.config.kl_coef * log_ratio / len(samples)
            kl = float(log_ratio.mean())
        rows = torch.nonzero(coefficients).flatten().tolist()
        if not rows:
            return 0.0, kl
        loss = self.accumulate_gradient([prompts[r] for r in rows], [samples.token_ids[r] for r in rows], coefficients[rows])
        return loss, kl

    def _reference_logprob(self, prompts: list[str], token_ids: list[list[int]]) -> torch.Tensor:
        """log π_ref of each sample: score with the base parameters, then restore.  With W
        ranks each scores its share and all get every value."""
        mine = distributed.shard(len(prompts))
        current = self.policy.tunable_state_dict()
        try:
            self.policy.load_tunable_state_dict(self.reference_state)
            with torch.no_grad():
                local = self.policy.logprob(prompts[mine], token_ids[mine]).float().cpu()
        finally:
            self.policy.load_tunable_state_dict(current)
        return torch.tensor(distributed.gather(local.tolist()))

    def estimate_gradient(self, indices: Sequence[int]) -> torch.Tensor | None:
        """One draw of the GRPO gradient at the current parameters (fresh groups, no
        optimizer step)."""
        samples, rewards = self._draw(indices)
        self._accumulate(indices, samples, rewards)
        return self.flat_gradient()

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"reference_state": self.reference_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("reference_state") is not None:
            self.reference_state = state["reference_state"]
