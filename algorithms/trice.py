"""TRICE: Tuning Rationales with Independence-Chain Expectation-maximization.

Phan et al., "Training Chain-of-Thought via Latent-Variable Inference", NeurIPS 2023.
The design notes are in ``trice-spec.md``; section numbers (§) below refer to it.

The file opens with the estimator's mathematics as pure torch functions: they take
booleans (is this rationale correct?), weights and log-probabilities, never a model, so
that they can be tested exactly on a toy policy (``tests/test_trice_math.py``).  Read top
to bottom they follow one training step (§2.3):

1. ``accept_proposals``: the independence Metropolis–Hastings step. The target is the
   posterior p(z|x,y) ∝ p(z|x)·c(z,y) and the proposal is the prior p(z|x), so a proposal
   replaces the memory entry iff it is correct.
2. ``leave_one_out_beta`` and ``trice_weights``: the per-candidate weights of the
   control-variate estimator (§3.1, §3.2).
3. ``systematic_resample`` and ``trice_candidates``: which candidate rationales get
   differentiated and with what coefficient, with or without subsampling (§3.4).
4. ``trice_loss``: the surrogate loss whose gradient is the estimate.

Conventions. A batch holds M examples. ``memory_correct[m]`` (c_m) says whether example
m's memory rationale *before* the update is correct; ``proposal_correct[m]`` (c̃_m) whether
its fresh proposal z̃_m ~ p_θ(z|x_m) is correct. ``z'_m`` is the memory entry *after* the
update. The 2M candidates are numbered 0..M-1 for the post-update memory entries z'_m and
M..2M-1 for the proposals z̃_m. The gradient estimate is Σ_j coefficient_j ∇_θ log p_θ(r_j|x_j).

What is unbiased (checked in the tests). v_m = c_m OR c̃_m, K = Σ_m v_m. When every example
of the batch whose posterior exists (p(y_m|x_m) > 0) has a correct memory drawn from the
posterior (the stationary state of the chains), K is fixed and
E[estimate] = (1/K) Σ_{m: p(y_m|x_m)>0} ∇_θ log p_θ(y_m|x_m) exactly, with or without the
control variate; examples with no correct rationale contribute nothing. When a memory entry
is still incorrect, v_m and K depend on the proposals and the estimator is only
"essentially" unbiased (§3.4, small print), as in the reference code.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from trice_rl.algorithm import Algorithm, AlgorithmConfig

__all__ = [
    "BETA_EPS",
    "MIN_SUBSAMPLE_WEIGHT",
    "accept_proposals",
    "leave_one_out_beta",
    "trice_weights",
    "systematic_resample",
    "trice_candidates",
    "trice_loss",
    "TriceConfig",
    "Trice",
    "TriceNoCV",
]

BETA_EPS = 1e-10
"""Added to the denominator K - 1 of the leave-one-out β (§3.2, as in the reference code)."""

MIN_SUBSAMPLE_WEIGHT = 1e-10
"""Subsampling weights are clipped below at this value (§3.4 step 1)."""


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _as_bool(x, name: str) -> torch.Tensor:
    """A boolean tensor from a bool tensor / list, or from 0/1 numbers; anything else fails."""
    t = torch.as_tensor(x)
    if t.dtype == torch.bool:
        return t
    if t.is_complex() or not ((t == 0) | (t == 1)).all():
        raise ValueError(f"{name} must be boolean (or 0/1), got dtype {t.dtype} with other values")
    return t != 0


def _correctness_pair(memory_correct, proposal_correct) -> tuple[torch.Tensor, torch.Tensor]:
    mem = _as_bool(memory_correct, "memory_correct")
    prop = _as_bool(proposal_correct, "proposal_correct")
    if mem.shape != prop.shape:
        raise ValueError(
            f"memory_correct and proposal_correct must have the same shape, got "
            f"{tuple(mem.shape)} and {tuple(prop.shape)}"
        )
    if mem.ndim == 0:
        raise ValueError("memory_correct and proposal_correct must have a batch dimension (M,)")
    return mem, prop.to(mem.device)


def _positive_int(n, name: str) -> int:
    if isinstance(n, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"{name} must be at least 1, got {n}")
    return n


# --------------------------------------------------------------------------------------
# 1. The MCMC step (§2.3 step 3)
# --------------------------------------------------------------------------------------


def accept_proposals(memory_correct, proposal_correct) -> torch.Tensor:
    """Which proposals replace their memory entry: independence Metropolis–Hastings.

    The target is the posterior p(z|x,y) = p(z|x)c(z,y)/p(y|x) and the proposal is the prior
    p(z|x), so the MH ratio is c(z̃,y)/c(z,y): a correct proposal is always accepted, even
    when the memory already holds a correct rationale (that is what makes the chain mix
    over the posterior), and an incorrect one never is. When both are incorrect the ratio
    is 0/0; rejecting keeps the entry, which is harmless: that example is masked out.

    Args:
        memory_correct: bool (..., M), whether the current memory entry is correct.
        proposal_correct: bool (..., M), whether the fresh proposal is correct.

    Returns:
        bool (..., M): True where the proposal replaces the memory entry.
    """
    _, prop = _correctness_pair(memory_correct, proposal_correct)
    return prop.clone()


# --------------------------------------------------------------------------------------
# 2. Per-candidate weights (§3.1, §3.2)
# --------------------------------------------------------------------------------------


def leave_one_out_beta(memory_correct, proposal_correct) -> torch.Tensor:
    """The control-variate coefficient β_m = (Σ_{m'} c̃_{m'} − c̃_m) / (K − 1 + 1e-10).

    The fraction of the *other* valid examples whose proposal was correct: a leave-one-out
    estimate of the acceptance rate, independent of z̃_m, which keeps the control variate
    mean-zero (§3.2). A correct proposal makes its example valid, so Σ c̃ over the batch is
    also the sum over the valid examples. β is set to 0 for invalid examples (their weights
    are 0 anyway; this keeps e.g. a logged mean of β finite: with K = 1 the raw formula gives
    1e10 there). Log ``beta[valid].mean()``.

    Args/shape: bool (..., M) each; returns a float tensor (..., M) of the default dtype.
    """
    mem, prop = _correctness_pair(memory_correct, proposal_correct)
    dtype = torch.get_default_dtype()
    valid = mem | prop
    c = prop.to(dtype)
    k = valid.to(dtype).sum(-1, keepdim=True)
    beta = (c.sum(-1, keepdim=True) - c) / (k - 1 + BETA_EPS)
    return torch.where(valid, beta, torch.zeros_like(beta))


def _unnormalised_weights(
    mem: torch.Tensor, prop: torch.Tensor, control_variate: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v, and the non-negative magnitudes of the memory and proposal candidates (§3.2 table):
    memory z'_m: v(1 − β c̃) (sign +), proposal z̃_m: v β (1 − c̃) (sign −).
    Without the control variate (§3.1): v and 0."""
    dtype = torch.get_default_dtype()
    v = (mem | prop).to(dtype)
    if not control_variate:
        return v, v.clone(), torch.zeros_like(v)
    c = prop.to(dtype)
    beta = leave_one_out_beta(mem, prop)
    return v, v * (1 - beta * c), v * beta * (1 - c)


def trice_weights(
    memory_correct, proposal_correct, control_variate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed per-candidate weights of the TRICE estimator (§3.2; §3.1 without the CV).

    With v = c OR c̃, K = Σ v and the leave-one-out β:

    * memory candidate z'_m (post-update entry): ``v (1 − β c̃) / K``
    * proposal candidate z̃_m: ``−v β (1 − c̃) / K``
    * with ``control_variate=False``: ``v / K`` and ``0``.

    The gradient estimate is Σ_m w_mem[m] ∇log p(z'_m|x_m) + Σ_m w_prop[m] ∇log p(z̃_m|x_m).
    A batch with K = 0 (no correct rationale anywhere) gives all-zero weights, never NaN.

    Args:
        memory_correct: bool (..., M), memory entry correct *before* the update (c).
        proposal_correct: bool (..., M), fresh proposal correct (c̃).
        control_variate: use the proposal score as a control variate (TRICE CV).

    Leading dimensions are independent batches (handy for enumerating many batches at once).

    Returns:
        (memory_weights, proposal_weights), float tensors (..., M) of the default dtype.
    """
    mem, prop = _correctness_pair(memory_correct, proposal_correct)
    v, w_mem, w_prop = _unnormalised_weights(mem, prop, control_variate)
    k = v.sum(-1, keepdim=True)
    inv_k = torch.where(k > 0, 1 / k.clamp(min=1), torch.zeros_like(k))
    return w_mem * inv_k, 0.0 - w_prop * inv_k  # 0.0 - x: no negative zeros


# --------------------------------------------------------------------------------------
# 3. Choosing what to differentiate (§3.4)
# --------------------------------------------------------------------------------------


def _systematic_indices(weights: torch.Tensor, num_samples: int, u: float) -> torch.Tensor:
    """Systematic resampling with a given offset u ∈ [0, 1): index j is chosen for every
    position (u + l)/L, l = 0..L-1, that falls in [cdf_{j-1}, cdf_j). Checked weights only."""
    w = weights.detach().to(device="cpu", dtype=torch.float64)
    cdf = torch.cumsum(w, 0) / w.sum()
    last = int(torch.nonzero(w > 0)[-1])  # the last index with positive weight
    cdf[last:] = 1.0  # no float round-off can push a position past the last real index
    positions = (u + torch.arange(num_samples, dtype=torch.float64)) / num_samples
    idx = torch.searchsorted(cdf, positions, right=True)  # first j with cdf_j > position
    return idx.clamp_(max=last)  # a position that rounded up to 1.0 belongs to `last`


def systematic_resample(
    weights: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices drawn by systematic resampling in proportion to non-negative weights.

    One u ~ U[0, 1) from ``generator`` (the global torch RNG if None); positions
    (u + l)/L for l = 0..L-1; each position picks the index whose slice of the normalised
    CDF contains it. Every index j is picked ⌊Lπ_j⌋ or ⌈Lπ_j⌉ times (π = w/Σw), its
    expected count is exactly Lπ_j, and zero-weight indices are never picked.

    Args:
        weights: 1-D float tensor (N,), non-negative, finite, not all zero.
        num_samples: L ≥ 1.
        generator: torch.Generator for the single uniform draw.

    Returns:
        LongTensor (L,) of indices in [0, N), non-decreasing, on ``weights``' device.
    """
    w = torch.as_tensor(weights)
    if w.ndim != 1 or w.numel() == 0:
        raise ValueError(f"weights must be a non-empty 1-D tensor, got shape {tuple(w.shape)}")
    if w.dtype == torch.bool or w.is_complex():
        raise ValueError(f"weights must be real numbers, got dtype {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError("weights must be finite (got NaN or inf)")
    if (w < 0).any():
        raise ValueError(f"weights must be non-negative, got minimum {w.min().item()}")
    if not (w > 0).any():
        raise ValueError("weights must have at least one positive entry (all are zero)")
    num_samples = _positive_int(num_samples, "num_samples")
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand((), generator=generator, dtype=torch.float64, device=device).item()
    return _systematic_indices(w, num_samples, u).to(w.device)


def trice_candidates(
    memory_correct,
    proposal_correct,
    control_variate: bool = True,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates whose scores enter the gradient, and their coefficients.

    The estimate is Σ_l coefficient[l] · ∇log p(r_{candidate_index[l]} | x), where indices
    0..M-1 are the post-update memory entries z'_m and M..2M-1 the proposals z̃_m (for
    example m = index mod M).

    * ``num_samples`` None or ≥ 2M: the full estimator (§3.2; §3.1 without the CV): every
      candidate with a non-zero weight, coefficient = its ``trice_weights`` weight, so the
      estimate is normalised by K. (L = 2M is the paper's "no subsampling", BBH: M=32, L=64.)
    * ``num_samples`` = L < 2M: the subsampled estimator of §3.4, as in the reference code:
      magnitudes w_j (the table of §3.2, not divided by K) clipped below at 1e-10, signs
      s_j = +v_m for memory and −v_m for proposals, W̄ = Σ_j w_j / K, L indices by systematic
      resampling ∝ w (``generator`` draws its u), coefficient_l = s_{j_l} · W̄ / L. Its
      expectation over the resampling is (1/K) Σ_j s_j w_j g_j, the full estimator (up to
      the 1e-10 clip). Indices can repeat; entries of invalid examples (s = 0, picked only
      through the clip) are dropped, so at most L entries come back.

    K = 0 returns an empty selection. Entries come back in non-decreasing index order.

    Returns:
        (candidate_index LongTensor (n,), coefficient float tensor (n,) of the default dtype),
        on the device of the inputs.
    """
    mem, prop = _correctness_pair(memory_correct, proposal_correct)
    if mem.ndim != 1:
        raise ValueError(f"trice_candidates takes one batch (M,), got shape {tuple(mem.shape)}")
    if num_samples is not None:
        num_samples = _positive_int(num_samples, "num_samples")
    m = mem.shape[0]
    v, w_mem, w_prop = _unnormalised_weights(mem, prop, control_variate)
    k = v.sum()
    if k == 0:
        return (
            torch.empty(0, dtype=torch.long, device=mem.device),
            torch.empty(0, dtype=v.dtype, device=mem.device),
        )

    if num_samples is None or num_samples >= 2 * m:
        coefficient = torch.cat([w_mem, -w_prop]) / k
        index = torch.nonzero(coefficient != 0).squeeze(-1)
        return index, coefficient[index]

    weights = torch.cat([w_mem, w_prop]).clamp(min=MIN_SUBSAMPLE_WEIGHT)
    signs = torch.cat([v, -v])
    mean_weight = weights.sum() / k  # W̄
    index = systematic_resample(weights, num_samples, generator).to(mem.device)
    coefficient = signs[index] * mean_weight / num_samples
    keep = coefficient != 0
    return index[keep], coefficient[keep]


# --------------------------------------------------------------------------------------
# 4. The surrogate loss
# --------------------------------------------------------------------------------------


def trice_loss(logprobs: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """Surrogate loss −Σ_l coefficient_l · log p(r_l|x_l); its gradient is minus the estimate,
    so minimising it ascends the marginal log-likelihood. ``logprobs`` are the differentiable
    summed log-probabilities of the chosen candidates (e.g. ``Policy.logprob``), aligned with
    ``coefficient`` (no gradient flows into the coefficients). An empty selection gives 0."""
    if logprobs.shape != coefficient.shape:
        raise ValueError(
            f"logprobs and coefficient must have the same shape, got {tuple(logprobs.shape)} "
            f"and {tuple(coefficient.shape)}"
        )
    c = coefficient.detach().to(dtype=logprobs.dtype, device=logprobs.device)
    return -(c * logprobs).sum()


# --------------------------------------------------------------------------------------
# 5. The algorithm (§2): memory, one MH step per visit, the estimator, an optimizer step
# --------------------------------------------------------------------------------------


@dataclass
class TriceConfig(AlgorithmConfig):
    """TRICE's settings; the shared ones (batch size M, learning rate, ...) are inherited.

    ``num_gradient_samples`` is L: None (or ≥ 2M) differentiates every candidate with a
    non-zero weight (the paper's BBH setting, L = 2M); L < 2M turns on the subsampled
    control-variate estimator of §3.4.  ``hinted_init`` initialises memory by sampling with
    the answer shown in the prompt (rationalization, §2.2 step 4); without it memory starts
    from ordinary proposals.
    """

    control_variate: bool = True
    num_gradient_samples: int | None = None
    hinted_init: bool = True
    init_batch_size: int = 128


class Trice(Algorithm):
    """TRICE with the leave-one-out control variate (``trice``)."""

    name = "trice"
    Config = TriceConfig
    metric_names = ("train_proposal_acc", "memory_acc", "batch_memory_acc", "accept_rate", "beta_mean", "num_candidates", "grad_norm", "loss")

    def __init__(self, policy, task, config: TriceConfig | None = None, seed: int = 0):
        super().__init__(policy, task, config, seed)
        # One rationale per training example, as token ids in a compact padded array.
        num_examples, width = len(self.train), self.config.max_new_tokens
        self.memory_tokens = torch.zeros(num_examples, width, dtype=torch.int32)
        self.memory_lengths = torch.zeros(num_examples, dtype=torch.int32)
        self.memory_correct = torch.zeros(num_examples, dtype=torch.bool)
        self.resample_generator = torch.Generator().manual_seed(seed)

    # ---------------------------------------------------------------- memory
    def _write_memory(self, indices: Sequence[int], token_ids: Sequence[Sequence[int]], correct: torch.Tensor) -> None:
        for index, ids in zip(indices, token_ids):
            self.memory_tokens[index, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
            self.memory_lengths[index] = len(ids)
        self.memory_correct[torch.as_tensor(list(indices), dtype=torch.long)] = correct

    def _read_memory(self, index: int) -> list[int]:
        return self.memory_tokens[index, : self.memory_lengths[index]].tolist()

    def setup(self) -> dict[str, float]:
        """Initial memory: one sample per training example, from the hinted prompt by default
        (the hint is only ever used here; the rationale is scored without it)."""
        all_indices = list(range(len(self.train)))
        for start in range(0, len(all_indices), self.config.init_batch_size):
            chunk = all_indices[start : start + self.config.init_batch_size]
            prompts = self.hinted_prompts(chunk) if self.config.hinted_init else self.cot_prompts(chunk)
            samples = self.sample(prompts)
            self._write_memory(chunk, samples.token_ids, torch.as_tensor(self.correct(samples, chunk)))
        return {"memory_acc": float(self.memory_correct.float().mean())}

    # ------------------------------------------------------------------ step
    def _propose(self, indices: Sequence[int]):
        """One proposal per example from the un-hinted prompt, and the candidate selection."""
        prompts = self.cot_prompts(indices)
        proposals = self.sample(prompts)
        proposal_correct = torch.as_tensor(self.correct(proposals, indices))
        memory_correct = self.memory_correct[torch.as_tensor(list(indices), dtype=torch.long)]
        accept = accept_proposals(memory_correct, proposal_correct)
        updated = [proposals.token_ids[m] if accept[m] else self._read_memory(i) for m, i in enumerate(indices)]
        return prompts, proposals, proposal_correct, memory_correct, accept, updated

    def _accumulate(self, prompts, proposals, memory_correct, proposal_correct, updated, generator) -> tuple[int, float]:
        """Backpropagate the estimator's surrogate loss; returns (#candidates, loss)."""
        batch = len(prompts)
        candidate_index, coefficient = trice_candidates(
            memory_correct,
            proposal_correct,
            control_variate=self.config.control_variate,
            num_samples=self.config.num_gradient_samples,
            generator=generator,
        )
        candidates = candidate_index.tolist()
        texts = [updated[j] if j < batch else proposals.token_ids[j - batch] for j in candidates]
        loss = self.policy.accumulate_gradient([prompts[j % batch] for j in candidates], texts, coefficient)
        return len(candidates), loss

    def step(self) -> dict[str, float]:
        indices = self.stream.next(self.config.batch_size)
        prompts, proposals, proposal_correct, memory_correct, accept, updated = self._propose(indices)
        num_candidates, loss = self._accumulate(prompts, proposals, memory_correct, proposal_correct, updated, self.resample_generator)
        grad_norm = self.apply_gradient()
        accepted = [i for m, i in enumerate(indices) if accept[m]]
        self._write_memory(accepted, [proposals.token_ids[m] for m in range(len(indices)) if accept[m]], torch.ones(len(accepted), dtype=torch.bool))
        valid = memory_correct | proposal_correct
        beta = leave_one_out_beta(memory_correct, proposal_correct)
        return {
            "train_proposal_acc": float(proposal_correct.float().mean()),
            "memory_acc": float(self.memory_correct.float().mean()),
            "batch_memory_acc": float(valid.float().mean()),
            "accept_rate": float(accept.float().mean()),
            "beta_mean": float(beta[valid].mean()) if valid.any() else float("nan"),
            "num_candidates": num_candidates,
            "grad_norm": grad_norm,
            "loss": loss,
        }

    def estimate_gradient(self, indices: Sequence[int]) -> torch.Tensor:
        """One draw of the estimator at the current parameters; memory is not written."""
        prompts, proposals, proposal_correct, memory_correct, _, updated = self._propose(indices)
        policy_generator = self.policy.generator
        seed = int(torch.randint(2**31, (1,), generator=policy_generator, device=policy_generator.device))
        generator = torch.Generator().manual_seed(seed)
        self._accumulate(prompts, proposals, memory_correct, proposal_correct, updated, generator)
        return self.flat_gradient()

    def solved_examples(self) -> np.ndarray:
        return self.memory_correct.numpy().copy()

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return super().state_dict() | {
            "memory_tokens": self.memory_tokens.clone(),
            "memory_lengths": self.memory_lengths.clone(),
            "memory_correct": self.memory_correct.clone(),
            "resample_generator": self.resample_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.memory_tokens = state["memory_tokens"].clone()
        self.memory_lengths = state["memory_lengths"].clone()
        self.memory_correct = state["memory_correct"].clone()
        self.resample_generator.set_state(state["resample_generator"])


@dataclass
class TriceNoCVConfig(TriceConfig):
    control_variate: bool = False


class TriceNoCV(Trice):
    """TRICE without the control variate (``trice-nocv``, §3.1)."""

    name = "trice-nocv"
    Config = TriceNoCVConfig
