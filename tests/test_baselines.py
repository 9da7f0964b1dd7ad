"""The baselines (algorithms/star.py, rft.py, grpo.py, prompt_tuning.py, cot_sft.py) on a
tiny random Llama over a character tokenizer and a few arithmetic examples.

Correctness of a random model's samples is almost always 0, so most tests replace
``task.score`` with a deterministic stand-in (a fixed pattern, or the parity of the sample's
characters) to exercise the code paths that depend on it.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch

from algorithms.cot_sft import CotSFT
from algorithms.grpo import GRPO, GrpoConfig, group_advantages
from algorithms.prompt_tuning import PromptTuning
from algorithms.rft import RejectionFineTuning, RftConfig, rft_coefficients
from algorithms.star import RestEM, RestEMConfig, Star, StarConfig, inner_steps_for
from envs.arithmetic import ArithmeticTask
from envs.base import Example, Task
from trice_rl.budget import Budget
from trice_rl.evaluation import EvalConfig
from trice_rl.policy import Samples
from trice_rl.runner import Runner, RunConfig

HINT_MARKER = "Answer: The answer is"  # in the hinted template, not in the CoT template
SMALL = dict(max_new_tokens=10, lr=1e-2)


def make_task(num_train: int = 4) -> ArithmeticTask:
    return ArithmeticTask(num_train=num_train, num_validation=0, num_test=3, min_steps=1, max_steps=2)


def parity_score(completions, targets):
    """A deterministic stand-in for correctness: about half of all texts are 'correct'."""
    return np.array([float(sum(map(ord, text)) % 2 == 0) for text in completions], dtype=np.float32)


def pattern_score(pattern):
    """A stand-in for correctness that returns ``pattern`` (flattened) on every call."""
    flat = np.asarray(pattern, dtype=np.float32).flatten()

    def score(completions, targets):
        assert len(completions) == len(flat)
        return flat.copy()

    return score


class Spy:
    """Records every prompt sampled, scored and trained on, and every sample drawn."""

    def __init__(self, policy):
        self.sampled_prompts: list[str] = []
        self.samples = []
        self.scored: list[tuple[str, list[int]]] = []
        self.trained: list[tuple[list[str], list, torch.Tensor]] = []
        sample, logprob, accumulate = policy.sample, policy.logprob, policy.accumulate_gradient

        def spy_sample(prompts, *args, **kwargs):
            out = sample(prompts, *args, **kwargs)
            self.sampled_prompts += list(prompts)
            self.samples.append((list(prompts), out))
            return out

        def spy_logprob(prompts, completions, *args, **kwargs):
            self.scored += list(zip(prompts, [list(policy.encode_completions([c])[0]) for c in completions]))
            return logprob(prompts, completions, *args, **kwargs)

        def spy_accumulate(prompts, completions, coefficients, *args, **kwargs):
            self.trained.append((list(prompts), list(completions), torch.as_tensor(coefficients).detach().clone()))
            return accumulate(prompts, completions, coefficients, *args, **kwargs)

        policy.sample, policy.logprob, policy.accumulate_gradient = spy_sample, spy_logprob, spy_accumulate


def params_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


# --------------------------------------------------------------------------------------
# STaR
# --------------------------------------------------------------------------------------


def test_star_trains_without_the_hint_and_rationalizes_failures(make_tiny_policy, monkeypatch):
    task = make_task(num_train=6)
    policy = make_tiny_policy(seed=0)
    spy = Spy(policy)

    # Un-hinted samples: only the first example of each chunk is correct. Hinted: all are.
    def score(completions, targets):
        last_prompts, _ = spy.samples[-1]
        hinted = [HINT_MARKER in p for p in last_prompts]
        return np.array([float(h or i == 0) for i, h in enumerate(hinted)], dtype=np.float32)

    monkeypatch.setattr(task, "score", score)
    algo = Star(policy, task, StarConfig(batch_size=3, initial_inner_steps=2, **SMALL), seed=0)
    metrics = [algo.step() for _ in range(2)]  # 2 sampling steps of 3 examples each
    assert algo.phase == "train" and len(algo.kept_index) == 6 and sum(algo.kept_rationalized) == 4
    assert algo.activity() == "fine-tuning 0/2"  # what a progress bar shows while no samples are drawn
    metrics += [algo.step() for _ in range(2)]  # the 2 inner steps of iteration 0
    assert algo.phase == "sample" and algo.iteration == 1 and algo.activity() is None

    # Sampling: per chunk 3 un-hinted prompts, then the hinted prompts of its 2 failures.
    assert [len(prompts) for prompts, _ in spy.samples] == [3, 2, 3, 2]
    for (plain, _), (hinted, _) in [(spy.samples[0], spy.samples[1]), (spy.samples[2], spy.samples[3])]:
        assert not any(HINT_MARKER in p for p in plain)
        assert all(HINT_MARKER in p for p in hinted)
        questions = [p.split("\n")[0] for p in plain]
        assert [p.split("\n")[0] for p in hinted] == questions[1:]
    assert metrics[1]["train_proposal_acc"] == pytest.approx(1 / 3)
    assert metrics[1]["kept_fraction"] == 1.0
    assert metrics[1]["rationalized_fraction"] == pytest.approx(4 / 6)
    assert metrics[1]["rationalization_acc"] == 1.0

    # Nothing scored or trained on ever has the hint in its context...
    assert spy.scored and spy.trained
    cot_prompts = {task.cot_prompt(e.question) for e in task.examples("train")}
    assert all(HINT_MARKER not in prompt and prompt in cot_prompts for prompt, _ in spy.scored)
    # ...yet rationales found with the hint are trained on, under the un-hinted prompt.
    hinted_pairs = {
        (task.cot_prompt(p.split("\n")[0].removeprefix("Question: ")), tuple(ids))
        for prompts, out in spy.samples
        for p, ids in zip(prompts, out.token_ids)
        if HINT_MARKER in p
    }
    assert hinted_pairs & {(prompt, tuple(ids)) for prompt, ids in spy.scored}
    assert [m.get("loss") is not None for m in metrics] == [False, False, True, True]


def test_star_inner_steps_grow_by_20_percent(make_tiny_policy):
    assert [inner_steps_for(t, 40, 1.2) for t in range(5)] == [40, 48, 58, 69, 83]
    assert [inner_steps_for(t, 5, 1.2) for t in range(4)] == [5, 6, 7, 9]
    assert inner_steps_for(3, 1, 0.5) == 1  # never fewer than one step
    assert [inner_steps_for(t, 40, 1.2, cap=60) for t in range(5)] == [40, 48, 58, 60, 60]
    capped = Star(make_tiny_policy(), make_task(), StarConfig(max_inner_steps=60, **SMALL))
    assert [capped.inner_steps(t) for t in (0, 3, 30)] == [40, 60, 60]
    with pytest.raises(ValueError, match="max_inner_steps"):
        StarConfig(max_inner_steps=0)


@pytest.mark.parametrize("restart", [True, False])
def test_star_restarts_from_base_parameters_each_iteration(make_tiny_policy, monkeypatch, restart):
    task = make_task(num_train=4)
    policy = make_tiny_policy(seed=0)
    base = policy.tunable_state_dict()
    monkeypatch.setattr(task, "score", lambda completions, targets: np.ones(len(completions), dtype=np.float32))
    config = StarConfig(batch_size=4, initial_inner_steps=2, inner_steps_growth=1.5, restart_from_base=restart, **SMALL)
    algo = Star(policy, task, config, seed=0)

    at_first_inner_step = []  # (iteration, params == base, optimizer state empty) per restart point
    accumulate = policy.accumulate_gradient

    def spy_accumulate(*args, **kwargs):
        if algo.inner_step == 0:
            at_first_inner_step.append((algo.iteration, params_equal(policy.tunable_state_dict(), base), len(algo.optimizer.state) == 0))
        return accumulate(*args, **kwargs)

    monkeypatch.setattr(policy, "accumulate_gradient", spy_accumulate)
    phases = []
    while algo.iteration < 3:
        phases.append((algo.iteration, algo.phase))
        algo.step()
    train_steps = [sum(1 for it, phase in phases if it == t and phase == "train") for t in range(3)]
    assert train_steps == [2, 3, 5]  # round(2 * 1.5^t), half up: 2, 3, 4.5 -> 5
    assert [it for it, _, _ in at_first_inner_step] == [0, 1, 2]
    if restart:
        assert all(equal and fresh for _, equal, fresh in at_first_inner_step)
    else:
        assert [equal for _, equal, _ in at_first_inner_step] == [True, False, False]
        assert [fresh for _, _, fresh in at_first_inner_step] == [True, False, False]
    assert not params_equal(policy.tunable_state_dict(), base)  # training did move them


def test_star_with_an_empty_kept_set_skips_fine_tuning(make_tiny_policy, monkeypatch):
    task = make_task(num_train=4)
    policy = make_tiny_policy(seed=0)
    monkeypatch.setattr(task, "score", lambda completions, targets: np.zeros(len(completions), dtype=np.float32))
    algo = Star(policy, task, StarConfig(batch_size=4, initial_inner_steps=2, **SMALL), seed=0)
    for _ in range(3):
        metrics = algo.step()
        assert metrics["kept_fraction"] == 0.0 and algo.phase == "sample"
    assert algo.iteration == 3 and policy.meter.optimizer_steps == 0
    assert policy.meter.samples == 3 * (4 + 4)  # un-hinted + hinted retries


# --------------------------------------------------------------------------------------
# Rejection fine-tuning
# --------------------------------------------------------------------------------------

RFT_PATTERN = [[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
RFT_EXPECTED = [[0.25, 0, 0.25, 0], [0, 0, 0, 0], [0.125] * 4]  # 1/#correct / #examples with any


def test_rft_coefficients():
    torch.testing.assert_close(rft_coefficients(torch.tensor(RFT_PATTERN, dtype=torch.bool)), torch.tensor(RFT_EXPECTED))
    assert rft_coefficients(torch.zeros(3, 4, dtype=torch.bool)).abs().sum() == 0
    assert float(rft_coefficients(torch.tensor([[0, 1], [0, 0]])).sum()) == 1.0


def test_rft_ignores_examples_without_a_correct_particle(make_tiny_policy, monkeypatch):
    task = make_task(num_train=3)
    policy = make_tiny_policy(seed=0)
    spy = Spy(policy)
    monkeypatch.setattr(task, "score", pattern_score(RFT_PATTERN))
    algo = RejectionFineTuning(policy, task, RftConfig(batch_size=3, particles=4, **SMALL), seed=0)
    metrics = algo.step()
    assert metrics["train_proposal_acc"] == pytest.approx(6 / 12)
    assert metrics["examples_with_correct"] == pytest.approx(2 / 3)

    [(prompts, out)] = spy.samples
    [(trained_prompts, completions, coefficients)] = spy.trained
    assert not any(HINT_MARKER in p for p in prompts + trained_prompts)
    # Every (prompt, particle) trained on, with its coefficient, against the expected table.
    got = {(p, tuple(c)): float(w) for p, c, w in zip(trained_prompts, completions, coefficients)}
    expected = {}
    for m, prompt in enumerate(prompts):
        for j in range(4):
            if RFT_EXPECTED[m][j]:
                expected[(prompt, tuple(out.token_ids[4 * m + j]))] = RFT_EXPECTED[m][j]
    assert got == pytest.approx(expected)
    assert prompts[1] not in trained_prompts  # the all-wrong example contributes nothing


def test_rest_em_keeps_capped_correct_samples_and_fine_tunes_from_base(make_tiny_policy, monkeypatch):
    task = make_task(num_train=4)
    policy = make_tiny_policy(seed=0)
    monkeypatch.setattr(task, "score", lambda completions, targets: np.ones(len(completions), dtype=np.float32))
    config = RestEMConfig(batch_size=4, samples_per_example=3, max_kept_per_example=2, initial_inner_steps=2, **SMALL)
    assert not config.rationalize and config.inner_steps_growth == 1.0 and config.restart_from_base
    algo = RestEM(policy, task, config, seed=0)
    algo.step()  # one sampling pass over the 4 examples, 3 samples each
    assert policy.meter.samples == 12  # no hinted retries
    counts = np.bincount(algo.kept_index, minlength=4)
    assert counts.max() <= 2 and counts.min() >= 1
    assert algo.phase == "train" and not any(algo.kept_rationalized)
    algo.step(), algo.step()
    assert algo.phase == "sample" and algo.iteration == 1
    assert algo.inner_steps(5) == 2  # a fixed number of inner steps per round


# --------------------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------------------

GRPO_PATTERN = [[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]]


def test_group_advantages_are_group_normalised():
    rewards = torch.tensor(GRPO_PATTERN, dtype=torch.float32)
    a = group_advantages(rewards, scale=True, eps=0.0)
    torch.testing.assert_close(a.mean(-1), torch.zeros(4))
    torch.testing.assert_close(a[[0, 3]].std(-1), torch.ones(2))
    assert torch.equal(a[1], torch.zeros(4)) and torch.equal(a[2], torch.zeros(4))
    torch.testing.assert_close(a[3], torch.tensor([0.75, -0.25, -0.25, -0.25]) / 0.5)
    unscaled = group_advantages(rewards, scale=False)
    torch.testing.assert_close(unscaled[3], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert torch.equal(group_advantages(torch.ones(1, 3), eps=0.0), torch.zeros(1, 3))  # no 0/0


def test_grpo_coefficients_and_zero_gradient_for_all_equal_groups(make_tiny_policy, monkeypatch):
    task = make_task(num_train=4)
    policy = make_tiny_policy(seed=0)
    spy = Spy(policy)
    monkeypatch.setattr(task, "score", pattern_score(GRPO_PATTERN))
    algo = GRPO(policy, task, GrpoConfig(batch_size=4, group_size=4, **SMALL), seed=0)
    metrics = algo.step()
    assert metrics["train_proposal_acc"] == pytest.approx(7 / 16)
    assert metrics["zero_advantage_groups"] == 0.5

    [(prompts, out)] = spy.samples
    [(trained_prompts, completions, coefficients)] = spy.trained
    advantages = group_advantages(torch.tensor(GRPO_PATTERN, dtype=torch.float32), eps=1e-4)
    expected = {}
    for m, prompt in enumerate(prompts):
        for j in range(4):
            if advantages[m, j] != 0:
                expected[(prompt, tuple(out.token_ids[4 * m + j]))] = float(advantages[m, j]) / 16
    got = {(p, tuple(c)): float(w) for p, c, w in zip(trained_prompts, completions, coefficients)}
    assert got == pytest.approx(expected)
    assert prompts[1] not in trained_prompts and prompts[2] not in trained_prompts


def test_grpo_length_normalisation_divides_by_the_token_count(make_tiny_policy):
    algo = GRPO(make_tiny_policy(), make_task(), GrpoConfig(batch_size=1, group_size=2, length_normalize=True, **SMALL))
    samples = Samples(texts=["a", "b"], token_ids=[[5, 6, 7, 8], [9, 10]], logprobs=torch.zeros(2), prompt_index=[0, 0], finished=[True, True])
    coefficients = algo.coefficients(samples, torch.tensor([[1.0, 0.0]]))
    a = 0.5 / (2**-0.5 + 1e-4)  # (1 - mean) / (unbiased std + eps)
    torch.testing.assert_close(coefficients, torch.tensor([a / 2 / 4, -a / 2 / 2]))


def test_grpo_kl_penalty_scores_against_the_base_policy_and_restores_parameters(make_tiny_policy, monkeypatch):
    task = make_task(num_train=4)
    policy = make_tiny_policy(seed=0)
    monkeypatch.setattr(task, "score", parity_score)
    algo = GRPO(policy, task, GrpoConfig(batch_size=2, group_size=3, kl_coef=0.5, **SMALL), seed=0)
    first = algo.step()
    assert abs(first["kl"]) < 1e-3  # the policy is still the reference
    before = policy.tunable_state_dict()
    prompts = algo.cot_prompts([0, 1])
    samples = policy.sample(prompts, n=1, max_new_tokens=6)
    reference = algo._reference_logprob(prompts, samples.token_ids)
    assert params_equal(policy.tunable_state_dict(), before)
    with torch.no_grad():
        current = policy.logprob(prompts, samples.token_ids)
    assert not torch.allclose(reference, current)  # the reference is the base, not the current model


# --------------------------------------------------------------------------------------
# Direct prompt tuning and CoT SFT
# --------------------------------------------------------------------------------------


def test_prompt_tuning_uses_the_direct_template_and_lowers_its_loss(make_tiny_policy):
    assert PromptTuning.prompt_kind == "direct" and PromptTuning.default_tune == "prompt"
    task = make_task(num_train=4)
    policy = make_tiny_policy(tune="prompt", seed=0)
    spy = Spy(policy)
    algo = PromptTuning(policy, task, PromptTuning.Config(batch_size=4, lr=0.05), seed=0)
    losses = [algo.step()["loss"] for _ in range(12)]
    assert losses[-1] < losses[0] - 0.5, losses
    eos = policy.tokenizer.eos_token_id
    expected = {
        (task.direct_prompt(e.question), tuple(policy.encode_completions([task.direct_completion(e.answer)])[0] + [eos]))
        for e in task.examples("train")
    }
    assert {(p, tuple(ids)) for p, ids in spy.scored} == expected
    # Each target is charged as one sample and its tokens as generated ones: 12 steps of 4
    # examples, every target token scored once.
    assert (policy.meter.samples, policy.meter.optimizer_steps) == (48, 12)
    assert policy.meter.tokens_generated == policy.meter.tokens_scored > 0


class NoRationaleTask(Task):
    name = "no-rationales"

    def load_split(self, split):
        return [Example("What is 1 + 1?", "2"), Example("What is 2 + 2?", "4", rationale="2 + 2 = 4. So the answer is 4.")]


def test_cot_sft_needs_gold_rationales(make_tiny_policy):
    with pytest.raises(ValueError, match="no-rationales"):
        CotSFT(make_tiny_policy(), NoRationaleTask())


def test_cot_sft_trains_on_gold_rationales_with_the_cot_template(make_tiny_policy):
    task = make_task(num_train=4)
    policy = make_tiny_policy(seed=0)
    spy = Spy(policy)
    algo = CotSFT(policy, task, CotSFT.Config(batch_size=4, lr=1e-2), seed=0)
    losses = [algo.step()["loss"] for _ in range(4)]
    assert losses[-1] < losses[0]
    eos = policy.tokenizer.eos_token_id
    expected = {
        (task.cot_prompt(e.question), tuple(policy.encode_completions([e.rationale])[0] + [eos])) for e in task.examples("train")
    }
    assert {(p, tuple(ids)) for p, ids in spy.scored} == expected


# --------------------------------------------------------------------------------------
# Every algorithm: checkpoints, estimate_gradient, the runner
# --------------------------------------------------------------------------------------

VARIANTS = {
    "star": (Star, StarConfig(batch_size=2, initial_inner_steps=2, **SMALL)),
    "rft": (RejectionFineTuning, RftConfig(batch_size=2, particles=3, **SMALL)),
    "rest-em": (RestEM, RestEMConfig(batch_size=2, samples_per_example=3, max_kept_per_example=2, initial_inner_steps=2, **SMALL)),
    "grpo": (GRPO, GrpoConfig(batch_size=2, group_size=3, kl_coef=0.1, **SMALL)),
    "prompt-tuning": (PromptTuning, PromptTuning.Config(batch_size=2, lr=1e-2)),
    "cot-sft": (CotSFT, CotSFT.Config(batch_size=2, lr=1e-2)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_resumed_run_continues_identically(make_tiny_policy, monkeypatch, variant):
    cls, config = VARIANTS[variant]
    task = make_task(num_train=4)
    monkeypatch.setattr(task, "score", parity_score)
    policy = make_tiny_policy(seed=0)
    algo = cls(policy, task, config, seed=0)
    for _ in range(3):
        algo.step()
    buffer = io.BytesIO()
    torch.save({"policy": policy.tunable_state_dict(), "rng": policy.rng_state(), "algorithm": algo.state_dict()}, buffer)
    expected = [algo.step() for _ in range(4)]

    # A fresh policy (different weights and generator) restored from the checkpoint.
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    resumed_policy = make_tiny_policy(seed=1)
    resumed = cls(resumed_policy, task, config, seed=0)
    resumed_policy.load_tunable_state_dict(state["policy"])
    resumed_policy.set_rng_state(state["rng"])
    resumed.load_state_dict(state["algorithm"])
    assert [resumed.step() for _ in range(4)] == expected
    assert params_equal(resumed_policy.tunable_state_dict(), policy.tunable_state_dict())


@pytest.mark.parametrize("variant", ["rft", "grpo"])
def test_estimate_gradient_changes_no_state(make_tiny_policy, monkeypatch, variant):
    cls, config = VARIANTS[variant]
    task = make_task(num_train=4)
    monkeypatch.setattr(task, "score", parity_score)
    policy = make_tiny_policy(seed=0)
    algo = cls(policy, task, config, seed=0)
    algo.step()
    params, stream, optimizer_steps = policy.tunable_state_dict(), algo.stream.state_dict(), policy.meter.optimizer_steps
    gradient = algo.estimate_gradient([0, 1, 2])
    assert gradient.shape == (policy.num_trainable_parameters(),)
    assert params_equal(policy.tunable_state_dict(), params) and algo.stream.state_dict() == stream
    assert policy.meter.optimizer_steps == optimizer_steps
    assert all(p.grad is None for p in policy.trainable_parameters())


def test_star_has_no_stochastic_gradient_estimate(make_tiny_policy):
    algo = Star(make_tiny_policy(), make_task(), StarConfig(**SMALL))
    assert algo.estimate_gradient([0, 1]) is None


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_runs_end_to_end_through_the_runner(make_tiny_policy, monkeypatch, tmp_path, variant):
    cls, config = VARIANTS[variant]
    task = make_task(num_train=4)
    monkeypatch.setattr(task, "score", parity_score)
    policy = make_tiny_policy(tune=getattr(cls, "default_tune", None) or "full", seed=0)
    algo = cls(policy, task, config, seed=0)
    # Algorithms that draw no samples need a budget they do spend.
    budget = Budget(samples=20)
    run_config = RunConfig(
        budget=budget,
        eval_every=10,
        eval=EvalConfig(max_examples=2, majority_k=2, max_new_tokens=6),
        variance_every=2 if variant in ("rft", "grpo") else 0,
        variance_draws=2,
        variance_batch=2,
    )
    result = Runner(algo, run_config, tmp_path, progress=False).run()
    assert 0.0 <= result["eval_acc_greedy"] <= 1.0
    with open(tmp_path / f"{cls.name}-seed0.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(algo.metric_names) <= set(rows[0])
    steps = rows[1:-1]
    assert steps and all(row["algo"] == cls.name for row in rows)
    # The budget is never overshot, and missed by less than one example's samples.
    per_example = {"star": 2, "rft": 3, "rest-em": 3, "grpo": 3}.get(variant, 1)
    assert 20 - per_example < policy.meter.samples <= 20
    if cls in (PromptTuning, CotSFT):  # their training targets are charged as samples, and
        # their tokens as generated ones (so a tokens budget ends too)
        assert policy.meter.tokens_generated == policy.meter.tokens_scored > 0
    else:
        assert any(row["train_proposal_acc"] != "" for row in steps)
    if variant in ("rft", "grpo"):
        assert any(row["grad_variance"] != "" and math.isfinite(float(row["grad_variance"])) for row in steps)
