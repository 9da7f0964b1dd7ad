"""The CUDA path: the Policy and every algorithm on a GPU, in float32 and bfloat16.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

import csv

import pytest
import torch
from algorithms import ALGORITHM_NAMES, get_algorithm
from trice_rl.budget import Budget
from trice_rl.evaluation import EvalConfig
from trice_rl.runner import Runner, RunConfig

from .conftest import CoinTask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPTS = ["Question: 1 + 2?\nAnswer:", "Q: 7\nA:", "Question: a longer prompt here\nAnswer:"]


@pytest.mark.parametrize("tune", ["full", "lora", "prompt"])
def test_cuda_logprob_equals_the_cpu_one(make_tiny_policy, tune):
    cpu = make_tiny_policy(tune=tune, device="cpu")
    gpu = make_tiny_policy(tune=tune, device="cuda")
    completions = [" 3. So the answer is 3.", " x", ""]
    expected = cpu.logprob(PROMPTS, completions).detach()
    got = gpu.logprob(PROMPTS, completions).detach()
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_cuda_samples_rescore_to_their_own_logprobs_and_repeat_for_a_seed(make_tiny_policy, dtype):
    policy = make_tiny_policy(device="cuda", dtype=dtype)
    first = policy.sample(PROMPTS, n=4, max_new_tokens=12, seed=3)
    again = policy.sample(PROMPTS, n=4, max_new_tokens=12, seed=3)
    assert first.texts == again.texts and len(first.texts) == 12
    assert all(len(ids) <= 12 for ids in first.token_ids)
    prompts = [p for p in PROMPTS for _ in range(4)]
    rescored = policy.logprob(prompts, first.token_ids).detach().float().cpu()
    tolerance = 1e-3 if dtype is None else 0.1 * max(1, max(len(ids) for ids in first.token_ids))
    torch.testing.assert_close(first.logprobs.float().cpu(), rescored, rtol=0, atol=tolerance)
    greedy = policy.greedy(PROMPTS, max_new_tokens=8)
    assert len(greedy.texts) == 3


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
@pytest.mark.parametrize("name", sorted(ALGORITHM_NAMES))
def test_every_algorithm_runs_through_the_runner_on_cuda(name, dtype, make_tiny_policy, tmp_path):
    cls = get_algorithm(name)
    policy = make_tiny_policy(tune=getattr(cls, "default_tune", None) or "full", device="cuda", dtype=dtype)
    algorithm = cls(policy, CoinTask(), cls.Config(batch_size=4, max_new_tokens=8, lr=1e-2), seed=0)
    config = RunConfig(budget=Budget(samples=24), eval_every=12, eval=EvalConfig(max_examples=4, majority_k=2, max_new_tokens=8), variance_every=2, variance_draws=2, variance_batch=2)
    result = Runner(algorithm, config, tmp_path, progress=False).run()
    assert 0.0 <= result["eval_acc_greedy"] <= 1.0 and result["samples_drawn"] >= 24
    with open(tmp_path / f"{cls.name}-seed0.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) >= 3
    assert all(p.device.type == "cuda" for p in policy.trainable_parameters())


def test_tunable_state_round_trips_from_cuda_to_cpu(make_tiny_policy, tmp_path):
    gpu = make_tiny_policy(tune="lora", device="cuda")
    loss = -gpu.logprob(PROMPTS, [" a", " b", " c"]).sum()
    loss.backward()
    gpu.optimizer_step(gpu.make_optimizer(1e-2))
    gpu.save(tmp_path / "adapter")
    cpu = make_tiny_policy(tune="lora", device="cpu")
    cpu.load(tmp_path / "adapter")
    torch.testing.assert_close(cpu.logprob(PROMPTS, [" a", " b", " c"]).detach(), gpu.logprob(PROMPTS, [" a", " b", " c"]).detach().cpu(), rtol=1e-4, atol=1e-3)
