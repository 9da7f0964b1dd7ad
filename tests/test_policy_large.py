"""The Policy's options for a model that fills a GPU (docs/gpu.md), checked on the CPU with
tiny models: gradient checkpointing, micro-batches, float32 master weights, LoRA on a
bfloat16 base, the sampling batch size picked from free memory, and the GPU check script."""

import pytest
import torch
from transformers import Qwen2Config

from tests.conftest import load_script
from trice_rl.budget import BudgetMeter
from trice_rl.policy import SAMPLING_MEMORY_SHARE, decode_bytes_per_row

PROMPTS = ["Question: 3 + 4?\nAnswer:", "Q: x", "Question: what is 12 - 7 modulo 10?\n", "Q: 5"]
COMPLETIONS = ["7. So the answer is 7.", "ab", "12 - 7 = 5. So the answer is 5.", ""]
COEFFICIENTS = [1.0, -0.5, 2.0, 0.3]


def gradients(policy) -> list[torch.Tensor]:
    return [p.grad.clone() for p in policy.trainable_parameters()]


def count_forwards(module) -> list:
    """A list that grows by one at every call of ``module.forward``."""
    calls, forward = [], module.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    module.forward = counted
    return calls


def make_adapters_matter(policy) -> None:
    """LoRA's B starts at zero, which leaves A without gradient; give it weight."""
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


@pytest.mark.parametrize("tune", ["full", "lora", "prompt"])
def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(make_tiny_policy, tune):
    results = {}
    for checkpointing in (False, True):
        policy = make_tiny_policy(tune, gradient_checkpointing=checkpointing)
        if tune == "lora":
            make_adapters_matter(policy)
        calls = count_forwards(policy.base_model.model.layers[0].mlp)
        policy.accumulate_gradient(PROMPTS, COMPLETIONS, COEFFICIENTS)
        results[checkpointing] = gradients(policy), len(calls)
        assert not policy.model.training and not any(m.training for m in policy.model.modules())
    (plain, plain_calls), (checkpointed, checkpointed_calls) = results[False], results[True]
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the backward ran the layer again
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert sum(float(g.abs().sum()) for g in plain) > 0


@pytest.mark.parametrize("tune", ["full", "prompt"])
def test_micro_batches_give_the_values_gradients_and_charges_of_one_batch(make_tiny_policy, tune):
    whole = make_tiny_policy(tune, meter=BudgetMeter())
    split = make_tiny_policy(tune, meter=BudgetMeter(), max_tokens_per_batch=60)
    ids = split.encode_prompts(PROMPTS), split.encode_completions(COMPLETIONS)
    assert len(split._micro_batches(*ids, None)) >= 3 and len(whole._micro_batches(*ids, None)) == 1
    torch.testing.assert_close(split.logprob(PROMPTS, COMPLETIONS), whole.logprob(PROMPTS, COMPLETIONS), rtol=1e-6, atol=1e-5)
    assert whole.accumulate_gradient(PROMPTS, COMPLETIONS, COEFFICIENTS) == pytest.approx(split.accumulate_gradient(PROMPTS, COMPLETIONS, COEFFICIENTS), abs=1e-4)
    for a, b in zip(gradients(whole), gradients(split)):  # summed in another order: float32 rounding
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert split.meter.tokens_scored == whole.meter.tokens_scored
    assert split.meter.flops == pytest.approx(whole.meter.flops)


def test_micro_batches_hold_at_most_the_rows_and_padded_positions_allowed(make_tiny_policy):
    policy = make_tiny_policy("prompt", max_tokens_per_batch=40)  # the soft prompt "think first" adds 11 positions per row
    prompts, completions = [[1] * 10, [1] * 3, [1] * 12, [1] * 50, [1] * 2], [[2] * 4, [], [2] * 5, [2], [2] * 3]
    batches = policy._micro_batches(prompts, completions, None)
    assert batches == [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 4), slice(4, 5)]
    policy.max_tokens_per_batch = 64
    # rows 0-1: 2 x (10 + 4 + 11) = 50; adding row 2 makes 3 x (12 + 5 + 11) = 84.
    assert policy._micro_batches(prompts, completions, None) == [slice(0, 2), slice(2, 3), slice(3, 4), slice(4, 5)]
    policy.max_tokens_per_batch = None
    assert policy._micro_batches(prompts, completions, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


def train(policy, steps: int, lr: float) -> torch.optim.Optimizer:
    optimizer = policy.make_optimizer(lr)
    for _ in range(steps):
        policy.accumulate_gradient(PROMPTS, COMPLETIONS, [1.0, 1.0, 1.0, 1.0])
        policy.optimizer_step(optimizer, max_grad_norm=None)
    return optimizer


def update(policy, start: dict) -> torch.Tensor:
    """How far training moved the tuned weights (the master copies, where kept)."""
    now = policy.tunable_state_dict()
    return torch.cat([(now[name].float() - start[name].float()).flatten() for name in start])


def test_master_weights_keep_small_updates_that_bfloat16_adam_loses(make_tiny_policy):
    """50 steps at lr 1e-4 move each weight by less than a bfloat16 rounding step: plain
    bfloat16 AdamW drops nearly all of it, float32 masters follow a float32 run."""
    reference = make_tiny_policy()
    start = reference.tunable_state_dict()
    train(reference, 50, 1e-4)
    expected = update(reference, start)
    relative_errors = {}
    for master_weights in (False, True):
        policy = make_tiny_policy(dtype="bfloat16", master_weights=master_weights)
        start = policy.tunable_state_dict()
        optimizer = train(policy, 50, 1e-4)
        relative_errors[master_weights] = float((update(policy, start) - expected).norm() / expected.norm())
        state_dtypes = {value.dtype for state in optimizer.state.values() for key, value in state.items() if key != "step"}
        assert state_dtypes == {torch.float32 if master_weights else torch.bfloat16}
        assert {p.dtype for p in policy.model.parameters()} == {torch.bfloat16}
    assert relative_errors[False] > 0.8 and relative_errors[True] < 0.2, relative_errors
    # The model's weights are the masters rounded; a checkpoint holds the masters.
    state = policy.tunable_state_dict()
    parameters = dict(policy.model.named_parameters())
    assert all(value.dtype == torch.float32 and torch.equal(parameters[name], value.to(torch.bfloat16)) for name, value in state.items())
    fresh = make_tiny_policy(dtype="bfloat16", master_weights=True)
    fresh.load_tunable_state_dict(state)
    assert all(torch.equal(value, state[name]) for name, value in fresh.tunable_state_dict().items())


def test_lora_on_a_bfloat16_base_trains_float32_adapters_and_samples(make_tiny_policy):
    policy = make_tiny_policy("lora", dtype="bfloat16")
    base = {name: p.detach().clone() for name, p in policy.model.named_parameters() if not p.requires_grad}
    trainable = dict((name, p) for name, p in policy.model.named_parameters() if p.requires_grad)
    assert base and all(p.dtype == torch.bfloat16 for p in base.values())
    assert trainable and all("lora_" in name and p.dtype == torch.float32 for name, p in trainable.items())
    before = {name: p.detach().clone() for name, p in trainable.items()}
    policy.accumulate_gradient(PROMPTS, COMPLETIONS, COEFFICIENTS)
    policy.optimizer_step(policy.make_optimizer(1e-2))
    assert any(not torch.equal(p, before[name]) for name, p in trainable.items())
    assert all(torch.equal(p, base[name]) for name, p in policy.model.named_parameters() if name in base)
    samples = policy.sample(PROMPTS[:2], n=2, max_new_tokens=6, seed=0)  # the Llama decode path, adapters folded in
    rescored = policy.logprob([PROMPTS[i] for i in samples.prompt_index], samples.token_ids).detach()
    torch.testing.assert_close(samples.logprobs, rescored, rtol=0, atol=0.1 * 6)


QWEN_1_5B = Qwen2Config(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960, vocab_size=151936)


def test_decode_memory_per_row_from_the_model_shape():
    prompt, new = 200, 300
    kv = 28 * 2 * 2 * 128 * 2 * (prompt + new)  # layers x (K, V) x KV heads x head size x bf16 bytes x positions
    assert kv == 14_336_000
    prefill = prompt * (3 * (1536 + 8960) * 2 + 12 * prompt * 4)
    logits = 151936 * 22
    assert decode_bytes_per_row(QWEN_1_5B, torch.bfloat16, prompt, new) == 2 * kv + prefill + logits
    assert decode_bytes_per_row(QWEN_1_5B, torch.float32, prompt, new) > decode_bytes_per_row(QWEN_1_5B, torch.bfloat16, prompt, new)


def test_sampling_batch_size_fits_free_cuda_memory_and_keeps_the_cpu_default(make_tiny_policy, monkeypatch):
    policy = make_tiny_policy(max_batch_size=48)
    assert policy.sampling_batch_size(100, 50) == 48  # a CPU: today's behaviour
    per_row = decode_bytes_per_row(policy.base_model.config, torch.float32, 100, 50)
    free = {"driver": 10 * per_row, "cached": 2 * per_row}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["driver"], 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 5 * per_row)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 5 * per_row - free["cached"])
    policy.device = torch.device("cuda")
    assert policy.sampling_batch_size(100, 50) == int(12 * per_row * SAMPLING_MEMORY_SHARE) // per_row == 10
    free["driver"], free["cached"] = 1000 * per_row, 0
    assert policy.sampling_batch_size(100, 50) == 48  # never more than max_batch_size
    free["driver"] = per_row // 4
    assert policy.sampling_batch_size(100, 50) == 1  # at least one row


def test_gpu_check_exits_clearly_without_cuda_and_runs_its_code_on_the_cpu(tmp_path, capsys):
    gpu_check = load_script("gpu_check")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            gpu_check.main(["--out", str(tmp_path / "none")])
    table = gpu_check.main(["--cpu-smoke", "--out", str(tmp_path / "smoke")])
    assert (tmp_path / "smoke" / "gpu_check.csv").is_file()
    assert sorted(zip(table["tune"], table["algo"])) == sorted(gpu_check.RUNS)
    assert (table["sampled_tokens_per_s"] > 0).all() and (table["train_flops_per_s"] > 0).all()
    assert "train_share_of_matmul_peak" in capsys.readouterr().out
