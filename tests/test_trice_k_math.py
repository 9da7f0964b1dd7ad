"""Exact tests of the k-proposal TRICE estimator (``trice-k``) on an enumerable toy policy.

As in test_trice_math.py: question q has R possible rationales, p_θ(r|q) = softmax(θ_q)_r,
and a 0/1 correctness table; every joint state of a batch (each question's memory drawn
from the exact posterior, its k proposals from the prior) is enumerated with its
probability, so expectations are exact to float round-off.  At that stationary state
    E[estimate] = (1/K) Σ_{q: p(y_q|x_q) > 0} ∇_θ log p_θ(y_q|x_q)
with and without the control variate, for every k; the mutations show the test has teeth.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from algorithms.trice import (
    _systematic_indices,
    choose_replacements,
    multi_proposal_weights,
    signed_subsample,
    trice_weights,
)

R = 4
CORRECT = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)  # q2: unsolvable
UNSOLVABLE_MEMORY = 1


def logits_for(seed: int) -> torch.Tensor:
    return torch.randn(CORRECT.shape[0], R, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def marginal_loglik_grad(logits: torch.Tensor) -> torch.Tensor:
    theta = logits.detach().clone().requires_grad_()
    valid = [q for q in range(CORRECT.shape[0]) if CORRECT[q].any()]
    loglik = sum(torch.logsumexp(theta[q][CORRECT[q]], 0) - torch.logsumexp(theta[q], 0) for q in valid)
    (grad,) = torch.autograd.grad(loglik / len(valid), theta)
    return grad


def enumerate_states(logits: torch.Tensor, k: int):
    """Every joint state: memory z (S, Q) from the posterior (a fixed incorrect entry where
    none exists), proposals (S, Q, k) from the prior, and the probabilities (S,)."""
    prior = torch.softmax(logits, -1)
    all_proposals = torch.cartesian_prod(*[torch.arange(R)] * k).reshape(-1, k)  # (R^k, k)
    per_question = []
    for q in range(CORRECT.shape[0]):
        if CORRECT[q].any():
            support = torch.nonzero(CORRECT[q]).squeeze(-1)
            posterior = prior[q] * CORRECT[q]
            memory_probability = (posterior / posterior.sum())[support]
        else:
            support, memory_probability = torch.tensor([UNSOLVABLE_MEMORY]), torch.ones(1, dtype=prior.dtype)
        proposal_probability = prior[q][all_proposals].prod(-1)
        memory = support.repeat_interleave(len(all_proposals))
        proposals = all_proposals.repeat(len(support), 1)
        probability = (memory_probability[:, None] * proposal_probability[None, :]).flatten()
        per_question.append((memory, proposals, probability))
    grids = torch.meshgrid(*[torch.arange(len(states[0])) for states in per_question], indexing="ij")
    pick = [grid.flatten() for grid in grids]
    memory = torch.stack([states[0][i] for states, i in zip(per_question, pick)], -1)
    proposals = torch.stack([states[1][i] for states, i in zip(per_question, pick)], -2)
    probability = torch.stack([states[2][i] for states, i in zip(per_question, pick)], -1).prod(-1)
    return memory, proposals, probability


def estimates(logits, memory, proposals, weight_fn=multi_proposal_weights, control_variate=True) -> torch.Tensor:
    """The estimator's gradient in every state, (S, Q, R): Σ w ∇log softmax(θ_q)_r."""
    q_index = torch.arange(CORRECT.shape[0])
    memory_correct = CORRECT[q_index, memory]
    proposal_correct = CORRECT[q_index[None, :, None], proposals]
    w_mem, w_prop = weight_fn(memory_correct, proposal_correct, control_variate=control_variate)
    prior = torch.softmax(logits, -1)
    grad = -(w_mem + w_prop.sum(-1))[..., None] * prior  # the -softmax part of every score
    grad = grad.scatter_add(-1, memory[..., None], w_mem[..., None].to(grad.dtype))
    return grad.scatter_add(-1, proposals, w_prop.to(grad.dtype))


def expected_estimate(logits, k, **kwargs) -> torch.Tensor:
    memory, proposals, probability = enumerate_states(logits, k)
    with torch.autocast("cpu", enabled=False):
        return (probability[:, None, None] * estimates(logits, memory, proposals, **kwargs)).sum(0)


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("control_variate", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_expected_estimate_is_the_marginal_likelihood_gradient(k, control_variate, seed):
    logits = logits_for(seed)
    torch.testing.assert_close(expected_estimate(logits, k, control_variate=control_variate), marginal_loglik_grad(logits), atol=1e-12, rtol=0)


def test_control_variate_has_mean_zero():
    logits = logits_for(2)
    difference = expected_estimate(logits, 2, control_variate=True) - expected_estimate(logits, 2, control_variate=False)
    torch.testing.assert_close(difference, torch.zeros_like(difference), atol=1e-12, rtol=0)


def test_weights_match_a_hand_computed_case():
    # n = [1, 0, 2], v = [1, 0, 1], K = 2; β_0 = (0 + 2) / (2·1) = 1, β_2 = (1 + 0) / 2 = 0.5.
    w_mem, w_prop = multi_proposal_weights(torch.tensor([True, False, False]), torch.tensor([[True, False], [False, False], [True, True]]))
    torch.testing.assert_close(w_mem, torch.zeros(3))
    torch.testing.assert_close(w_prop, torch.tensor([[0.25, -0.25], [0.0, 0.0], [0.125, 0.125]]))
    # No correct proposal, correct memory: the memory entry carries the example.
    w_mem, w_prop = multi_proposal_weights(torch.tensor([True, True]), torch.tensor([[False, False], [True, True]]))
    torch.testing.assert_close(w_mem, torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(w_prop, torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))


def test_one_proposal_is_exactly_trice():
    """k = 1: the coefficient on the fresh proposal and on the old memory entry equal TRICE's
    (whose memory candidate is the post-update entry, i.e. the proposal when it is correct)."""
    m = 5
    for bits in itertools.product([False, True], repeat=2 * m):
        memory_correct, proposal_correct = torch.tensor(bits[:m]), torch.tensor(bits[m:])
        for cv in (True, False):
            w_mem, w_prop = trice_weights(memory_correct, proposal_correct, control_variate=cv)
            k_mem, k_prop = multi_proposal_weights(memory_correct, proposal_correct[:, None], control_variate=cv)
            on_proposal = w_prop + torch.where(proposal_correct, w_mem, 0.0)
            on_old_memory = torch.where(proposal_correct, 0.0, w_mem)
            torch.testing.assert_close(k_prop[:, 0], on_proposal, atol=1e-12, rtol=0)
            torch.testing.assert_close(k_mem, on_old_memory, atol=1e-12, rtol=0)


def _beta_over_all_proposals(memory_correct, proposal_correct, control_variate=True):
    """Mutation: β including the example's own proposals (not leave-one-out)."""
    w_mem, w_prop = multi_proposal_weights(memory_correct, proposal_correct, control_variate=False)
    if not control_variate:
        return w_mem, w_prop
    c = proposal_correct.to(torch.float64)
    k = c.shape[-1]
    valid = (memory_correct | proposal_correct.any(-1)).to(torch.float64)
    num_valid = valid.sum(-1, keepdim=True).clamp(min=1)
    beta = c.sum((-2, -1), keepdim=True) / (k * num_valid[..., None])
    return w_mem, w_prop - valid[..., None] * beta / k / num_valid[..., None]


def _memory_always(memory_correct, proposal_correct, control_variate=True):
    """Mutation: the memory entry's score added even when a proposal is correct."""
    w_mem, w_prop = multi_proposal_weights(memory_correct, proposal_correct, control_variate)
    valid = (memory_correct | proposal_correct.any(-1)).to(torch.float64)
    return valid / valid.sum(-1, keepdim=True).clamp(min=1), w_prop


def _first_correct_only(memory_correct, proposal_correct, control_variate=True):
    """Mutation: only the first correct proposal instead of the mean of all of them."""
    first = proposal_correct & (proposal_correct.cumsum(-1) == 1)
    w_mem, _ = multi_proposal_weights(memory_correct, proposal_correct, control_variate)
    _, w_prop = multi_proposal_weights(memory_correct, first, control_variate=False)
    return w_mem, w_prop


@pytest.mark.parametrize("wrong", [_beta_over_all_proposals, _memory_always])
def test_the_unbiasedness_test_catches_wrong_estimators(wrong):
    logits = logits_for(0)
    error = (expected_estimate(logits, 2, weight_fn=wrong) - marginal_loglik_grad(logits)).abs().max()
    assert error > 1e-3


def test_the_first_correct_proposal_alone_is_unbiased_but_noisier():
    """Any single correct proposal is a posterior draw too; the mean over all of them is
    what lowers the variance, which this checks exactly."""
    logits = logits_for(3)
    memory, proposals, probability = enumerate_states(logits, 3)
    variances = []
    for weight_fn in (multi_proposal_weights, _first_correct_only):
        g = estimates(logits, memory, proposals, weight_fn=weight_fn, control_variate=False)
        mean = (probability[:, None, None] * g).sum(0)
        torch.testing.assert_close(mean, marginal_loglik_grad(logits), atol=1e-12, rtol=0)
        variances.append(float((probability[:, None, None] * (g - mean) ** 2).sum()))
    assert variances[0] < variances[1]


def test_uniform_choice_among_correct_proposals_keeps_the_posterior_stationary():
    """The memory chain's transition, enumerated over k proposals with the uniform choice
    among the correct ones: the posterior is its stationary law."""
    logits = logits_for(4)
    prior = torch.softmax(logits[0], -1)
    posterior = prior * CORRECT[0] / (prior * CORRECT[0]).sum()
    k = 3
    transition = torch.zeros(R, R, dtype=torch.float64)
    for z in range(R):
        for proposals in itertools.product(range(R), repeat=k):
            p = float(torch.prod(prior[list(proposals)]))
            correct = [r for r in proposals if CORRECT[0, r]]
            if not correct:
                transition[z, z] += p
            for r in correct:
                transition[z, r] += p / len(correct)
    torch.testing.assert_close(posterior @ transition, posterior, atol=1e-12, rtol=0)


def test_choose_replacements_is_uniform_among_the_correct_proposals():
    correct = torch.tensor([[True, False, True, True], [False, False, False, False], [False, True, False, False]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(6000):
        choice = choose_replacements(correct, generator)
        assert choice[1] == -1 and choice[2] == 1
        counts[choice[0]] += 1
    assert counts[1] == 0
    torch.testing.assert_close(counts[[0, 2, 3]] / 6000, torch.full((3,), 1 / 3, dtype=counts.dtype), atol=0.025, rtol=0)
    # One proposal: the plain MH acceptance, drawing no random number.
    state = generator.get_state()
    assert choose_replacements(torch.tensor([[True], [False]]), generator).tolist() == [0, -1]
    assert torch.equal(generator.get_state(), state)


def test_signed_subsampling_is_the_full_estimate_in_expectation():
    """Exactly: systematic resampling is piecewise constant in its offset u, so averaging
    over a fine grid of u integrates it; every coefficient's expected total is its weight."""
    w_mem, w_prop = multi_proposal_weights(torch.tensor([True, False, True, False]), torch.tensor([[True, False], [True, True], [False, False], [False, False]]))
    weights = torch.cat([w_mem, w_prop.flatten()])
    L = 5
    grid = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000
    expected = torch.zeros_like(weights)
    for u in grid.tolist():
        index = _systematic_indices(weights.abs(), L, u)
        expected.index_add_(0, index, weights.sign()[index] * weights.abs().sum() / L)
    torch.testing.assert_close(expected / len(grid), weights, atol=2e-3, rtol=0)
    index, coefficient = signed_subsample(weights, L, torch.Generator().manual_seed(0))
    assert len(index) == L and torch.all(coefficient.abs() == weights.abs().sum() / L)
    assert signed_subsample(torch.zeros(3), L)[0].numel() == 0
