"""The embedded default model: tiny builds only (seconds), always into a temporary cache."""

import inspect
import re
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import trice_rl.builtin_model as builtin
from trice_rl.options import config_help
from trice_rl.builtin_model import cli as builtin_cli
from envs.arithmetic import ArithmeticTask, wraps
from envs.procedural_bbh import generate_boolean_expressions, generate_multistep_arithmetic_two
from trice_rl.machine import machine_info


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRICE_RL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRICE_RL_CACHE", str(tmp_path_factory.mktemp("shared-cache")))
        return builtin.builtin_model_path(size="tiny")


def weights(folder):
    return load_file(folder / "model.safetensors")


def test_tiny_build_is_an_ordinary_hf_folder_in_the_cache(cache):
    folder = builtin.builtin_model_path(size="tiny")
    assert folder.parent == cache / "builtin" and folder.name.startswith("arithmetic-tiny-")
    assert {"config.json", "model.safetensors", "tokenizer.json", builtin.CONFIG_FILE} <= {p.name for p in folder.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.eos_token_id == tokenizer.eos_token_id != tokenizer.pad_token_id
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folder left


def test_second_call_hits_the_cache(cache, monkeypatch):
    folder = builtin.builtin_model_path(size="tiny")
    monkeypatch.setattr(builtin, "build", lambda *args: pytest.fail("rebuilt a cached model"))
    assert builtin.builtin_model_path(size="tiny") == folder


def test_same_seed_same_weights_other_seed_other_folder(tiny_folder, cache):
    again = builtin.builtin_model_path(size="tiny")
    assert again != tiny_folder and again.name == tiny_folder.name
    first, second = weights(tiny_folder), weights(again)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = builtin.builtin_model_path(size="tiny", seed=1)
    assert other.name != again.name
    assert not torch.equal(weights(other)["model.embed_tokens.weight"], first["model.embed_tokens.weight"])


def test_rebuild_replaces_and_a_failed_build_leaves_nothing(cache, monkeypatch):
    folder = builtin.builtin_model_path(size="tiny")
    (folder / "stale").write_text("from the old build")
    assert builtin.builtin_model_path(size="tiny", rebuild=True) == folder and not (folder / "stale").exists()

    def crash(config, staging):
        (staging / "config.json").write_text("{half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(builtin, "build", crash)
    with pytest.raises(KeyboardInterrupt):
        builtin.builtin_model_path(size="tiny", seed=5)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_tokenizer_round_trips_every_task_character(tiny_folder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    task = ArithmeticTask(num_train=50, num_validation=0, num_test=0)
    texts = [builtin.CHARACTERS, "( True ) = -36 * -3. ((", task.hinted_prompt("What is 1 - 2 modulo 10?", "9")]
    texts += [task.cot_prompt(e.question) + e.rationale for e in task.examples("train")]
    texts += [e.question + e.rationale for i in range(50) for e in (generate_boolean_expressions(i, 0), generate_multistep_arithmetic_two(i, 0))]
    vocab = tokenizer.get_vocab()
    for text in texts:
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id and len(ids) == len(text) + 1
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert ids + [tokenizer.eos_token_id] == builtin._encode([(text, True)], vocab)[0].tolist()


def test_corpus_mistakes_are_systematic_and_rarer_with_a_hint():
    config = builtin.BuiltinConfig.preset("arithmetic")
    step = re.compile(r"(\d+) ([-+]) (\d+) = (?:(-?\d+) = )?(\d+)\.")
    wrong = {"cot": [], "hinted": []}
    kinds = []
    for segments in builtin.corpus_documents(config, 3000):
        prompt, rationale = segments[-2][0], segments[-1][0]
        kind = "direct" if prompt.endswith("The answer is ") else "hinted" if "The answer is" in prompt else "cot"
        kinds.append(kind)
        if kind == "direct":
            assert re.fullmatch(r"\d\.", rationale)
            continue
        for left, op, right, exact, result in step.findall(rationale):
            left, right, result = int(left), int(right), int(result)
            true = (left + right if op == "+" else left - right) % 10
            assert (exact != "") == wraps(left, op, right, 10)  # the exact value only where it wraps
            if result != true:  # only wrapping steps go wrong, always off by one
                assert wraps(left, op, right, 10) and result == (true + (1 if op == "+" else -1)) % 10
            if wraps(left, op, right, 10):
                wrong[kind].append(result != true)
    cot_rate, hinted_rate = (sum(wrong[k]) / len(wrong[k]) for k in ("cot", "hinted"))
    assert abs(cot_rate - config.cot_mistake_rate) < 0.05 and abs(hinted_rate - config.hinted_mistake_rate) < 0.05
    assert 0.05 < kinds.count("direct") / len(kinds) < 0.2


@pytest.mark.parametrize("family", builtin.FAMILIES)
def test_every_family_has_a_well_formed_corpus(family):
    config = builtin.BuiltinConfig.preset(family, "tiny")
    for segments in builtin.corpus_documents(config, 30):
        assert segments[0][0].startswith("Question: ") and not segments[0][1]
        assert segments[-1][1] and segments[-1][0].endswith(".")


def test_cli_prints_size_and_accuracies(tiny_folder, monkeypatch, capsys):
    monkeypatch.setenv("TRICE_RL_CACHE", str(tiny_folder.parent.parent))
    builtin_cli.main(["--size", "tiny", "--examples", "2", "--samples", "2"])
    out = capsys.readouterr().out
    assert "parameters:" in out and re.search(r"train: examples 2  greedy \d\.\d+  sampled", out) and "test:" in out


def test_cli_prints_the_recipe_every_field_with_its_value_and_help(capsys):
    builtin_cli.main(["--recipe", "--family", "boolean_expressions"])
    lines = capsys.readouterr().out.splitlines()[1:]
    config = builtin.BuiltinConfig.preset("boolean_expressions")
    assert [line.split("=")[0].strip() for line in lines] == [f.name for f in fields(config)]
    assert "  few_shot_fraction=0.02 " in "\n".join(lines)
    assert all(text and text in line for line, (_, _, text) in zip(lines, config_help(builtin.BuiltinConfig)))


def test_the_policy_loads_the_builtin_model_with_default_attention_and_either_kernel_scores_alike(cache):
    """The Policy trains with the default kernel (SDPA); the benchmarks give ``generate`` the
    eager one: a choice of kernel, not of model, so both score a sample alike."""
    from trice_rl.policy import Policy

    policy = Policy.from_pretrained("builtin:arithmetic:tiny")
    assert policy.model.config._attn_implementation == "sdpa"
    reference = Policy.from_pretrained("builtin:arithmetic:tiny")
    reference.model.set_attn_implementation(builtin.GENERATE_ATTENTION_ON_CPU)
    task = ArithmeticTask(num_train=8)
    prompts = [task.cot_prompt(e.question) for e in task.examples("train")]
    samples = policy.sample(prompts, n=2, max_new_tokens=40, seed=0)
    scored = [prompts[i] for i in samples.prompt_index]
    torch.testing.assert_close(policy.logprob(scored, samples.token_ids), samples.logprobs, atol=1e-4, rtol=0)
    torch.testing.assert_close(reference.logprob(scored, samples.token_ids), samples.logprobs, atol=1e-4, rtol=0)


def materialised_batches(config, vocab):
    """The batching as it was before batches streamed (every padded batch built before the
    first step, int64 ids): the reference the streaming path must reproduce exactly."""
    encoded = (builtin._encode(d, vocab) for d in builtin.corpus_documents(config, config.train_steps * config.batch_size))
    documents = [(ids.astype(np.int64), targets) for ids, targets in encoded]
    rng = np.random.default_rng([config.seed, len(builtin.FAMILIES)])
    chunk = config.length_sort_batches * config.batch_size
    groups = []
    for start in range(0, len(documents), chunk):
        block = sorted(documents[start : start + chunk], key=lambda d: len(d[0]))
        groups += [block[i : i + config.batch_size] for i in range(0, len(block), config.batch_size)]
    batches = []
    for i in rng.permutation(len(groups)):
        group = groups[i]
        width = max(len(ids) for ids, _ in group)
        input_ids = torch.full((len(group), width), vocab[builtin.PAD], dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, (ids, targets) in enumerate(group):
            input_ids[row, : len(ids)] = torch.from_numpy(ids)
            labels[row, : len(ids)] = torch.from_numpy(np.where(targets, ids, -100))
            mask[row, : len(ids)] = 1
        batches.append((input_ids, mask, labels))
    return batches


def test_streamed_batches_equal_the_materialised_ones():
    # three length-sort blocks, the last one partial: 120 batches of 8 in blocks of 50 batches
    config = replace(builtin.BuiltinConfig.preset("arithmetic", "tiny"), train_steps=120, length_sort_batches=50)
    vocab = builtin.build_tokenizer().get_vocab()
    streamed = builtin._batches(config, vocab)
    assert inspect.isgenerator(streamed)
    expected = materialised_batches(config, vocab)
    count = 0
    for count, (got, want) in enumerate(zip(streamed, expected, strict=True), start=1):
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, want))
    assert count == config.train_steps


# The tiny build's weights from the materialising code, recorded before batches streamed:
# (cache folder name, CPU) -> sha256.  Built twice there, the same both times; another CPU
# may round differently, so elsewhere only the comparison with the reference batches runs.
RECORDED_TINY_WEIGHTS = {("arithmetic-tiny-4a791b6d64", "AMD EPYC"): "f5b79726f16e04bcf0d80652dca5ac52ff5dbede6866bddde7e8345ebfdbfa39"}


def test_streaming_leaves_the_tiny_build_bit_identical(tiny_folder, tmp_path, monkeypatch):
    config = builtin.BuiltinConfig.preset("arithmetic", "tiny")
    streamed = builtin.sha256_of(tiny_folder / builtin.WEIGHTS_FILE)
    monkeypatch.setattr(builtin, "_batches", materialised_batches)
    builtin.build(config, tmp_path)
    assert streamed == builtin.sha256_of(tmp_path / builtin.WEIGHTS_FILE)
    recorded = RECORDED_TINY_WEIGHTS.get((config.folder_name(), machine_info(config.threads)["cpu"]))
    assert recorded in (None, streamed)
