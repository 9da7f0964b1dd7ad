"""Fair accounting: training FLOPs by the standard count, every budget kind ends for every
algorithm, no overshoot, STaR trains on what it paid for, a run's clock is its own, batches
hold distinct examples, and the paper's cosine schedule."""

import math
import signal

import numpy as np
import pytest
import torch

from algorithms import ALGORITHM_NAMES, get_algorithm
from algorithms.star import Star, StarConfig
from trice_rl import budget as budget_module
from trice_rl import runner as runner_module
from trice_rl.algorithm import MinibatchStream, cosine_factor
from trice_rl.budget import Budget, BudgetMeter
from trice_rl.evaluation import EvalConfig, evaluate
from trice_rl.runner import Runner, RunConfig

from .conftest import CoinTask


def non_embedding_parameters(model) -> int:
    """N of the standard count, by hand: every weight but the (tied) token embedding."""
    return sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name and "lm_head" not in name)


# ---------------------------------------------------------------------- FLOPs
def test_sampling_and_scoring_are_charged_2n_and_back_propagation_6n(make_tiny_policy):
    policy = make_tiny_policy()
    n = non_embedding_parameters(policy.model)
    assert (policy.flop_costs.forward, policy.flop_costs.backprop) == (2 * n, 6 * n)
    prompts = ["Question: 1+1\nAnswer:", "Q: 2"]
    prompt_tokens = sum(len(ids) for ids in policy.encode_prompts(prompts))

    samples = policy.sample(prompts, n=3, max_new_tokens=5, seed=0)
    assert policy.meter.flops == 2 * n * (3 * prompt_tokens + samples.num_tokens)

    before = policy.meter.flops
    completions = [[5, 6, 7], [8]]
    with torch.no_grad():
        policy.logprob(prompts, completions)
    scored = prompt_tokens + 4
    assert policy.meter.flops - before == 2 * n * scored

    before = policy.meter.flops
    policy.accumulate_gradient(prompts, completions, [1.0, 1.0])
    assert policy.meter.flops - before == 6 * n * scored

    before = policy.meter.flops
    with policy.meter.paused():  # evaluation is not charged
        policy.greedy(prompts, max_new_tokens=4)
    assert policy.meter.flops == before


def test_lora_and_soft_prompt_charge_their_tunable_paths(make_tiny_policy):
    full = make_tiny_policy()
    n = non_embedding_parameters(full.model)

    lora = make_tiny_policy(tune="lora")
    adapters = sum(p.numel() for p in lora.trainable_parameters())
    assert adapters > 0
    # forward through base and adapters; activation gradients through both; weight
    # gradients for the adapters only
    assert lora.flop_costs.forward == 2 * (n + adapters)
    assert lora.flop_costs.backprop == 4 * (n + adapters) + 2 * adapters

    prompt = make_tiny_policy(tune="prompt")
    assert (prompt.flop_costs.forward, prompt.flop_costs.backprop) == (2 * n, 4 * n)
    virtual = prompt.soft_prompt.shape[0]
    prompt.accumulate_gradient(["Q: 2"], [[5, 6]], [1.0])
    assert prompt.meter.flops == 4 * n * (len(prompt.encode_prompts(["Q: 2"])[0]) + 2 + virtual)


# --------------------------------------------------------------- budget kinds
@pytest.fixture
def deadline():
    """Fail a test that runs for more than a minute instead of hanging the suite."""

    def expire(*_):
        raise TimeoutError("the run did not stop: its budget never ends")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


BUDGET_KINDS = {
    "samples": Budget(samples=24),
    "tokens_generated": Budget(tokens_generated=120),
    "tokens_scored": Budget(tokens_scored=200),
    "optimizer_steps": Budget(optimizer_steps=3),
    "seconds": Budget(seconds=2.0),
    "flops": Budget(flops=3e7),
}


@pytest.mark.parametrize("kind", sorted(BUDGET_KINDS))
@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_every_budget_kind_ends_for_every_algorithm(name, kind, make_tiny_policy, tmp_path, deadline):
    cls = get_algorithm(name)
    policy = make_tiny_policy(tune=cls.default_tune or "full")
    config = cls.Config(batch_size=4, max_new_tokens=6, lr=1e-2, **({"initial_inner_steps": 2} if cls is Star else {}))
    algorithm = cls(policy, CoinTask(), config, seed=0)
    run = RunConfig(budget=BUDGET_KINDS[kind], eval_every=10**9, eval=EvalConfig(max_examples=2, majority_k=0, max_new_tokens=4))
    result = Runner(algorithm, run, tmp_path, progress=False).run()
    used = {"samples": "samples_drawn", "optimizer_steps": "grad_steps", "seconds": "wall_seconds", "flops": "train_flops"}.get(kind, kind)
    assert result[used] >= 0.5 * getattr(BUDGET_KINDS[kind], kind)  # it spent the budget's kind, then stopped


def test_no_algorithm_overshoots_the_smoke_budget(make_tiny_policy, tmp_path):
    """The smoke preset's shape: 96 samples, batch 8; grpo's 8 x 8 groups once drew 128."""
    from algorithms.grpo import GrpoConfig

    run = RunConfig(budget=Budget(samples=96), eval_every=10**9, eval=EvalConfig(max_examples=2, majority_k=0, max_new_tokens=4))
    algorithm = get_algorithm("grpo")(make_tiny_policy(), CoinTask(), GrpoConfig(batch_size=8, group_size=8, max_new_tokens=6), seed=0)
    assert Runner(algorithm, run, tmp_path, progress=False).run()["samples_drawn"] == 96


# ------------------------------------------------------------------- STaR
def test_star_trains_on_the_kept_set_when_the_samples_budget_ends_mid_iteration(make_tiny_policy, tmp_path):
    """8 samples cannot finish STaR's first sampling pass over 12 examples: it must still
    fine-tune on what it kept, not end on the base model with its samples thrown away."""
    config = StarConfig(batch_size=2, max_new_tokens=6, lr=1e-2, initial_inner_steps=3)
    algorithm = Star(make_tiny_policy(), CoinTask(), config, seed=0)
    run = RunConfig(budget=Budget(samples=8), eval_every=10**9, eval=EvalConfig(max_examples=2, majority_k=0, max_new_tokens=4))
    result = Runner(algorithm, run, tmp_path, progress=False).run()
    assert result["samples_drawn"] <= 8
    assert result["grad_steps"] == 3  # the whole fine-tuning of the (partial) iteration


def test_star_inner_steps_are_capped_by_default():
    assert StarConfig().max_inner_steps is not None
    star = StarConfig()
    from algorithms.star import inner_steps_for

    steps = [inner_steps_for(t, star.initial_inner_steps, star.inner_steps_growth, star.max_inner_steps) for t in range(60)]
    assert max(steps) == star.max_inner_steps and sum(steps) < 60 * star.max_inner_steps


# ------------------------------------------------------------------- clock
class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


def test_wall_seconds_counts_the_run_not_a_build_before_it(make_tiny_policy, tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget_module, "time", clock)
    meter = BudgetMeter()  # compare.py makes the meter, then the policy (building the model)
    clock.now += 1980.0  # the built-in model's first build
    policy = make_tiny_policy(meter=meter)
    algorithm = get_algorithm("trice")(policy, CoinTask(), get_algorithm("trice").Config(batch_size=4, max_new_tokens=6), seed=0)
    run = RunConfig(budget=Budget(samples=24), eval_every=10**9, eval=EvalConfig(max_examples=2, majority_k=0, max_new_tokens=4))
    assert Runner(algorithm, run, tmp_path, progress=False).run()["wall_seconds"] == 0.0  # the clock stood still


def test_the_result_says_how_long_held_out_evaluation_took_apart_from_training(make_tiny_policy, tmp_path, monkeypatch):
    """Each greedy decode takes 7 s on a clock that stands still otherwise: the run's
    ``eval_seconds`` counts every evaluation's (step 0, the eval_every ones, the final test
    and the final validation), and ``wall_seconds`` none of them."""
    clock = FakeClock()
    monkeypatch.setattr(budget_module, "time", clock)
    monkeypatch.setattr(runner_module, "time", clock)
    policy = make_tiny_policy()
    greedy, decodes, splits = policy.greedy, [], []

    def slow_greedy(*args, **kwargs):
        decodes.append(1)
        clock.now += 7.0
        return greedy(*args, **kwargs)

    def recorded_evaluate(*args, **kwargs):
        splits.append(args[2].split)
        return evaluate(*args, **kwargs)

    policy.greedy = slow_greedy
    monkeypatch.setattr(runner_module, "evaluate", recorded_evaluate)
    algorithm = get_algorithm("trice")(policy, CoinTask(), get_algorithm("trice").Config(batch_size=4, max_new_tokens=6), seed=0)
    small = EvalConfig(max_examples=2, majority_k=0, max_new_tokens=4)
    run = RunConfig(budget=Budget(samples=24), eval_every=8, eval=small, final_validation=EvalConfig(**{**small.__dict__, "split": "train"}))
    result = Runner(algorithm, run, tmp_path, progress=False).run()
    assert splits.count("train") == 1 and len(splits) >= 4
    assert result["eval_seconds"] == 7.0 * len(decodes) > 0
    assert result["wall_seconds"] == 0.0


# ------------------------------------------------------------------ batches
@pytest.mark.parametrize("num_examples,batch_size", [(150, 32), (10, 4), (7, 7), (5, 8)])
def test_batches_hold_distinct_examples_across_epoch_boundaries(num_examples, batch_size):
    stream = MinibatchStream(num_examples, seed=0)
    visits = []
    for _ in range(60):
        batch = stream.next(batch_size)
        assert len(batch) == len(set(batch)) == min(batch_size, num_examples)
        visits += batch
    # Every epoch still visits every example exactly once.
    for start in range(0, len(visits) - num_examples + 1, num_examples):
        assert sorted(visits[start : start + num_examples]) == list(range(num_examples))


def test_a_restored_stream_continues_identically():
    stream = MinibatchStream(150, seed=0)
    for _ in range(5):  # past the first epoch boundary (a reordered epoch)
        stream.next(32)
    restored = MinibatchStream(150, seed=0)
    restored.load_state_dict(stream.state_dict())
    assert [stream.next(32) for _ in range(10)] == [restored.next(32) for _ in range(10)]


# ---------------------------------------------------------------- schedule
def test_cosine_schedule_decays_to_its_floor_without_clipping(make_tiny_policy):
    cls = get_algorithm("cot-sft")
    config = cls.Config(batch_size=4, lr=1.0, schedule="cosine", lr_floor=0.1, schedule_steps=5, max_grad_norm=None)
    task = CoinTask()
    algorithm = cls(make_tiny_policy(), task, config, seed=0)
    rates, norms = [], []
    for _ in range(7):
        norms.append(algorithm.step()["grad_norm"])
        rates.append(algorithm.optimizer.param_groups[0]["lr"])
    expected = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t / 4, 1))) for t in range(7)]
    np.testing.assert_allclose(rates, expected)
    assert rates[0] == 1.0 and rates[-1] == pytest.approx(0.1)
    assert cosine_factor(2, 5, 0.1) == pytest.approx(0.55)


def test_cosine_schedule_takes_its_horizon_from_the_budget(make_tiny_policy, tmp_path):
    cls = get_algorithm("trice")
    algorithm = cls(make_tiny_policy(), CoinTask(), cls.Config(batch_size=4, max_new_tokens=6, schedule="cosine"), seed=0)
    run = RunConfig(budget=Budget(samples=40), eval_every=10**9, eval=EvalConfig(max_examples=2, majority_k=0, max_new_tokens=4))
    Runner(algorithm, run, tmp_path, progress=False).run()
    assert algorithm.schedule_horizon == 10  # 40 samples / (4 examples x 1 sample)
