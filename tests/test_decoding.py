"""Decoding: the lean Llama path against the Hugging Face forward and ``model.generate``,
the fallback path for other models, stop strings and reproducibility."""

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from trice_rl.decoding import _HFDecoder, _left_padded, _LlamaDecoder, _stop_candidates
from trice_rl.policy import Policy

PROMPTS = ["Question: 3 + 4?\nAnswer: Let's think step by step.\n", "Q: x", "Question: what is 12 - 7 modulo 10?\n", "ab"]
TUNES = ["full", "lora", "prompt"]


def perturbed(policy: Policy) -> Policy:
    """Non-zero LoRA adapters (zero at initialisation) and a soft prompt unlike any text, so
    that every tunable part changes the outputs."""
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name or (policy.tune == "prompt" and parameter.requires_grad):
                parameter.normal_(0, 0.5)
    return policy


def hf_only(monkeypatch) -> None:
    monkeypatch.setattr(_LlamaDecoder, "supports", staticmethod(lambda policy: False))


def make_qwen2_policy(char_tokenizer, tune="full"):
    """A model outside the Llama path (its Q/K/V projections have biases)."""
    config = Qwen2Config(
        vocab_size=len(char_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.3, pad_token_id=char_tokenizer.pad_token_id,
        bos_token_id=char_tokenizer.bos_token_id, eos_token_id=char_tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return Policy(Qwen2ForCausalLM(config), char_tokenizer, tune=tune, soft_prompt_text="think first")


@pytest.mark.parametrize("tune", TUNES)
def test_llama_path_logits_match_the_model_forward_through_row_drops_and_cache_growth(make_tiny_policy, tune):
    policy = perturbed(make_tiny_policy(tune))
    assert _LlamaDecoder.supports(policy)
    input_ids, mask = _left_padded(policy.encode_prompts(PROMPTS), policy.pad_token_id, policy.device)
    steps = 45  # past the first cache growth (32 positions)
    lean, reference = (cls(policy, len(PROMPTS) * 2, input_ids.shape[1] + steps) for cls in (_LlamaDecoder, _HFDecoder))
    with torch.no_grad():
        logits, expected = lean.prefill(input_ids, mask, 2), reference.prefill(input_ids, mask, 2)
        for step in range(steps):
            torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)
            tokens = expected.argmax(-1)
            if step in (3, 20):  # rows leave in a new order, as when samples finish
                kept = torch.tensor([len(tokens) - 1] + list(range(1, len(tokens) - 2)))
                lean.select(kept)
                reference.select(kept)
                tokens = tokens[kept]
            logits, expected = lean.step(tokens), reference.step(tokens)


def test_greedy_is_token_for_token_model_generate_in_one_padded_batch(make_tiny_policy, char_tokenizer):
    policy = make_tiny_policy()
    policy.eos_token_ids = []  # full length, past cache growth
    ours = policy.greedy(PROMPTS, max_new_tokens=40)
    for prompt, ids in zip(PROMPTS, ours.token_ids):
        encoded = torch.tensor([policy.encode_prompts([prompt])[0]])
        reference = policy.model.generate(
            encoded, attention_mask=torch.ones_like(encoded), do_sample=False, max_new_tokens=40, min_new_tokens=40,
            pad_token_id=char_tokenizer.pad_token_id,
        )[0, encoded.shape[1] :].tolist()
        assert ids == reference


@pytest.mark.parametrize("tune", ["lora", "prompt"])
def test_parameter_efficient_modes_decode_as_through_the_model_forward(make_tiny_policy, tune, monkeypatch):
    policy = perturbed(make_tiny_policy(tune))
    lean_greedy = policy.greedy(PROMPTS, max_new_tokens=40)
    lean_samples = policy.sample(PROMPTS, n=3, max_new_tokens=20, seed=4)
    hf_only(monkeypatch)
    assert policy.greedy(PROMPTS, max_new_tokens=40).token_ids == lean_greedy.token_ids
    hf_samples = policy.sample(PROMPTS, n=3, max_new_tokens=20, seed=4)
    assert hf_samples.token_ids == lean_samples.token_ids
    torch.testing.assert_close(hf_samples.logprobs, lean_samples.logprobs, rtol=0, atol=1e-4)


def test_decoding_reads_the_weights_of_the_moment(make_tiny_policy):
    """Training changes the weights between calls; a decode must not use stale copies."""
    policy = make_tiny_policy("lora")
    before = policy.sample(PROMPTS, n=2, max_new_tokens=12, seed=1)
    optimizer = policy.make_optimizer(lr=0.5)
    policy.accumulate_gradient(PROMPTS, ["7. So the answer is 7."] * len(PROMPTS), [1.0] * len(PROMPTS))
    policy.optimizer_step(optimizer)
    after = policy.sample(PROMPTS, n=2, max_new_tokens=12, seed=1)
    prompts = [PROMPTS[i] for i in after.prompt_index]
    torch.testing.assert_close(policy.logprob(prompts, after.token_ids).detach(), after.logprobs, rtol=0, atol=1e-4)
    assert not torch.allclose(policy.logprob(prompts, before.token_ids).detach(), before.logprobs, atol=1e-3)


@pytest.mark.parametrize("tune", TUNES)
def test_other_architectures_fall_back_to_the_model_forward(char_tokenizer, tune):
    policy = perturbed(make_qwen2_policy(char_tokenizer, tune))
    assert not _LlamaDecoder.supports(policy)
    samples = policy.sample(PROMPTS, n=3, max_new_tokens=15, seed=2, stop=["e"])
    assert samples.token_ids == policy.sample(PROMPTS, n=3, max_new_tokens=15, seed=2, stop=["e"]).token_ids
    prompts = [PROMPTS[i] for i in samples.prompt_index]
    torch.testing.assert_close(policy.logprob(prompts, samples.token_ids).detach(), samples.logprobs, rtol=0, atol=1e-4)
    if tune == "full":
        for prompt, ids in zip(PROMPTS, policy.greedy(PROMPTS, max_new_tokens=15).token_ids):
            encoded = torch.tensor([policy.encode_prompts([prompt])[0]])
            reference = policy.model.generate(encoded, attention_mask=torch.ones_like(encoded), do_sample=False, max_new_tokens=15)
            assert ids == reference[0, encoded.shape[1] :].tolist()[: len(ids)]


def test_rope_that_depends_on_the_length_seen_falls_back(tiny_config, char_tokenizer):
    config = tiny_config.__class__(**{**tiny_config.to_dict(), "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}})
    policy = Policy(LlamaForCausalLM(config), char_tokenizer)
    assert not _LlamaDecoder.supports(policy)


@pytest.mark.parametrize("stop", [["e", "s t"], ["answer is", "\n\n"], ["o", "Q"]])
def test_samples_end_exactly_at_the_first_stop_string(make_tiny_policy, char_tokenizer, stop):
    """Only rows whose new token can end a stop string are decoded each step; no stop string
    may be missed: a sample's text holds a stop string only in its final tokens."""
    policy = make_tiny_policy()
    samples = policy.sample(PROMPTS, n=16, max_new_tokens=40, stop=stop, seed=7, temperature=1.5)
    assert any(samples.finished)
    for ids, text, done in zip(samples.token_ids, samples.texts, samples.finished):
        full = char_tokenizer.decode(ids, skip_special_tokens=True)
        before_last = char_tokenizer.decode(ids[:-1], skip_special_tokens=True)
        assert not any(s in before_last for s in stop)
        assert done == (any(s in full for s in stop) or ids[-1] in policy.eos_token_ids)
        assert not any(s in text for s in stop) and full.startswith(text)


def test_stop_candidates_are_the_tokens_that_hold_a_stop_strings_last_character(char_tokenizer):
    candidates = _stop_candidates(char_tokenizer, ("is 7", "ab"))
    vocab = char_tokenizer.get_vocab()
    assert {t for t in range(len(candidates)) if candidates[t]} >= {vocab["7"], vocab["b"]}
    assert not candidates[vocab["a"]] and not candidates[vocab["7"] - 1]
    assert _stop_candidates(char_tokenizer, ("x", "answer\n")) is None  # whitespace may join the next token


@pytest.mark.parametrize("greedy", [True, False])
def test_many_rows_in_small_batches_equal_the_rows_alone(make_tiny_policy, greedy):
    """Batching changes neither greedy tokens nor what a seeded single-row call would score."""
    policy = make_tiny_policy()
    prompts = PROMPTS * 5
    if greedy:
        batched = policy.greedy(prompts, max_new_tokens=20, batch_size=3, stop=["e"])
        assert batched.token_ids == [policy.greedy([p], max_new_tokens=20, stop=["e"]).token_ids[0] for p in prompts]
    else:
        batched = policy.sample(prompts, n=2, max_new_tokens=20, batch_size=5, top_p=0.9, temperature=0.7, seed=3)
        repeated = [p for p in prompts for _ in range(2)]
        torch.testing.assert_close(policy.logprob(repeated, batched.token_ids).detach(), batched.logprobs, rtol=0, atol=1e-4)
