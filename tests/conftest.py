"""Shared fixtures: the offline data folder, a character-level tokenizer, tiny policies."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from envs.base import Example, Task

# Tiny test models run fastest single-threaded, and a busy 2-core machine makes two threads
# wait on each other (a tiny forward measured 1 ms on one thread, 205 ms on two under load).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    """An experiments/ script as module ``name``, registered so that dataclasses and
    worker processes (which import it by name) find it."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline GSM8K / BBH copies: ``$TRICE_RL_DATA``, else ``../shared/data``."""
    path = Path(os.environ.get("TRICE_RL_DATA", REPO.parent / "shared" / "data"))
    os.environ.setdefault("TRICE_RL_DATA", str(path))
    return path


@pytest.fixture(scope="session")
def char_tokenizer():
    """The built-in model's character-level tokenizer (built in-process, no download)."""
    from trice_rl.builtin_model import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_config(char_tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(char_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # A wide initialisation: with the default 0.02 the final RMSNorm bounds the logits
        # so tightly that frozen-base tuning modes cannot move the output distribution.
        initializer_range=0.3,
        pad_token_id=char_tokenizer.pad_token_id,
        bos_token_id=char_tokenizer.bos_token_id,
        eos_token_id=char_tokenizer.eos_token_id,
    )


@pytest.fixture
def make_tiny_policy(tiny_config, char_tokenizer):
    """A factory of small random-weight Policies (2 layers, width 32) over the char tokenizer."""
    from transformers import LlamaForCausalLM

    from trice_rl.policy import Policy

    def make(tune: str = "full", seed: int = 0, **kwargs) -> Policy:
        torch.manual_seed(seed)
        kwargs.setdefault("soft_prompt_text", "think first")
        return Policy(LlamaForCausalLM(tiny_config), char_tokenizer, tune=tune, seed=seed, **kwargs)

    return make



class CoinTask(Task):
    """A task a random tiny model solves about half the time: a completion "states" the
    target iff its length is even.  It gives TRICE, STaR and rft non-trivial dynamics."""

    name = "coin"
    splits = ("train", "test")

    def load_split(self, split):
        count = 12 if split == "train" else 6
        return [Example(question=f"q{i}", answer="even", rationale="ab. So the answer is even.") for i in range(count)]

    def extract_answer(self, completion):
        return "even" if len(completion) % 2 == 0 else "odd"


@pytest.fixture(scope="module")
def builtin_cache(tmp_path_factory):
    """A private cache, so the tiny built-in model is built here, never in ~/.cache."""
    cache = tmp_path_factory.mktemp("trice_rl_cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("TRICE_RL_CACHE", str(cache))
    yield cache
    patch.undo()
