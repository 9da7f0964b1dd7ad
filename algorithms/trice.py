"""TRICE: Tuning Rationales with Independence-Chain Expectation-maximization.

Phan et al., "Training Chain-of-Thought via Latent-Variable Inference", NeurIPS 2023.
The notes are in ``docs/algorithms.md``; section numbers (§) below refer to it.

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
"essentially" unbiased (§3.4, caveat), as in the reference code.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from trice_rl import distributed
from trice_rl.algorithm import Algorithm, AlgorithmConfig
from trice_rl.options import option
from trice_rl.policy import Samples

__all__ = [
    "BETA_EPS",
    "MIN_SUBSAMPLE_WEIGHT",
    "accept_proposals",
    "leave_one_out_beta",
    "trice_weights",
    "systematic_resample",
    "trice_candidates",
    "trice_loss",
    "choose_replacements",
    "multi_proposal_weights",
    "signed_subsample",
    "TriceConfig",
    "Trice",
    "TriceNoCV",
    "TriceK",
]

BETA_EPS = 1e-10
"""Added to the denominator K - 1 of the leave-one-out β (§3.2, as in the reference code)."""

MIN_SUBSAMPLE_WEIGHT = 1e-10
"""Subsampling weights are clipped below at this value (§3.4)."""


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

    The subsampled estimator draws candidates ∝ |w| (the magnitudes of their signed
    weights), which makes it unbiased.  The paper's reference notebook instead passes
    ``log_softmax(w)`` to a resampler that expects log-probabilities, i.e. it samples
    ∝ exp(w): a different, biased choice that this code does not copy.

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
# 5. Several proposals per visit (``trice-k``; docs/algorithms.md, "TRICE with k proposals")
# --------------------------------------------------------------------------------------


def choose_replacements(proposal_correct, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which of k proposals replaces each memory entry: one chosen uniformly among the
    correct ones, -1 where none is.

    Every correct proposal from the prior is an exact draw from the posterior (rejection
    sampling), so a uniformly chosen one is too, whatever the old entry: the chain's
    stationary law stays the posterior.  With k = 1 this is :func:`accept_proposals` and
    draws no random number.

    Args: bool (M, k).  Returns: LongTensor (M,) of proposal indices in [0, k) or -1.
    """
    prop = _as_bool(proposal_correct, "proposal_correct")
    if prop.ndim != 2:
        raise ValueError(f"proposal_correct must have shape (M, k), got {tuple(prop.shape)}")
    choice = torch.where(prop.any(-1), prop.to(torch.int64).argmax(-1), torch.full(prop.shape[:1], -1))
    several = prop.sum(-1) > 1
    if several.any():
        device = generator.device if generator is not None else torch.device("cpu")
        keys = torch.rand(prop.shape, generator=generator, dtype=torch.float64, device=device).to(prop.device)
        choice = torch.where(several, torch.where(prop, keys, -1.0).argmax(-1), choice)
    return choice


def multi_proposal_weights(memory_correct, proposal_correct, control_variate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed weights of the k-proposal estimator, for the memory entry and each proposal.

    With n_m = Σ_i c̃_mi correct proposals, v_m = c_m OR n_m > 0, K = Σ v and the
    leave-one-out β_m = Σ_{m'≠m} n_m' / (k(K − 1)), the acceptance rate of the *other*
    examples' proposals (those of invalid examples are all incorrect):

    * memory entry z_m: ``v [n_m = 0] / K`` (used only when no proposal is correct);
    * proposal z̃_mi: ``v (c̃_mi / n_m − β_m / k) / K`` (c̃/n read as 0 when n_m = 0).

    The estimate Σ w ∇log p is, per valid example, the mean score of its correct proposals
    (each a posterior draw), or the memory's when none is, minus the control variate
    (β_m/k) Σ_i ∇log p(z̃_mi|x_m), whose mean is zero because β_m does not depend on
    example m's proposals.  With k = 1 these are exactly :func:`trice_weights` (the memory
    entry after the update is the proposal when it is correct).

    Args: memory_correct bool (..., M), c before the update; proposal_correct bool
    (..., M, k).  Returns (memory weights (..., M), proposal weights (..., M, k)).
    """
    mem = _as_bool(memory_correct, "memory_correct")
    prop = _as_bool(proposal_correct, "proposal_correct")
    if prop.shape[:-1] != mem.shape or mem.ndim == 0:
        raise ValueError(f"proposal_correct must have shape memory_correct.shape + (k,), got {tuple(prop.shape)} and {tuple(mem.shape)}")
    dtype = torch.get_default_dtype()
    k = prop.shape[-1]
    c = prop.to(dtype)
    n = c.sum(-1)
    v = (mem | (n > 0)).to(dtype)
    num_valid = v.sum(-1, keepdim=True)
    inv_k = torch.where(num_valid > 0, 1 / num_valid.clamp(min=1), torch.zeros_like(num_valid))
    posterior_part = c / n.clamp(min=1)[..., None]
    if control_variate:
        beta = (n.sum(-1, keepdim=True) - n) / (k * (num_valid - 1) + BETA_EPS)
        posterior_part = posterior_part - beta[..., None] / k
    w_mem = v * (n == 0).to(dtype) * inv_k
    w_prop = v[..., None] * posterior_part * inv_k[..., None]
    return w_mem, w_prop + 0.0  # + 0.0: no negative zeros


def signed_subsample(coefficients: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L candidates by systematic resampling ∝ |coefficient|, each with coefficient
    sign · Σ|coefficient| / L: the expected sum Σ_l coef_l ∇log p(r_l) is exactly the full
    Σ_j coefficient_j ∇log p(r_j) (every index j is picked L|w_j|/Σ|w| times on average).
    All-zero coefficients give an empty selection."""
    coefficients = torch.as_tensor(coefficients)
    magnitude = coefficients.abs()
    if not (magnitude > 0).any():
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=coefficients.dtype)
    num_samples = _positive_int(num_samples, "num_samples")
    index = systematic_resample(magnitude, num_samples, generator)
    return index, coefficients.sign()[index] * magnitude.sum() / num_samples


# --------------------------------------------------------------------------------------
# 6. The algorithm (§2): memory, one MH step per visit, the estimator, an optimizer step
# --------------------------------------------------------------------------------------

MEMORY_INITS = ("upfront", "lazy")


@dataclass
class TriceConfig(AlgorithmConfig):
    """TRICE's settings; the shared ones (batch size M, learning rate, ...) are inherited.

    ``num_gradient_samples`` is L: None (or ≥ the number of candidates) differentiates every
    candidate with a non-zero weight (the paper's BBH setting, L = 2M); fewer turns on the
    subsampled estimator of §3.4.  ``hinted_init`` initialises memory by sampling with the
    answer shown in the prompt (rationalization, §2.2); without it memory starts from
    ordinary proposals.  ``memory_init`` "upfront" samples every example's memory before
    the first step (the paper); "lazy" fills an example's memory on its first visit, with a
    hinted sample only when that visit's proposals are all incorrect.  ``memory_max_reuse``
    (None: never, the exact chain) forgets a correct entry once it has been retrained on at
    that many visits without a correct proposal replacing it: a diagnostic that bounds how
    long a kept rationale is replayed, at the price of the estimator's exactness (§2.4).
    """

    control_variate: bool = option(True, "subtract the leave-one-out control variate (§3.2)")
    num_gradient_samples: int | None = option(None, "differentiate L candidates by systematic resampling (null: all, §3.4)")
    hinted_init: bool = option(True, "initial memory from the hinted prompt (rationalization, §2.2)")
    init_batch_size: int = option(128, "examples per sampling call of the up-front memory initialisation")
    memory_init: str = option("upfront", "upfront (every example before training) or lazy (on first visits, §2.2)")
    memory_max_reuse: int | None = option(None, "forget a correct entry after retraining on it at this many visits (null: never; biased, §2.4)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory_init not in MEMORY_INITS:
            raise ValueError(f"{type(self).__name__}.memory_init must be one of {', '.join(MEMORY_INITS)}, got {self.memory_init!r}")
        if self.memory_max_reuse is not None and (isinstance(self.memory_max_reuse, bool) or not isinstance(self.memory_max_reuse, int) or self.memory_max_reuse < 0):
            raise ValueError(f"{type(self).__name__}.memory_max_reuse must be a non-negative int (or None), got {self.memory_max_reuse!r}")
        if self.memory_max_reuse == 0 and self.control_variate and getattr(self, "num_proposals", 1) == 1:
            # every valid example then holds only its correct proposal, so β = 1 and all weights vanish
            raise ValueError(
                f"{type(self).__name__}: memory_max_reuse=0 with the control variate and one proposal gives a zero gradient "
                "whenever two examples are valid (§2.4); use trice-nocv or several proposals"
            )
        if self.num_gradient_samples is not None and self.num_gradient_samples < 1:
            raise ValueError(f"{type(self).__name__}.num_gradient_samples must be at least 1 (or None), got {self.num_gradient_samples}")


@dataclass
class Visit:
    """One step's batch after the MH update: what the estimator needs."""

    indices: list[int]
    prompts: list[str]  # un-hinted CoT prompts: proposals are drawn and scored under them
    proposals: Samples  # k per example, prompt-major
    proposal_correct: torch.Tensor  # bool (M, k)
    memory_correct: torch.Tensor  # bool (M,), before the update (a forgotten entry counts as incorrect)
    forgotten: torch.Tensor  # bool (M,): correct entries retrained on ``memory_max_reuse`` times
    replacement: torch.Tensor  # long (M,): the proposal that replaced the entry, or -1
    updated: list[list[int]]  # the memory entries after the update (token ids)

    def proposal_tokens(self, m: int, i: int) -> list[int]:
        return self.proposals.token_ids[m * self.proposal_correct.shape[1] + i]


class Trice(Algorithm):
    """TRICE with the leave-one-out control variate (``trice``).

    With W ranks (docs/distributed.md) every rank holds the whole memory and sees the whole
    batch's proposals, so K, β and the MH update are the whole batch's on every rank."""

    name = "trice"
    Config = TriceConfig
    config: TriceConfig  # the typed view of Algorithm.config
    metric_names = ("train_proposal_acc", "memory_acc", "memory_hinted", "batch_memory_acc", "accept_rate", "beta_mean", "num_candidates", "grad_norm", "loss")

    def __init__(self, policy, task, config: TriceConfig | None = None, seed: int = 0):
        super().__init__(policy, task, config, seed)
        # One rationale per training example, as token ids in a compact padded array.
        num_examples, width = len(self.train), self.config.max_new_tokens
        self.memory_tokens = torch.zeros(num_examples, width, dtype=torch.int32)
        self.memory_lengths = torch.zeros(num_examples, dtype=torch.int32)
        self.memory_correct = torch.zeros(num_examples, dtype=torch.bool)
        # Whether an example's memory holds a rationale yet (all, after an up-front init).
        self.memory_filled = torch.zeros(num_examples, dtype=torch.bool)
        # Whether it is still the initial sample drawn with the answer shown (rationalization;
        # docs/algorithms.md §2.2 says why the log tracks it).
        self.memory_hinted = torch.zeros(num_examples, dtype=torch.bool)
        # At how many visits the entry was retrained on since it was written (memory_max_reuse).
        self.memory_reuses = torch.zeros(num_examples, dtype=torch.int32)
        self.resample_generator = torch.Generator().manual_seed(seed)

    @property
    def num_proposals(self) -> int:
        return 1

    def samples_per_example(self) -> int:
        """k proposals, and a hinted sample for an example whose memory a lazy init fills."""
        return self.num_proposals + (self.config.memory_init == "lazy")

    # ---------------------------------------------------------------- memory
    def _write_memory(self, indices: Sequence[int], token_ids: Sequence[Sequence[int]], correct: torch.Tensor, hinted: bool = False) -> None:
        for index, ids in zip(indices, token_ids):
            self.memory_tokens[index, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
            self.memory_lengths[index] = len(ids)
        rows = torch.as_tensor(list(indices), dtype=torch.long)
        self.memory_correct[rows] = correct
        self.memory_filled[rows] = True
        self.memory_hinted[rows] = hinted
        self.memory_reuses[rows] = 0

    def _memory_stats(self) -> dict[str, float]:
        """The share of examples with a correct entry, and of those entries the share that
        are still the hinted initial sample."""
        correct = self.memory_correct
        hinted = (self.memory_hinted & correct).sum() / correct.sum() if correct.any() else float("nan")
        return {"memory_acc": float(correct.float().mean()), "memory_hinted": float(hinted)}

    def memory_rationale(self, index: int) -> list[int]:
        """The token ids of example ``index``'s memory entry."""
        return self.memory_tokens[index, : self.memory_lengths[index]].tolist()

    def _initial_samples(self, indices: Sequence[int]) -> Samples:
        prompts = self.hinted_prompts(indices) if self.config.hinted_init else self.cot_prompts(indices)
        return self.sample(prompts)

    def setup(self) -> dict[str, float]:
        """Up-front initial memory: one sample per training example, from the hinted prompt
        by default (the hint is only ever used here; the rationale is scored without it)."""
        if self.config.memory_init == "upfront":
            all_indices = list(range(len(self.train)))
            for start in range(0, len(all_indices), self.config.init_batch_size):
                chunk = all_indices[start : start + self.config.init_batch_size]
                samples = self._initial_samples(chunk)
                self._write_memory(chunk, samples.token_ids, torch.as_tensor(self.correct(samples, chunk)), self.config.hinted_init)
        return self._memory_stats()

    def _fill_lazily(self, indices: Sequence[int], proposal_correct: torch.Tensor) -> None:
        """First visits: an example none of whose proposals is correct gets an initial
        (hinted) sample as its pre-update memory; the others are filled by the update."""
        empty = [m for m, i in enumerate(indices) if not self.memory_filled[i] and not proposal_correct[m].any()]
        if empty:
            chosen = [indices[m] for m in empty]
            samples = self._initial_samples(chosen)
            self._write_memory(chosen, samples.token_ids, torch.as_tensor(self.correct(samples, chosen)), self.config.hinted_init)

    # ------------------------------------------------------------------ step
    def _propose(self, indices: Sequence[int], generator: torch.Generator) -> Visit:
        """k proposals per example from the un-hinted prompt, and the MH update (not yet
        written to memory)."""
        k = self.num_proposals
        prompts = self.cot_prompts(indices)
        proposals = self.sample(prompts, n=k)
        proposal_correct = torch.as_tensor(self.correct(proposals, indices)).reshape(len(indices), k)
        if self.config.memory_init == "lazy":
            self._fill_lazily(indices, proposal_correct)
        rows = torch.as_tensor(list(indices), dtype=torch.long)
        memory_correct = self.memory_correct[rows].clone()
        max_reuse = self.config.memory_max_reuse
        forgotten = memory_correct & (self.memory_reuses[rows] >= max_reuse) if max_reuse is not None else torch.zeros_like(memory_correct)
        memory_correct &= ~forgotten
        replacement = choose_replacements(proposal_correct, generator)
        updated = [
            proposals.token_ids[m * k + int(r)] if r >= 0 else self.memory_rationale(i) for m, (i, r) in enumerate(zip(indices, replacement))
        ]
        return Visit(list(indices), prompts, proposals, proposal_correct, memory_correct, forgotten, replacement, updated)

    def _candidates(self, visit: Visit, generator: torch.Generator) -> tuple[list[str], list[list[int]], torch.Tensor]:
        """The rationales whose scores enter the gradient, their (un-hinted) prompts and
        coefficients: candidates 0..M-1 are the post-update memory entries, M..2M-1 the
        proposals (``trice_candidates``)."""
        batch = len(visit.indices)
        candidate_index, coefficient = trice_candidates(
            visit.memory_correct,
            visit.proposal_correct[:, 0],
            control_variate=self.config.control_variate,
            num_samples=self.config.num_gradient_samples,
            generator=generator,
        )
        candidates = candidate_index.tolist()
        texts = [visit.updated[j] if j < batch else visit.proposal_tokens(j - batch, 0) for j in candidates]
        return [visit.prompts[j % batch] for j in candidates], texts, coefficient

    def _accumulate(self, visit: Visit, generator: torch.Generator) -> tuple[int, float]:
        """Backpropagate the estimator's surrogate loss; returns (#candidates, loss)."""
        prompts, texts, coefficient = self._candidates(visit, generator)
        return len(texts), self.accumulate_gradient(prompts, texts, coefficient)

    def step(self) -> dict[str, float]:
        visit = self._propose(self.next_batch(), self.resample_generator)
        num_candidates, loss = self._accumulate(visit, self.resample_generator)
        grad_norm = self.apply_gradient()
        rows = torch.as_tensor(visit.indices, dtype=torch.long)
        self.memory_correct[rows[visit.forgotten]] = False
        self.memory_reuses[rows[visit.memory_correct & (visit.replacement < 0)]] += 1  # retrained on, kept
        accepted = [m for m in range(len(visit.indices)) if visit.replacement[m] >= 0]
        self._write_memory(
            [visit.indices[m] for m in accepted], [visit.updated[m] for m in accepted], torch.ones(len(accepted), dtype=torch.bool)
        )
        any_correct = visit.proposal_correct.any(-1)
        valid = visit.memory_correct | any_correct
        beta = leave_one_out_beta(visit.memory_correct, any_correct)
        return {
            "train_proposal_acc": float(visit.proposal_correct.float().mean()),
            **self._memory_stats(),
            "batch_memory_acc": float(valid.float().mean()),
            "accept_rate": float(any_correct.float().mean()),
            "beta_mean": float(beta[valid].mean()) if valid.any() else float("nan"),
            "num_candidates": num_candidates,
            "grad_norm": grad_norm,
            "loss": loss,
        }

    def estimate_gradient(self, indices: Sequence[int]) -> torch.Tensor:
        """One draw of the estimator at the current parameters; memory is not written
        (a lazy first visit's initial sample is, as on a training step)."""
        policy_generator = self.policy.generator
        seed = int(torch.randint(2**31, (1,), generator=policy_generator, device=policy_generator.device))
        # Every rank computes the whole batch's weights and must resample alike: rank 0's seed.
        seed = distributed.agree(seed)
        generator = torch.Generator().manual_seed(seed)
        self._accumulate(self._propose(indices, generator), generator)
        return self.flat_gradient()

    def solved_examples(self) -> np.ndarray:
        return self.memory_correct.numpy().copy()

    def held_rationales(self) -> tuple[list[int], list[list[int]]]:
        indices = torch.nonzero(self.memory_correct).flatten().tolist()
        return indices, [self.memory_rationale(i) for i in indices]

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return super().state_dict() | {
            "memory_tokens": self.memory_tokens.clone(),
            "memory_lengths": self.memory_lengths.clone(),
            "memory_correct": self.memory_correct.clone(),
            "memory_filled": self.memory_filled.clone(),
            "memory_hinted": self.memory_hinted.clone(),
            "memory_reuses": self.memory_reuses.clone(),
            "resample_generator": self.resample_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.memory_tokens = state["memory_tokens"].clone()
        self.memory_lengths = state["memory_lengths"].clone()
        self.memory_correct = state["memory_correct"].clone()
        self.memory_filled = state.get("memory_filled", torch.ones_like(self.memory_correct)).clone()
        self.memory_hinted = state.get("memory_hinted", torch.zeros_like(self.memory_correct)).clone()
        self.memory_reuses = state.get("memory_reuses", torch.zeros_like(self.memory_lengths)).clone()
        self.resample_generator.set_state(state["resample_generator"])


@dataclass
class TriceNoCVConfig(TriceConfig):
    control_variate: bool = False


class TriceNoCV(Trice):
    """TRICE without the control variate (``trice-nocv``, §3.1)."""

    name = "trice-nocv"
    Config = TriceNoCVConfig


@dataclass
class TriceKConfig(TriceConfig):
    """``num_proposals`` (k) proposals per visited example, charged k samples each;
    ``num_gradient_samples`` L < k·M + M subsamples the candidates (:func:`signed_subsample`)."""

    num_proposals: int = option(4, "proposals per visited example (k, §3.5)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_proposals < 1:
            raise ValueError(f"TriceKConfig.num_proposals must be at least 1, got {self.num_proposals}")


class TriceK(Trice):
    """TRICE with k proposals per visit (``trice-k``): the memory entry is replaced by a
    uniformly chosen correct proposal, and the gradient averages every correct proposal of
    an example (:func:`multi_proposal_weights`)."""

    name = "trice-k"
    Config = TriceKConfig
    config: TriceKConfig

    @property
    def num_proposals(self) -> int:
        return self.config.num_proposals

    def _candidates(self, visit: Visit, generator: torch.Generator) -> tuple[list[str], list[list[int]], torch.Tensor]:
        """Candidates 0..M-1 are the memory entries, M + m·k + i proposal i of example m."""
        batch, k = visit.proposal_correct.shape
        w_mem, w_prop = multi_proposal_weights(visit.memory_correct, visit.proposal_correct, self.config.control_variate)
        weights = torch.cat([w_mem, w_prop.flatten()])
        if self.config.num_gradient_samples is None or self.config.num_gradient_samples >= len(weights):
            index = torch.nonzero(weights).squeeze(-1)
            coefficient = weights[index]
        else:
            index, coefficient = signed_subsample(weights, self.config.num_gradient_samples, generator)
        candidates = index.tolist()
        texts = [visit.updated[j] if j < batch else visit.proposals.token_ids[j - batch] for j in candidates]
        examples = [j if j < batch else (j - batch) // k for j in candidates]
        return [visit.prompts[m] for m in examples], texts, coefficient
