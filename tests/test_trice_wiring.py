"""The TRICE classes' wiring, on an enumerable toy policy: the gradient that ``Trice`` and
``TriceK`` actually accumulate is Σ_j coefficient_j ∇log p(r_j | un-hinted x_j), with r_j
the post-update memory entry or a proposal, and proposals are drawn from the un-hinted
prompt; a lazy memory is filled on first visits only.

The toy policy: question q's un-hinted prompt has logits θ[q] over R rationales, its hinted
prompt θ[Q + q] (so scoring under the wrong prompt moves the wrong row); sampling replays a
script of rationales per question, so every state of the chain is chosen by the test.
"""

from __future__ import annotations

import pytest
import torch

from algorithms.trice import Trice, TriceConfig, TriceK, TriceKConfig, multi_proposal_weights, trice_weights
from envs.base import Example, Task
from trice_rl.budget import BudgetMeter
from trice_rl.policy import Samples

R = 6
CORRECT = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
Q = CORRECT.shape[0]


class ToyTask(Task):
    """Question "q<i>", answer "<i>"; completion "r<j>" is correct iff CORRECT[i, j]."""

    name = "toy"
    splits = ("train",)

    def load_split(self, split):
        return [Example(question=f"q{i}", answer=str(i)) for i in range(Q)]

    def score(self, completions, targets):
        return torch.tensor([bool(CORRECT[int(t), int(c[1:])]) for c, t in zip(completions, targets)]).numpy()


class ToyPolicy:
    """Just what the algorithm asks of a Policy, over the logits table θ (2Q, R)."""

    def __init__(self, script: dict[int, list[int]], hinted_script: dict[int, list[int]] | None = None):
        self.theta = torch.nn.Parameter(torch.randn(2 * Q, R, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        self.meter = BudgetMeter()
        self.generator = torch.Generator().manual_seed(0)
        self.eos_token_ids = []
        self.script = {q: list(r) for q, r in script.items()}
        self.hinted_script = {q: list(r) for q, r in (hinted_script or {}).items()}
        self.sampled_prompts: list[str] = []
        self.gradients: list[torch.Tensor] = []

    @staticmethod
    def row(prompt: str) -> int:
        question = int(prompt.split("Question: q")[1].split("\n")[0])
        return question + Q if "The answer is" in prompt else question

    def trainable_parameters(self):
        return [self.theta]

    def make_optimizer(self, lr, weight_decay=0.0):
        return torch.optim.SGD([self.theta], lr=lr)

    def sample(self, prompts, n=1, **_):
        self.sampled_prompts += list(prompts)
        ids = []
        for prompt in prompts:
            row = self.row(prompt)
            script = self.hinted_script if row >= Q else self.script
            ids += [[script[row % Q].pop(0)] for _ in range(n)]
        self.meter.add_samples(len(ids), len(ids))
        return Samples([f"r{i[0]}" for i in ids], ids, torch.zeros(len(ids)), [i for i in range(len(prompts)) for _ in range(n)], [True] * len(ids))

    def accumulate_gradient(self, prompts, completions, coefficients):
        rows = torch.tensor([self.row(p) for p in prompts], dtype=torch.long)
        tokens = torch.tensor([c[0] for c in completions], dtype=torch.long)
        logprobs = torch.log_softmax(self.theta[rows], -1).gather(-1, tokens[:, None]).squeeze(-1)
        loss = -(torch.as_tensor(coefficients, dtype=torch.float64) * logprobs).sum()
        loss.backward()
        return float(loss.detach())

    def optimizer_step(self, optimizer, max_grad_norm=None):
        self.gradients.append(self.theta.grad.detach().clone())
        optimizer.step()
        optimizer.zero_grad()
        self.meter.add_optimizer_step()
        return 0.0


def score_gradient(theta: torch.Tensor, question: int, rationale: int) -> torch.Tensor:
    """∇_θ log p(rationale | un-hinted question), closed form: onehot − softmax in row q."""
    grad = torch.zeros_like(theta)
    grad[question] = -torch.softmax(theta[question].detach(), -1)
    grad[question, rationale] += 1
    return grad


def run_one_step(algorithm_class, config, script, hinted_script):
    policy = ToyPolicy(script, hinted_script)
    algorithm = algorithm_class(policy, ToyTask(), config, seed=0)
    algorithm.setup()
    theta = policy.theta.detach().clone()
    setup_prompts = len(policy.sampled_prompts)
    algorithm.step()
    return algorithm, policy, theta, policy.sampled_prompts[setup_prompts:]


# Memory from the hinted init: q0 correct (0), q1 correct (4), q2 incorrect (1), q3 incorrect.
INITIAL = {0: [0], 1: [4], 2: [1], 3: [2]}


def hinted_script(proposals):
    """The initial memory, then the proposals again: a run that wrongly samples its
    proposals from the hinted prompt draws the same rationales, and must still be caught."""
    return {q: INITIAL[q] + proposals[q] for q in INITIAL}


def test_trice_accumulates_its_estimator_on_the_post_update_memory_and_unhinted_prompts():
    # Proposals: q0 correct and different from its correct memory (3 replaces 0), q1 wrong,
    # q2 correct (replaces a wrong memory), q3 wrong.
    proposals = {0: [3], 1: [0], 2: [5], 3: [1]}
    algorithm, policy, theta, step_prompts = run_one_step(Trice, TriceConfig(batch_size=Q, lr=0.1), proposals, hinted_script(proposals))
    assert all(ToyPolicy.row(p) < Q for p in step_prompts)  # proposals from the un-hinted prompt
    order = [ToyPolicy.row(p) for p in step_prompts]  # the batch's example order
    memory_before = {q: INITIAL[q][0] for q in range(Q)}
    proposal = {q: proposals[q][0] for q in range(Q)}
    memory_correct = torch.tensor([bool(CORRECT[q, memory_before[q]]) for q in order])
    proposal_correct = torch.tensor([bool(CORRECT[q, proposal[q]]) for q in order])
    w_mem, w_prop = trice_weights(memory_correct, proposal_correct)
    expected = torch.zeros_like(theta)
    for m, q in enumerate(order):
        after = proposal[q] if proposal_correct[m] else memory_before[q]  # the post-update entry
        expected += float(w_mem[m]) * score_gradient(theta, q, after) + float(w_prop[m]) * score_gradient(theta, q, proposal[q])
    torch.testing.assert_close(policy.gradients[0], -expected)  # the loss is minus the estimate
    assert algorithm.memory_rationale(0) == [3] and algorithm.memory_rationale(2) == [5]


def test_trice_k_accumulates_its_estimator():
    proposals = {0: [3, 1, 0], 1: [0, 5, 3], 2: [2, 5, 5], 3: [1, 0, 4]}
    algorithm, policy, theta, step_prompts = run_one_step(TriceK, TriceKConfig(batch_size=Q, lr=0.1, num_proposals=3), proposals, INITIAL)
    assert all(ToyPolicy.row(p) < Q for p in step_prompts)
    order = [ToyPolicy.row(p) for p in step_prompts]
    memory_correct = torch.tensor([bool(CORRECT[q, INITIAL[q][0]]) for q in order])
    proposal_correct = torch.tensor([[bool(CORRECT[q, r]) for r in proposals[q]] for q in order])
    w_mem, w_prop = multi_proposal_weights(memory_correct, proposal_correct)
    expected = torch.zeros_like(theta)
    for m, q in enumerate(order):
        expected += float(w_mem[m]) * score_gradient(theta, q, INITIAL[q][0])
        for i, r in enumerate(proposals[q]):
            expected += float(w_prop[m, i]) * score_gradient(theta, q, r)
    torch.testing.assert_close(policy.gradients[0], -expected)
    # q0's correct proposals are 3 and 0: the memory holds one of them; q1, q3 kept theirs.
    assert algorithm.memory_rationale(0) in ([3], [0]) and algorithm.memory_rationale(1) == [4]
    assert algorithm.memory_rationale(2) == [5] and algorithm.memory_rationale(3) == [2]


def test_trice_k_with_one_proposal_takes_trice_s_step():
    proposals = {0: [3], 1: [0], 2: [5], 3: [1]}
    gradients = []
    for cls, config in ((Trice, TriceConfig(batch_size=Q)), (TriceK, TriceKConfig(batch_size=Q, num_proposals=1))):
        gradients.append(run_one_step(cls, config, {q: list(r) for q, r in proposals.items()}, INITIAL)[1].gradients[0])
    torch.testing.assert_close(gradients[0], gradients[1])


@pytest.mark.parametrize("hinted_init", [True, False])
def test_the_log_says_how_many_correct_entries_are_still_hinted_samples(hinted_init):
    """Up front every entry is an initial sample (hinted or not, as configured); an accepted
    proposal replaces it and is not hinted."""
    # Initial samples: q0's and q1's correct; then q0's proposal is correct, the others' not.
    if hinted_init:
        policy = ToyPolicy({0: [3], 1: [0], 2: [1], 3: [1]}, {0: [3], 1: [4], 2: [0], 3: [2]})
    else:
        policy = ToyPolicy({0: [3, 3], 1: [4, 0], 2: [0, 1], 3: [2, 1]})
    algorithm = Trice(policy, ToyTask(), TriceConfig(batch_size=Q, hinted_init=hinted_init), seed=0)
    assert algorithm.setup() == {"memory_acc": 0.5, "memory_hinted": 1.0 if hinted_init else 0.0}
    metrics = algorithm.step()
    assert algorithm.memory_hinted.tolist() == [False, hinted_init, hinted_init, hinted_init]
    assert metrics["memory_hinted"] == (0.5 if hinted_init else 0.0)


@pytest.mark.parametrize("cls,config", [(Trice, TriceConfig), (TriceK, TriceKConfig)])
def test_lazy_memory_is_filled_on_first_visits_with_a_hint_only_where_needed(cls, config):
    k = 2 if cls is TriceK else 1
    # q0's proposal is correct (fills its memory), the others' are not: they get a hinted sample.
    proposals = {0: [3] * k, 1: [0] * k, 2: [1] * k, 3: [1] * k}
    hinted = {1: [4], 2: [0], 3: [2]}
    policy = ToyPolicy(proposals, hinted)
    algorithm = cls(policy, ToyTask(), config(batch_size=Q, memory_init="lazy", **({"num_proposals": k} if k > 1 else {})), seed=0)
    assert algorithm.setup()["memory_acc"] == 0.0 and policy.meter.samples == 0  # nothing up front
    metrics = algorithm.step()
    hinted_rows = [ToyPolicy.row(p) - Q for p in policy.sampled_prompts if ToyPolicy.row(p) >= Q]
    assert sorted(hinted_rows) == [1, 2, 3]
    assert policy.meter.samples == k * Q + 3
    assert [algorithm.memory_rationale(q) for q in range(Q)] == [[3], [4], [0], [2]]
    assert algorithm.memory_correct.tolist() == [True, True, False, False]
    # q0's entry is its own proposal; q1's correct entry is still its hinted sample.
    assert algorithm.memory_hinted.tolist() == [False, True, True, True] and metrics["memory_hinted"] == 0.5
    # The gradient used the hinted samples as pre-update memory, scored un-hinted.
    assert policy.gradients[0][Q:].abs().sum() == 0


ORIGINAL_CANDIDATES = Trice._candidates


def memory_before_update(self, visit, generator):
    """Mutation: the memory weights paired with the entries before the MH update."""
    visit.updated = [self.memory_rationale(i) for i in visit.indices]
    return ORIGINAL_CANDIDATES(self, visit, generator)


def hinted_proposals(self, indices):
    """Mutation: proposals drawn (and scored) under the hinted prompt."""
    return self.hinted_prompts(indices)


@pytest.mark.parametrize("mutation", ["memory_before_update", "hinted_proposals"])
def test_the_wiring_test_catches_realistic_mistakes(mutation, monkeypatch):
    if mutation == "memory_before_update":
        monkeypatch.setattr(Trice, "_candidates", memory_before_update)
    else:
        monkeypatch.setattr(Trice, "cot_prompts", hinted_proposals)
    with pytest.raises(AssertionError):
        test_trice_accumulates_its_estimator_on_the_post_update_memory_and_unhinted_prompts()


@pytest.mark.parametrize("cls,config", [(Trice, TriceConfig), (TriceK, TriceKConfig)])
def test_memory_max_reuse_forgets_an_entry_after_it_was_retrained_on_that_many_times(cls, config):
    """q1's correct initial entry is retrained on at the first visit (its proposal is wrong),
    then forgotten at the second: that visit's estimate treats it as incorrect."""
    proposals = {0: [3, 0], 1: [0, 5], 2: [5, 1], 3: [1, 0]}  # per visit; q1 wrong twice
    policy = ToyPolicy(proposals, INITIAL)
    extra = {"num_proposals": 1} if cls is TriceK else {}
    algorithm = cls(policy, ToyTask(), config(batch_size=Q, lr=0.1, memory_max_reuse=1, **extra), seed=0)
    algorithm.setup()
    first = algorithm.step()
    assert algorithm.memory_reuses.tolist() == [0, 1, 0, 0] and first["memory_acc"] == 0.75
    theta = policy.theta.detach().clone()
    second = algorithm.step()
    assert algorithm.memory_correct.tolist() == [True, False, True, False] and second["memory_acc"] == 0.5
    order = [ToyPolicy.row(p) for p in policy.sampled_prompts[-Q:]]
    memory_correct = torch.tensor([q in (0, 2) for q in order])  # q1's entry no longer counts
    proposal_correct = torch.tensor([bool(CORRECT[q, proposals[q][1]]) for q in order])
    w_mem, w_prop = trice_weights(memory_correct, proposal_correct)
    entry = {0: 0, 1: 4, 2: 5, 3: 2}  # the entries after the first visit
    expected = torch.zeros_like(theta)
    for m, q in enumerate(order):
        after = proposals[q][1] if proposal_correct[m] else entry[q]
        expected += float(w_mem[m]) * score_gradient(theta, q, after) + float(w_prop[m]) * score_gradient(theta, q, proposals[q][1])
    torch.testing.assert_close(policy.gradients[1], -expected)


def test_memory_max_reuse_zero_without_the_control_variate_is_rejection_sampling_with_one_particle():
    proposals = {0: [3], 1: [0], 2: [5], 3: [1]}  # q0's and q2's proposals are correct
    config = TriceConfig(batch_size=Q, memory_max_reuse=0, control_variate=False)
    algorithm, policy, theta, step_prompts = run_one_step(Trice, config, proposals, INITIAL)
    grad = (score_gradient(theta, 0, 3) + score_gradient(theta, 2, 5)) / 2  # the mean over fresh correct proposals
    torch.testing.assert_close(policy.gradients[0], -grad)
    assert algorithm.memory_correct.tolist() == [True, False, True, False]  # q1 forgotten, q0 and q2 replaced


def test_memory_max_reuse_zero_with_the_control_variate_is_refused_where_it_cancels_every_weight():
    # With one proposal and no memory every valid example has c̃ = 1, so β = 1 and w = 0 (K > 1).
    w_mem, w_prop = trice_weights(torch.zeros(3, dtype=torch.bool), torch.tensor([True, True, False]))
    assert (w_mem == 0).all() and (w_prop == 0).all()
    with pytest.raises(ValueError, match="memory_max_reuse=0 with the control variate"):
        TriceConfig(memory_max_reuse=0)
    TriceConfig(memory_max_reuse=0, control_variate=False)
    TriceKConfig(memory_max_reuse=0, num_proposals=4)  # β is the others' acceptance rate: not 1
