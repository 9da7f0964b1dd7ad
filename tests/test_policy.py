"""Policy: exact scoring, exact sampling, tuning modes, persistence and metering."""

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from trice_rl.budget import Budget, BudgetMeter
from trice_rl.decoding import _fill_holes, _PreallocatedLayer
from trice_rl.policy import Policy

PROMPTS = ["Question: 3 + 4?\nAnswer: Let's think step by step.\n", "Q: x", "Question: what is 12 - 7 modulo 10?\n"]


def make_policy(tiny_config, tokenizer, tune="full", seed=0, **kwargs):
    torch.manual_seed(seed)
    return Policy(LlamaForCausalLM(tiny_config), tokenizer, tune=tune, soft_prompt_text="think first", **kwargs)


def naive_logprob(policy: Policy, prompt: str, completion_ids: list[int]) -> float:
    """One token at a time, no padding, no cache: the definition of log p(completion | prompt)."""
    ids = policy.encode_prompts([prompt])[0]
    lm = policy._lm
    embed = lm.get_input_embeddings()
    total = 0.0
    with torch.no_grad():
        for token in completion_ids:
            embeds = embed(torch.tensor([ids]))
            if policy.soft_prompt is not None:
                embeds = torch.cat([policy.soft_prompt.unsqueeze(0), embeds], dim=1)
            logits = lm(inputs_embeds=embeds).logits[0, -1]
            total += float(torch.log_softmax(logits.double(), -1)[token])
            ids = ids + [token]
    return total


@pytest.mark.parametrize("tune", ["full", "lora", "prompt"])
def test_logprob_matches_naive_token_by_token_computation(tiny_config, char_tokenizer, tune):
    policy = make_policy(tiny_config, char_tokenizer, tune)
    if tune == "lora":  # make the adapters non-zero so that they matter
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    completions = ["7. So the answer is 7.", "", "ab", "12 - 7 = 5. So the answer is 5."]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[2]]
    batched = policy.logprob(prompts, completions)
    for prompt, completion, value in zip(prompts, completions, batched):
        ids = policy.encode_completions([completion])[0]
        assert float(value.detach()) == pytest.approx(naive_logprob(policy, prompt, ids), abs=1e-4)
    assert float(batched[1]) == 0.0  # the empty completion has probability one


@pytest.mark.parametrize("tune", ["full", "lora", "prompt"])
def test_sampled_logprobs_equal_rescoring_and_gradients_reach_tunable_parameters(tiny_config, char_tokenizer, tune):
    policy = make_policy(tiny_config, char_tokenizer, tune)
    samples = policy.sample(PROMPTS, n=3, max_new_tokens=12, seed=3)
    prompts = [PROMPTS[i] for i in samples.prompt_index]
    scored = policy.logprob(prompts, samples.token_ids)
    torch.testing.assert_close(scored.detach(), samples.logprobs, atol=1e-4, rtol=0)
    scored.sum().backward()
    trainable = policy.trainable_parameters()
    # (LoRA's A matrices get zero gradient at initialisation, where B = 0.)
    assert trainable and all(p.grad is not None for p in trainable)
    assert sum(float(p.grad.abs().sum()) for p in trainable) > 0
    frozen = [p for p in policy.model.parameters() if not p.requires_grad]
    assert (tune == "full") == (not frozen)


def test_sampling_respects_n_max_tokens_and_seed(tiny_config, char_tokenizer):
    policy = make_policy(tiny_config, char_tokenizer)
    samples = policy.sample(PROMPTS, n=4, max_new_tokens=5, seed=11)
    assert len(samples) == 12 and samples.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert all(1 <= len(ids) <= 5 for ids in samples.token_ids)
    again = policy.sample(PROMPTS, n=4, max_new_tokens=5, seed=11)
    other = policy.sample(PROMPTS, n=4, max_new_tokens=5, seed=12)
    assert again.token_ids == samples.token_ids
    assert other.token_ids != samples.token_ids
    # The policy's own generator makes un-seeded runs reproducible from the policy seed.
    first = make_policy(tiny_config, char_tokenizer, seed=0).sample(PROMPTS, n=2, max_new_tokens=5)
    second = make_policy(tiny_config, char_tokenizer, seed=0).sample(PROMPTS, n=2, max_new_tokens=5)
    assert first.token_ids == second.token_ids
    # Batching does not change what a seed draws for the first batch row... but results
    # of different batch sizes are equally valid samples; only shapes are checked here.
    small_batches = policy.sample(PROMPTS, n=4, max_new_tokens=5, seed=11, batch_size=4)
    assert len(small_batches) == 12


def test_stop_strings_end_samples_and_are_cut_from_text(tiny_config, char_tokenizer):
    policy = make_policy(tiny_config, char_tokenizer)
    # A stop string of one very common character stops almost every sample early.
    vocab_chars = [c for c in "etaoinsr"]
    samples = policy.sample([PROMPTS[0]], n=64, max_new_tokens=40, stop=vocab_chars, seed=0)
    stopped = [i for i, done in enumerate(samples.finished) if done]
    assert stopped
    for i in stopped:
        text = samples.texts[i]
        full = char_tokenizer.decode(samples.token_ids[i], skip_special_tokens=True)
        assert not any(c in text for c in vocab_chars)
        assert full.startswith(text)
        assert any(full.endswith(c) for c in vocab_chars) or samples.token_ids[i][-1] in policy.eos_token_ids


@pytest.mark.parametrize("tune", ["full", "lora", "prompt"])
def test_rows_that_finish_early_leave_the_other_rows_exact(tiny_config, char_tokenizer, tune):
    """Finished rows are dropped from the batch and its cache part-way through decoding; the
    rows that go on must still draw from, and be scored by, the unpadded model."""
    policy = make_policy(tiny_config, char_tokenizer, tune)
    stop = list("etao")
    samples = policy.sample(PROMPTS, n=6, max_new_tokens=30, stop=stop, seed=5)
    lengths = {len(ids) for ids in samples.token_ids}
    assert len(lengths) >= 4 and any(samples.finished) and not all(samples.finished)  # finishing at many different steps
    prompts = [PROMPTS[i] for i in samples.prompt_index]
    torch.testing.assert_close(policy.logprob(prompts, samples.token_ids).detach(), samples.logprobs, atol=1e-4, rtol=0)
    for prompt, ids in zip(prompts[::5], samples.token_ids[::5]):
        assert float(policy.logprob([prompt], [ids])[0]) == pytest.approx(naive_logprob(policy, prompt, ids), abs=1e-4)
    greedy = policy.greedy(PROMPTS, max_new_tokens=30, stop=stop)
    for prompt, ids in zip(PROMPTS, greedy.token_ids):
        assert policy.greedy([prompt], max_new_tokens=30, stop=stop).token_ids == [ids]  # alone, no padding or other rows


def test_first_token_frequencies_match_the_model_softmax(tiny_config, char_tokenizer):
    """Exact ancestral sampling: a chi-square test of 6000 first tokens against softmax."""
    policy = make_policy(tiny_config, char_tokenizer)
    with torch.no_grad():
        # Sharpen the output layer so that the distribution is far from uniform.
        policy.model.lm_head.weight.mul_(20)
    samples = policy.sample([PROMPTS[0]], n=6000, max_new_tokens=1, seed=5)
    first = torch.tensor([ids[0] for ids in samples.token_ids])
    vocab = len(char_tokenizer)
    probs = torch.exp(policy.logprob([PROMPTS[0]] * vocab, [[t] for t in range(vocab)]).detach().double())
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    counts = torch.bincount(first, minlength=vocab).double()
    expected = probs * len(first)
    big = expected >= 5  # pool the rare tokens into one cell
    observed_cells = torch.cat([counts[big], counts[~big].sum().unsqueeze(0)])
    expected_cells = torch.cat([expected[big], expected[~big].sum().unsqueeze(0)])
    chi2 = float(((observed_cells - expected_cells) ** 2 / expected_cells.clamp(min=1e-9)).sum())
    dof = len(observed_cells) - 1
    # 99.9% quantile of chi-square via the Wilson-Hilferty approximation.
    z = 3.09
    bound = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < bound, (chi2, bound)
    # Top-k sampling only ever returns the k most likely tokens.
    top = policy.sample([PROMPTS[0]], n=500, max_new_tokens=1, top_k=3, seed=1)
    allowed = set(torch.topk(probs, 3).indices.tolist())
    assert {ids[0] for ids in top.token_ids} <= allowed


def test_greedy_matches_transformers_generate(tiny_config, char_tokenizer):
    policy = make_policy(tiny_config, char_tokenizer)
    ours = policy.greedy(PROMPTS, max_new_tokens=15)
    for prompt, ids in zip(PROMPTS, ours.token_ids):
        encoded = torch.tensor([policy.encode_prompts([prompt])[0]])
        reference = policy.model.generate(
            encoded, attention_mask=torch.ones_like(encoded), do_sample=False, max_new_tokens=15, pad_token_id=char_tokenizer.pad_token_id
        )[0, encoded.shape[1] :].tolist()
        assert ids == reference[: len(ids)]


@pytest.mark.parametrize("tune", ["lora", "prompt"])
def test_parameter_efficient_modes_train_and_round_trip(tiny_config, char_tokenizer, tune, tmp_path):
    policy = make_policy(tiny_config, char_tokenizer, tune)
    base_before = {n: p.detach().clone() for n, p in policy.base_model.named_parameters() if "lora" not in n}
    prompts, targets = [PROMPTS[0], PROMPTS[2]], ["So the answer is 7.", "So the answer is 5."]
    optimizer = policy.make_optimizer(lr=0.1)
    losses = []
    for _ in range(30):
        losses.append(policy.accumulate_gradient(prompts, targets, [1.0, 1.0]))
        policy.optimizer_step(optimizer)
    assert losses[-1] < 0.7 * losses[0]
    for name, p in policy.base_model.named_parameters():
        if name in base_before:
            torch.testing.assert_close(p, base_before[name], rtol=0, atol=0)
    expected = policy.logprob(prompts, targets).detach()
    policy.save(tmp_path / "adapter")
    fresh = make_policy(tiny_config, char_tokenizer, tune)
    assert not torch.allclose(fresh.logprob(prompts, targets).detach(), expected)
    fresh.load(tmp_path / "adapter")
    torch.testing.assert_close(fresh.logprob(prompts, targets).detach(), expected)
    with pytest.raises(ValueError, match="tune="):
        make_policy(tiny_config, char_tokenizer, "full").load(tmp_path / "adapter")


def test_full_mode_round_trips_as_an_ordinary_model_folder(tiny_config, char_tokenizer, tmp_path):
    policy = make_policy(tiny_config, char_tokenizer, "full", seed=1)
    policy.save(tmp_path / "model")
    reloaded = Policy.from_pretrained(str(tmp_path / "model"))
    torch.testing.assert_close(reloaded.logprob(PROMPTS, ["ab", "c", "d"]), policy.logprob(PROMPTS, ["ab", "c", "d"]))


def test_every_call_is_charged_to_the_meter_except_when_paused(tiny_config, char_tokenizer):
    meter = BudgetMeter()
    policy = make_policy(tiny_config, char_tokenizer, meter=meter)
    samples = policy.sample(PROMPTS, n=2, max_new_tokens=6, seed=0)
    assert meter.samples == 6 and meter.tokens_generated == samples.num_tokens
    policy.logprob(PROMPTS, ["abc", "de", ""])
    assert meter.tokens_scored == 5
    optimizer = policy.make_optimizer(1e-3)
    policy.accumulate_gradient(PROMPTS, ["abc", "de", ""], [1.0, -1.0, 0.5])
    policy.optimizer_step(optimizer)
    assert meter.optimizer_steps == 1 and meter.tokens_scored == 10
    with meter.paused():
        policy.greedy(PROMPTS, max_new_tokens=4)
        policy.logprob(PROMPTS, ["abc", "de", ""])
    assert (meter.samples, meter.tokens_scored) == (6, 10)
    assert meter.exhausted(Budget(samples=6)) and not meter.exhausted(Budget(samples=7))
    with pytest.raises(ValueError):
        Budget(samples=0)
    with pytest.raises(ValueError):
        Budget()


def test_bad_arguments_give_clear_errors(tiny_config, char_tokenizer):
    with pytest.raises(ValueError, match="tune must be one of"):
        make_policy(tiny_config, char_tokenizer, "adapters")
    policy = make_policy(tiny_config, char_tokenizer)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        policy.logprob(PROMPTS[:2], ["a"])
    with pytest.raises(ValueError, match="n must be"):
        policy.sample(PROMPTS, n=0)
    with pytest.raises(ValueError, match="greedy"):
        policy.sample(PROMPTS, temperature=0.0)
    with pytest.raises(FileNotFoundError):
        Policy.from_pretrained("./no/such/model/folder")


def test_cache_rows_are_selected_in_place_in_any_order():
    """Selecting rows moves them inside the preallocated buffer; a row that is both read
    and overwritten (row 0 below) must be read before it is written."""
    layer = _PreallocatedLayer(capacity=8)
    keys, values = torch.randn(5, 2, 3, 4), torch.randn(5, 2, 3, 4)
    layer.update(keys, values)
    indices = torch.tensor([3, 0, 2])
    layer.batch_select_indices(indices)
    torch.testing.assert_close(layer.keys, keys[indices], rtol=0, atol=0)
    torch.testing.assert_close(layer.values, values[indices], rtol=0, atol=0)
    new_keys, new_values = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
    layer.update(new_keys, new_values)
    torch.testing.assert_close(layer.keys, torch.cat([keys[indices], new_keys], dim=2), rtol=0, atol=0)


def test_fill_holes_keeps_exactly_the_kept_rows_moving_only_the_dropped_count():
    keep = torch.tensor([True, False, True, False, True, True, False, True])
    order = _fill_holes(keep)
    assert sorted(order.tolist()) == keep.nonzero().squeeze(-1).tolist()
    moved = (order != torch.arange(len(order))).sum().item()
    assert moved == (~keep[: len(order)]).sum().item() == 2
