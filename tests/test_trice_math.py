"""Exact tests of TRICE's estimator maths (algorithms/trice.py) on an enumerable toy policy.

The toy "LLM": question q has R = 6 possible rationales, p_θ(r|q) = softmax(θ_q)_r with the
logits θ (Q, R) as parameters, and a fixed 0/1 correctness table c(q, r). Everything the
paper's model leaves implicit is computable here: the marginal p(y|x) = Σ_r softmax·c, its
exact gradient (autograd), and the posterior p(r|x,y) ∝ softmax·c.

The TRICE side uses the functions of algorithms/trice.py exactly as the algorithm does:
proposals from the prior, ``accept_proposals`` to update the memory, ``trice_weights`` /
``trice_candidates`` for the coefficients, ``trice_loss`` + autograd for the gradient.
Expectations over (memory, proposal) are computed by *enumerating* every joint state of the
batch with its probability, so most comparisons are exact to float round-off.

What "unbiased" means here (and is tested): the batch holds each question once; a question
that has a correct rationale has its memory drawn from the exact posterior (the chains'
stationary state), and a question with no correct rationale holds an incorrect memory.
Then K (the number of valid examples) is fixed and
    E[TRICE estimate] = (1/K) Σ_{q: p(y_q|x_q) > 0} ∇_θ log p_θ(y_q|x_q)
exactly, with and without the control variate. Unbiasedness alone does not pin β (any β
independent of the example's own proposal keeps the CV mean-zero), so β's exact value is
pinned by the hand-computed tables, and the mutation checks show each test has teeth.
"""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.trice import (
    BETA_EPS,
    accept_proposals,
    leave_one_out_beta,
    systematic_resample,
    trice_candidates,
    trice_loss,
    trice_weights,
)
from algorithms.trice import _systematic_indices

R = 6
# One row per question: which of its R rationales are correct. Several correct rationales,
# a single one, and a question with none (its posterior does not exist).
CORRECT = torch.tensor(
    [
        [1, 0, 0, 1, 0, 0],
        [0, 1, 1, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 0],
    ],
    dtype=torch.bool,
)
IMPOSSIBLE_MEMORY = 2  # the (incorrect) memory entry held by the question with no solution


def random_logits(seed: int, q: int = 4) -> torch.Tensor:
    return torch.randn(q, R, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def logits_with_acceptance(seed: int, correct: torch.Tensor, accept: float) -> torch.Tensor:
    """Random logits, shifted on the correct rationales so that p(y|x) = accept per question."""
    logits = random_logits(seed, correct.shape[0])
    e = logits.exp()
    s_c = (e * correct).sum(-1)
    s_i = (e * ~correct).sum(-1)
    shift = torch.log(accept * s_i / ((1 - accept) * s_c))
    return logits + shift[:, None] * correct


# --------------------------------------------------------------------------------------
# Exact quantities of the toy model
# --------------------------------------------------------------------------------------


def marginal_loglik_grad(logits: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """(1/K) Σ_{q valid} ∇ log p(y_q|x_q) by autograd, K = number of questions with a
    correct rationale."""
    th = logits.detach().clone().requires_grad_()
    valid = [q for q in range(correct.shape[0]) if correct[q].any()]
    ll = sum(
        torch.logsumexp(th[q][correct[q]], 0) - torch.logsumexp(th[q], 0) for q in valid
    )
    (g,) = torch.autograd.grad(ll / len(valid), th)
    return g


def posterior(logits: torch.Tensor, correct_row: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits.detach(), -1) * correct_row
    return p / p.sum()


def enumerate_states(logits: torch.Tensor, correct: torch.Tensor):
    """Every joint (memory, proposal) state of a batch holding each question once.

    Memory z_q ~ posterior (IMPOSSIBLE_MEMORY where no rationale is correct), proposal
    z̃_q ~ prior, all independent. Returns z, z̃ (S, Q) long and their probabilities (S,).
    """
    prior = torch.softmax(logits.detach(), -1)
    per_q = []
    for q in range(correct.shape[0]):
        if correct[q].any():
            support = torch.nonzero(correct[q]).squeeze(-1)
            mem_prob = posterior(logits[q], correct[q])[support]
        else:
            support = torch.tensor([IMPOSSIBLE_MEMORY])
            mem_prob = torch.ones(1, dtype=prior.dtype)
        zz, tt = torch.meshgrid(support, torch.arange(R), indexing="ij")
        per_q.append((zz.flatten(), tt.flatten(), (mem_prob[:, None] * prior[q][None, :]).flatten()))
    grids = torch.meshgrid(*[torch.arange(len(p[0])) for p in per_q], indexing="ij")
    idx = [g.flatten() for g in grids]
    z = torch.stack([per_q[q][0][idx[q]] for q in range(len(per_q))], -1)
    zt = torch.stack([per_q[q][1][idx[q]] for q in range(len(per_q))], -1)
    prob = torch.stack([per_q[q][2][idx[q]] for q in range(len(per_q))], -1).prod(-1)
    return z, zt, prob


def trice_step(z, zt, correct, weight_fn=trice_weights, **kw):
    """What the algorithm does with a batch: score, accept, weigh. Works on (S, Q) stacks."""
    q = torch.arange(correct.shape[0])[None, :]
    mem_c, prop_c = correct[q, z], correct[q, zt]
    accept = accept_proposals(mem_c, prop_c)
    z_new = torch.where(accept, zt, z)
    w_mem, w_prop = weight_fn(mem_c, prop_c, **kw)
    return z_new, w_mem, w_prop


def expected_trice_grad(logits, correct, weight_fn=trice_weights, **kw) -> torch.Tensor:
    """E[TRICE estimate] by enumeration: autograd of the probability-weighted surrogate loss
    (the gradient is linear in the coefficients, so this is the exact expectation)."""
    z, zt, prob = enumerate_states(logits, correct)
    z_new, w_mem, w_prop = trice_step(z, zt, correct, weight_fn, **kw)
    th = logits.detach().clone().requires_grad_()
    logp = torch.log_softmax(th, -1)
    q = torch.arange(correct.shape[0])[None, :]
    logprobs = torch.cat([logp[q, z_new], logp[q, zt]], -1)
    coefficient = prob[:, None] * torch.cat([w_mem, w_prop], -1).double()
    (g,) = torch.autograd.grad(-trice_loss(logprobs, coefficient), th)
    return g


def score_table(logits: torch.Tensor) -> torch.Tensor:
    """G[q, r] = ∇_θ log p(r|q), flattened over θ: (Q, R, Q*R), by autograd."""
    jac = torch.autograd.functional.jacobian(lambda t: torch.log_softmax(t, -1), logits.detach())
    return jac.reshape(logits.shape[0], R, -1)


def per_state_grads(logits, correct, **kw):
    """Every state's gradient estimate as a vector (S, Q*R), with the state probabilities."""
    z, zt, prob = enumerate_states(logits, correct)
    z_new, w_mem, w_prop = trice_step(z, zt, correct, **kw)
    G = score_table(logits)
    q = torch.arange(correct.shape[0])[None, :]
    g = (w_mem.double()[..., None] * G[q, z_new] + w_prop.double()[..., None] * G[q, zt]).sum(1)
    return g, prob


def mean_and_total_variance(g, prob):
    mean = (prob[:, None] * g).sum(0)
    var = (prob[:, None] * (g - mean) ** 2).sum(0).sum()
    return mean, var


TOL = 2e-6  # float32 weights, float64 everything else


# --------------------------------------------------------------------------------------
# Hand-computed weights
# --------------------------------------------------------------------------------------


def test_weights_match_hand_computed_table():
    # memory before update: correct, correct, wrong, wrong; proposals: correct, wrong, correct, wrong
    mem = torch.tensor([True, True, False, False])
    prop = torch.tensor([True, False, True, False])
    # v = [1, 1, 1, 0], K = 3, Σc̃ = 2, β = [(2-1)/2, (2-0)/2, (2-1)/2, -] = [1/2, 1, 1/2, -]
    w_mem, w_prop = trice_weights(mem, prop)
    torch.testing.assert_close(w_mem, torch.tensor([0.5 / 3, 1 / 3, 0.5 / 3, 0.0]))
    torch.testing.assert_close(w_prop, torch.tensor([0.0, -1 / 3, 0.0, 0.0]))
    torch.testing.assert_close(leave_one_out_beta(mem, prop), torch.tensor([0.5, 1.0, 0.5, 0.0]))
    w_mem, w_prop = trice_weights(mem, prop, control_variate=False)
    torch.testing.assert_close(w_mem, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))
    assert torch.equal(w_prop, torch.zeros(4))


def test_weights_match_hand_computed_table_m5():
    # v = [1, 1, 1, 1, 0], K = 4, Σc̃ = 1 (example 2), so β = [1/3, 1/3, 0, 1/3, -]
    mem = torch.tensor([True, True, False, True, False])
    prop = torch.tensor([False, False, True, False, False])
    w_mem, w_prop = trice_weights(mem, prop)
    torch.testing.assert_close(w_mem, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]) / 4)
    torch.testing.assert_close(w_prop, -torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3, 0.0]) / 4)
    assert not torch.signbit(trice_weights(mem, prop)[1][2])  # no negative zeros


def test_weights_accept_0_1_numbers_and_batches():
    mem = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]])
    prop = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0]])
    batched = trice_weights(mem, prop)
    for b in range(2):
        row = trice_weights(mem[b].bool(), prop[b].bool())
        for x, y in zip(batched, row):
            torch.testing.assert_close(x[b], y)
    with pytest.raises(ValueError, match="boolean"):
        trice_weights(torch.tensor([0.5, 1.0]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="same shape"):
        trice_weights(torch.tensor([True]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="batch dimension"):
        trice_weights(torch.tensor(True), torch.tensor(True))


def test_no_valid_example_gives_zero_weights_and_empty_selection():
    false = torch.zeros(5, dtype=torch.bool)
    for cv in (True, False):
        for w in trice_weights(false, false, control_variate=cv):
            assert torch.equal(w, torch.zeros(5))
        for n in (None, 3):
            idx, coef = trice_candidates(false, false, control_variate=cv, num_samples=n)
            assert idx.numel() == 0 and coef.numel() == 0 and idx.dtype == torch.long


def test_single_valid_example_has_finite_weights():
    # K = 1: the LOO denominator is 0 + 1e-10 and the numerator is 0 for the valid example
    # (β = 0, its memory gets weight 1); invalid examples keep weight 0 although their raw
    # β would be c̃_valid / 1e-10.
    cases = [  # (memory_correct, proposal_correct): example 0 valid through its proposal / memory
        (torch.tensor([False, False, False]), torch.tensor([True, False, False])),
        (torch.tensor([True, False, False]), torch.tensor([False, False, False])),
    ]
    for mem, prop in cases:
        w_mem, w_prop = trice_weights(mem, prop)
        torch.testing.assert_close(w_mem, torch.tensor([1.0, 0.0, 0.0]))
        assert torch.equal(w_prop, torch.zeros(3))
        assert torch.equal(leave_one_out_beta(mem, prop), torch.zeros(3))


def test_all_correct_batch_gives_zero_gradient_with_cv():
    # every proposal correct: β = (K-1)/(K-1+1e-10), all weights (1-β)/K ≈ 0 and proposals 0
    for mem in (torch.ones(6, dtype=torch.bool), torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)):
        prop = torch.ones(6, dtype=torch.bool)
        w_mem, w_prop = trice_weights(mem, prop)
        assert w_mem.abs().max() <= BETA_EPS and torch.equal(w_prop, torch.zeros(6))
        idx, coef = trice_candidates(mem, prop)
        assert coef.abs().sum() <= 6 * BETA_EPS
        # without the CV the stored rationales are still pushed up
        torch.testing.assert_close(trice_weights(mem, prop, control_variate=False)[0], torch.full((6,), 1 / 6))
    # and on the toy policy: every rationale correct => true gradient 0 => every estimate ≈ 0
    all_correct = torch.ones(2, R, dtype=torch.bool)
    logits = random_logits(1, 2)
    g, prob = per_state_grads(logits, all_correct)
    assert g.abs().max() < 1e-8
    assert marginal_loglik_grad(logits, all_correct).abs().max() < 1e-12


# --------------------------------------------------------------------------------------
# The MCMC step
# --------------------------------------------------------------------------------------


def test_accept_iff_proposal_correct():
    mem = torch.tensor([False, False, True, True])
    prop = torch.tensor([False, True, False, True])
    assert accept_proposals(mem, prop).tolist() == [False, True, False, True]
    # an incorrect proposal never enters memory, whatever the batch
    g = torch.Generator().manual_seed(0)
    mem, prop = torch.rand(200, 7, generator=g) < 0.5, torch.rand(200, 7, generator=g) < 0.5
    acc = accept_proposals(mem, prop)
    assert not (acc & ~prop).any() and torch.equal(acc, prop)


def transition_matrix(logits_row: torch.Tensor, correct_row: torch.Tensor) -> torch.Tensor:
    """P[z, z'] of one memory chain, built from accept_proposals on every (z, z̃) pair."""
    prior = torch.softmax(logits_row, -1)
    z, zt = torch.meshgrid(torch.arange(R), torch.arange(R), indexing="ij")
    accept = accept_proposals(correct_row[z], correct_row[zt])
    z_new = torch.where(accept, zt, z)
    P = torch.zeros(R, R, dtype=prior.dtype)
    P.index_put_((z.flatten(), z_new.flatten()), prior[zt.flatten()], accumulate=True)
    return P


def test_memory_chain_has_the_posterior_as_stationary_law_exactly():
    logits = random_logits(3)
    for q in range(3):
        P = transition_matrix(logits[q], CORRECT[q])
        torch.testing.assert_close(P.sum(-1), torch.ones(R, dtype=P.dtype))
        pi = posterior(logits[q], CORRECT[q])
        torch.testing.assert_close(pi @ P, pi, rtol=0, atol=1e-15)
        # independence sampler: after n steps from z0, the law is (1-a)^n δ_z0 + (1-(1-a)^n) π
        a = float((torch.softmax(logits[q], -1) * CORRECT[q]).sum())
        for z0 in range(R):
            law = torch.nn.functional.one_hot(torch.tensor(z0), R).double()
            for n in range(1, 8):
                law = law @ P
                delta = torch.nn.functional.one_hot(torch.tensor(z0), R).double()
                expect = (1 - a) ** n * delta + (1 - (1 - a) ** n) * pi
                torch.testing.assert_close(law, expect, rtol=0, atol=1e-14)


def test_memory_chains_converge_to_posterior_by_simulation():
    """20 000 chains of question 1 (3 correct rationales), half started on a correct but
    unlikely rationale, half on an incorrect one; proposals drawn from the prior."""
    gen = torch.Generator().manual_seed(11)
    logits = random_logits(5)[1]
    correct = CORRECT[1]
    prior = torch.softmax(logits, -1)
    pi = posterior(logits, correct)
    a = float((prior * correct).sum())
    n_chains = 20_000
    starts = torch.tensor([4, 0]).repeat_interleave(n_chains // 2)
    z = starts.clone()
    for step in range(1, 41):
        zt = torch.multinomial(prior, n_chains, replacement=True, generator=gen)
        z = torch.where(accept_proposals(correct[z], correct[zt]), zt, z)
        if step in (3, 40):
            for start in (4, 0):
                counts = torch.bincount(z[starts == start], minlength=R).double()
                delta = torch.nn.functional.one_hot(torch.tensor(start), R).double()
                law = (1 - a) ** step * delta + (1 - (1 - a) ** step) * pi
                n = counts.sum()
                support = law > 0
                assert counts[~support].sum() == 0  # impossible states never visited
                chi2 = float(((counts[support] - n * law[support]) ** 2 / (n * law[support])).sum())
                # df <= 3; P(chi2_3 > 21.1) = 1e-4
                assert chi2 < 21.1, (step, start, chi2)
                assert 0.5 * float((counts / n - law).abs().sum()) < 0.02
    assert (1 - a) ** 40 < 1e-6  # so at step 40 the law is the posterior:
    assert not (~correct[z]).any()


# --------------------------------------------------------------------------------------
# Unbiasedness of the gradient on the toy policy (exact enumeration)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("control_variate", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_trice_gradient_is_the_marginal_likelihood_gradient(control_variate, seed):
    logits = random_logits(seed)
    exact = marginal_loglik_grad(logits, CORRECT)  # (1/3) Σ over the 3 solvable questions
    trice = expected_trice_grad(logits, CORRECT, control_variate=control_variate)
    torch.testing.assert_close(trice, exact, rtol=0, atol=TOL)
    assert exact.abs().max() > 0.05  # not a vacuous comparison
    assert torch.equal(trice[3], torch.zeros(R))  # the unsolvable question gets no gradient


def test_expected_gradient_with_every_question_solvable():
    logits = random_logits(7, 3)
    for cv in (True, False):
        torch.testing.assert_close(
            expected_trice_grad(logits, CORRECT[:3], control_variate=cv),
            marginal_loglik_grad(logits, CORRECT[:3]),
            rtol=0,
            atol=TOL,
        )


def test_unsolvable_example_contributes_nothing_in_any_state():
    z, zt, prob = enumerate_states(random_logits(0), CORRECT)
    for cv in (True, False):
        _, w_mem, w_prop = trice_step(z, zt, CORRECT, control_variate=cv)
        assert torch.equal(w_mem[:, 3], torch.zeros(len(z)))
        assert torch.equal(w_prop[:, 3], torch.zeros(len(z)))
        if not cv:  # the others are normalised by K = 3 valid examples, not by M = 4
            torch.testing.assert_close(w_mem[:, :3], torch.full((len(z), 3), 1 / 3))


def test_control_variate_term_has_mean_zero():
    logits = random_logits(4)
    g_cv, prob = per_state_grads(logits, CORRECT, control_variate=True)
    g_basic, _ = per_state_grads(logits, CORRECT, control_variate=False)
    cv_term = g_cv - g_basic
    # the term is -(1/K) Σ_m v_m β_m g(z̃_m) state by state (since c̃ g(z') = c̃ g(z̃))
    z, zt, _ = enumerate_states(logits, CORRECT)
    q = torch.arange(4)[None, :]
    mem_c, prop_c = CORRECT[q, z], CORRECT[q, zt]
    v = (mem_c | prop_c).double()
    beta = leave_one_out_beta(mem_c, prop_c).double()
    G = score_table(logits)
    direct = -((v * beta)[..., None] * G[q, zt]).sum(1) / v.sum(-1, keepdim=True)
    torch.testing.assert_close(cv_term, direct, rtol=0, atol=1e-6)
    assert cv_term.abs().max() > 0.1  # it is not zero state by state...
    torch.testing.assert_close((prob[:, None] * cv_term).sum(0), torch.zeros(4 * R, dtype=torch.float64), rtol=0, atol=TOL)


def test_per_state_vectors_agree_with_the_surrogate_loss():
    logits = random_logits(8)
    g, prob = per_state_grads(logits, CORRECT)
    torch.testing.assert_close((prob[:, None] * g).sum(0).reshape(4, R), expected_trice_grad(logits, CORRECT), rtol=0, atol=1e-9)


# Deliberately wrong estimators: each must be caught by the comparisons above.
def _weights_not_leave_one_out(mem, prop, control_variate=True):
    v, c = (mem | prop).float(), prop.float()
    k = v.sum(-1, keepdim=True)
    beta = c.sum(-1, keepdim=True) / k
    return v * (1 - beta * c) / k, -v * beta * (1 - c) / k


def _weights_sign_flipped(mem, prop, control_variate=True):
    w_mem, w_prop = trice_weights(mem, prop)
    return w_mem, -w_prop


def _weights_over_m(mem, prop, control_variate=True):
    w_mem, w_prop = trice_weights(mem, prop)
    k = (mem | prop).float().sum(-1, keepdim=True)
    return w_mem * k / mem.shape[-1], w_prop * k / mem.shape[-1]


def _weights_memory_not_masked(mem, prop, control_variate=True):
    # "forgets" the validity mask: examples whose memory is wrong still push it up
    w_mem, w_prop = trice_weights(mem, prop, control_variate=False)
    k = (mem | prop).float().sum(-1, keepdim=True)
    return torch.ones_like(w_mem) / k, w_prop


@pytest.mark.parametrize(
    "wrong", [_weights_not_leave_one_out, _weights_sign_flipped, _weights_over_m, _weights_memory_not_masked]
)
def test_the_unbiasedness_test_catches_wrong_estimators(wrong):
    logits = random_logits(0)
    exact = marginal_loglik_grad(logits, CORRECT)
    assert (expected_trice_grad(logits, CORRECT, weight_fn=wrong) - exact).abs().max() > 100 * TOL


# --------------------------------------------------------------------------------------
# Variance
# --------------------------------------------------------------------------------------


def test_control_variate_cuts_variance_at_high_acceptance():
    """Exact total variance (trace of the covariance) over all states, M = 3 solvable questions.

    The CV helps once the acceptance rate p(y|x) is high (§3.3). It is not a variance
    reducer everywhere: on this toy at p(y|x) <= 0.8 it *raises* the variance (incorrect,
    rare rationales have large scores and β ≈ acceptance over-corrects; with M = 3 the
    leave-one-out β is also noisy), so the test is at 0.95 and 0.99."""
    correct = CORRECT[:3]
    ratios = {}
    for accept in (0.95, 0.99):
        logits = logits_with_acceptance(0, correct, accept)
        g_cv, prob = per_state_grads(logits, correct, control_variate=True)
        g_basic, _ = per_state_grads(logits, correct, control_variate=False)
        m_cv, var_cv = mean_and_total_variance(g_cv, prob)
        m_basic, var_basic = mean_and_total_variance(g_basic, prob)
        torch.testing.assert_close(m_cv, m_basic, rtol=0, atol=TOL)  # same mean...
        ratios[accept] = float(var_cv / var_basic)
    assert ratios[0.95] < 0.5, ratios  # ...much smaller variance
    assert ratios[0.99] < 0.15, ratios  # and relatively smaller still as p(y|x) -> 1


# --------------------------------------------------------------------------------------
# Systematic resampling
# --------------------------------------------------------------------------------------


def _test_weights(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g, dtype=torch.float64) ** 3
    w[torch.rand(n, generator=g) < 0.3] = 0.0  # some zero weights, possibly the last ones
    w[int(torch.randint(n, (), generator=g))] = 0.5
    return w


def test_systematic_counts_are_within_one_of_expected():
    for seed in range(60):
        w = _test_weights(seed, 1 + seed % 9)
        for L in (1, 2, 5, 16, 64, 101):
            idx = systematic_resample(w, L, generator=torch.Generator().manual_seed(seed * 1000 + L))
            assert idx.shape == (L,) and idx.dtype == torch.long
            counts = torch.bincount(idx, minlength=len(w)).double()
            expected = L * w / w.sum()
            assert ((counts - expected).abs() < 1).all(), (seed, L, counts, expected)
            assert counts[w == 0].sum() == 0
            assert counts.sum() == L and (idx[1:] >= idx[:-1]).all()


def _exact_expected_counts(w: torch.Tensor, L: int) -> torch.Tensor:
    """E_u[counts]: counts are piecewise constant in u with breaks at frac(L · cdf_j)."""
    cdf = torch.cumsum(w, 0) / w.sum()
    breaks = torch.unique(torch.cat([torch.tensor([0.0, 1.0], dtype=torch.float64), torch.frac(L * cdf)]))
    expected = torch.zeros(len(w), dtype=torch.float64)
    for lo, hi in zip(breaks[:-1].tolist(), breaks[1:].tolist()):
        idx = _systematic_indices(w, L, (lo + hi) / 2)
        expected += (hi - lo) * torch.bincount(idx, minlength=len(w)).double()
    return expected


def test_systematic_inclusion_is_exactly_proportional_to_weights():
    for seed in range(20):
        w = _test_weights(seed, 2 + seed % 7)
        for L in (1, 3, 8, 33):
            torch.testing.assert_close(_exact_expected_counts(w, L), L * w / w.sum(), rtol=0, atol=1e-12)


def test_systematic_frequencies_over_seeds():
    w = torch.tensor([0.05, 0.0, 0.3, 0.15, 0.5])
    L, n = 3, 4000
    counts = torch.stack(
        [torch.bincount(systematic_resample(w, L, torch.Generator().manual_seed(s)), minlength=5) for s in range(n)]
    ).double()
    se = counts.std(0) / math.sqrt(n)
    expected = L * w.double() / w.sum()
    assert ((counts.mean(0) - expected).abs() <= 4.5 * se + 1e-12).all()
    # reproducible with a generator, different across seeds
    w2 = torch.ones(10)
    a = systematic_resample(w2, 3, torch.Generator().manual_seed(5))
    b = systematic_resample(w2, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    outs = {tuple(systematic_resample(w2, 3, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(outs) > 1


def test_systematic_round_off_guard():
    w = torch.tensor([0.1, 0.2, 0.7, 0.0, 0.0])
    for L in (1, 7, 64, 10_000):
        for u in (0.0, 1.0 - 1e-16, math.nextafter(1.0, 0.0)):
            idx = _systematic_indices(w, L, u)
            assert idx.max() <= 2 and idx.min() >= 0
    # float32 weights whose normalised cumulative sum need not reach exactly 1, with the
    # positions landing on the CDF's steps: still in range, still within one of L π
    w = torch.full((1000,), 0.1, dtype=torch.float32)
    for u in (0.0, 0.5, math.nextafter(1.0, 0.0)):
        idx = _systematic_indices(w, 1000, u)
        assert idx.max() == 999 and idx.min() == 0
        assert (torch.bincount(idx, minlength=1000) - 1).abs().max() <= 1


def test_systematic_input_validation():
    with pytest.raises(ValueError, match="non-negative"):
        systematic_resample(torch.tensor([0.5, -0.1]), 2)
    with pytest.raises(ValueError, match="finite"):
        systematic_resample(torch.tensor([0.5, float("nan")]), 2)
    with pytest.raises(ValueError, match="finite"):
        systematic_resample(torch.tensor([0.5, float("inf")]), 2)
    with pytest.raises(ValueError, match="positive"):
        systematic_resample(torch.zeros(3), 2)
    with pytest.raises(ValueError, match="1-D"):
        systematic_resample(torch.ones(2, 2), 2)
    with pytest.raises(ValueError, match="1-D"):
        systematic_resample(torch.ones(0), 2)
    with pytest.raises(ValueError, match="at least 1"):
        systematic_resample(torch.ones(3), 0)
    with pytest.raises(TypeError):
        systematic_resample(torch.ones(3), 2.5)


# --------------------------------------------------------------------------------------
# Candidates: full and subsampled estimators
# --------------------------------------------------------------------------------------


def _all_patterns(m: int):
    for code in range(4**m):
        bits = [(code >> i) & 1 for i in range(2 * m)]
        yield torch.tensor(bits[:m], dtype=torch.bool), torch.tensor(bits[m:], dtype=torch.bool)


def _dense(idx, coef, m):
    out = torch.zeros(2 * m, dtype=torch.float64)
    out.index_add_(0, idx, coef.double())
    return out


def test_full_candidates_are_the_nonzero_weights():
    m = 3
    for mem, prop in _all_patterns(m):
        for cv in (True, False):
            w_mem, w_prop = trice_weights(mem, prop, control_variate=cv)
            full = torch.cat([w_mem, w_prop]).double()
            for n in (None, 2 * m, 2 * m + 5):
                idx, coef = trice_candidates(mem, prop, control_variate=cv, num_samples=n)
                assert torch.equal(_dense(idx, coef, m), full)
                assert (coef != 0).all() and len(set(idx.tolist())) == len(idx)


def test_subsampled_hand_computed_case_is_deterministic():
    # the hand table: unnormalised w = [.5, 1, .5, 0 | 0, 1, 0, 0], Σw = 3, K = 3, W̄ = 1.
    # L = 6 => L π = [1, 2, 1, 0 | 0, 2, 0, 0] are integers, so the counts are fixed.
    mem = torch.tensor([True, True, False, False])
    prop = torch.tensor([True, False, True, False])
    for seed in range(20):
        idx, coef = trice_candidates(mem, prop, num_samples=6, generator=torch.Generator().manual_seed(seed))
        assert idx.tolist() == [0, 1, 1, 2, 5, 5]
        torch.testing.assert_close(coef, torch.tensor([1, 1, 1, 1, -1, -1]) / 6.0)
        torch.testing.assert_close(_dense(idx, coef, 4), torch.cat(trice_weights(mem, prop)).double())


def test_subsampled_mean_over_seeds_equals_full_estimator():
    m = 4
    cases = [
        (torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0])),
        (torch.tensor([1, 1, 1, 0]), torch.tensor([0, 1, 0, 0])),
        (torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 0])),
        (torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 0, 1])),
    ]
    n = 1000
    for mem, prop in cases:
        mem, prop = mem.bool(), prop.bool()
        full = torch.cat(trice_weights(mem, prop)).double()
        for L in (1, 5):
            draws = torch.stack(
                [
                    _dense(*trice_candidates(mem, prop, num_samples=L, generator=torch.Generator().manual_seed(s)), m)
                    for s in range(n)
                ]
            )
            se = draws.std(0) / math.sqrt(n)
            assert ((draws.mean(0) - full).abs() <= 4.5 * se + 1e-6).all(), (mem, prop, L, draws.mean(0), full)
            # each selected item carries the same magnitude W̄ / L; invalid examples never selected
            valid = (mem | prop).repeat(2)
            assert (draws[:, ~valid] == 0).all()


def test_subsampled_expectation_exactly_via_uniform_offset():
    """Exact E over u of the subsampled estimator, from the same ingredients as §3.4."""
    m = 3
    for mem, prop in _all_patterns(m):
        if not (mem | prop).any():
            continue
        full = torch.cat(trice_weights(mem, prop)).double()
        v = (mem | prop).double()
        beta = leave_one_out_beta(mem, prop).double()
        c = prop.double()
        w = torch.cat([v * (1 - beta * c), v * beta * (1 - c)]).clamp(min=1e-10)
        signs = torch.cat([v, -v])
        w_bar = w.sum() / v.sum()
        for L in (1, 2, 5):
            mean = signs * w_bar / L * _exact_expected_counts(w, L)
            torch.testing.assert_close(mean, full, rtol=0, atol=1e-7)
            idx, coef = trice_candidates(mem, prop, num_samples=L, generator=torch.Generator().manual_seed(0))
            assert len(idx) <= L
            torch.testing.assert_close(coef.abs(), torch.full_like(coef, float(w_bar) / L))


def test_subsampled_pipeline_on_toy_policy_is_unbiased():
    """The whole step as the algorithm runs it, by simulation: memory from the posterior,
    proposals from the prior, accept, subsample L=3 of 2M=8 candidates, autograd of the loss."""
    gen = torch.Generator().manual_seed(123)
    logits = random_logits(2)
    exact = marginal_loglik_grad(logits, CORRECT).flatten()
    prior = torch.softmax(logits, -1)
    G = score_table(logits)
    n, m = 4000, 4
    z = torch.stack(
        [
            torch.multinomial(posterior(logits[q], CORRECT[q]), n, replacement=True, generator=gen)
            if CORRECT[q].any()
            else torch.full((n,), IMPOSSIBLE_MEMORY)
            for q in range(m)
        ],
        -1,
    )
    zt = torch.stack([torch.multinomial(prior[q], n, replacement=True, generator=gen) for q in range(m)], -1)
    grads = torch.zeros(n, m * R, dtype=torch.float64)
    for i in range(n):
        mem_c, prop_c = CORRECT[torch.arange(m), z[i]], CORRECT[torch.arange(m), zt[i]]
        z_new = torch.where(accept_proposals(mem_c, prop_c), zt[i], z[i])
        idx, coef = trice_candidates(mem_c, prop_c, num_samples=3, generator=gen)
        question = idx % m
        rationale = torch.where(idx < m, z_new[question], zt[i][question])
        grads[i] = (coef.double()[:, None] * G[question, rationale]).sum(0)
        if i < 5:  # the loss route gives the same vector
            th = logits.clone().requires_grad_()
            logprobs = torch.log_softmax(th, -1)[question, rationale]
            (g,) = torch.autograd.grad(-trice_loss(logprobs, coef), th)
            torch.testing.assert_close(g.flatten(), grads[i], rtol=0, atol=1e-12)
    se = grads.std(0) / math.sqrt(n)
    assert ((grads.mean(0) - exact).abs() <= 4.5 * se + 1e-9).all()
    assert (grads[:, 3 * R :] == 0).all()  # the unsolvable question never gets a gradient


def test_candidates_validation_and_reproducibility():
    mem = torch.tensor([True, False, True])
    prop = torch.tensor([False, True, False])
    with pytest.raises(ValueError, match="one batch"):
        trice_candidates(mem[None], prop[None])
    with pytest.raises(ValueError, match="at least 1"):
        trice_candidates(mem, prop, num_samples=0)
    a = trice_candidates(mem, prop, num_samples=2, generator=torch.Generator().manual_seed(3))
    b = trice_candidates(mem, prop, num_samples=2, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_trice_loss():
    lp = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    coef = torch.tensor([0.5, -0.25, 1.0])
    loss = trice_loss(lp, coef)
    torch.testing.assert_close(loss, torch.tensor(0.5 - 0.5 + 3.0))
    loss.backward()
    torch.testing.assert_close(lp.grad, -coef)
    with pytest.raises(ValueError, match="same shape"):
        trice_loss(lp, coef[:2])
    assert trice_loss(torch.zeros(0), torch.zeros(0)) == 0
