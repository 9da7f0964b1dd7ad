"""The README's GSM8K recipe, run on the CPU: compare.py on trice_rl/GSM8K-v0 with LoRA on a
frozen bfloat16 base, through the same code path as the GPU command, on a random-weight model
of Qwen2's architecture (no weights can be downloaded here)."""

import re

import pandas as pd
import pytest

from tests.conftest import REPO, load_script


@pytest.fixture
def random_qwen2(tmp_path, tiny_config, char_tokenizer):
    """The tiny test model's shape, as a Qwen2 (GQA, biased QKV) saved with the tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    tokens = ("pad_token_id", "bos_token_id", "eos_token_id")
    config = Qwen2Config(**{name: getattr(tiny_config, name) for name in shape + tokens}, max_position_embeddings=2048, tie_word_embeddings=True)
    folder = tmp_path / "qwen2-random"
    Qwen2ForCausalLM(config).save_pretrained(folder)
    char_tokenizer.save_pretrained(folder)
    return folder


def readme_recipe() -> list[str]:
    """The flags of the README's GSM8K command."""
    text = (REPO / "README.md").read_text()
    command = re.search(r"```bash\n(python experiments/compare.py --algos trice,star --env trice_rl/GSM8K-v0.*?)```", text, re.S)[1]
    return command.replace("\\\n", " ").split()[2:]


def test_the_gsm8k_recipe_runs_on_a_random_qwen2(random_qwen2, tmp_path, data_dir):
    flags = readme_recipe()
    # The README's command, with a model that exists here, the CPU, and a few steps.
    overrides = {
        "--model": str(random_qwen2),
        "--device": "cpu",
        "--budget-samples": "8",
        "--eval-every": "8",
        "--eval-examples": "2",
    }
    for flag, value in overrides.items():
        flags[flags.index(flag) + 1] = value
    shorter = {"max_new_tokens=256": "max_new_tokens=12", "batch_size=32": "batch_size=4"}
    flags = [shorter.get(f, f) for f in flags] + ["--variance-every", "0", "--no-progress", "--out", str(tmp_path / "out")]
    result = load_script("compare").main(flags)
    summary = result["summary"]
    assert set(summary["algo"]) == {"trice", "star"}
    for algo in ("trice", "star"):
        rows = pd.read_csv(tmp_path / "out" / f"{algo}-seed0.csv")
        assert rows["samples_drawn"].iloc[-1] <= 8 and rows["eval_acc_greedy"].notna().iloc[-1]
