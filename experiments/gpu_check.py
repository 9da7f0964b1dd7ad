"""The large-model options on one GPU: peak memory, sampling speed and training FLOP/s.

    python experiments/gpu_check.py --out runs/gpu-check

builds random-weight models of Qwen2.5-0.5B's and Qwen2.5-1.5B's published shapes (no
weights are downloaded), and for each runs a few TRICE and GRPO steps on the arithmetic task
with LoRA and with full tuning, in bfloat16 with gradient checkpointing, float32 master
weights and micro-batches (``docs/gpu.md``).  Per run it prints and writes to
``<out>/gpu_check.csv``: peak memory, tokens sampled per second, and the training calls'
model FLOP/s (6·N per trained token, recomputation not counted) as a share of the rate of
a large bfloat16 matmul timed in the same run.  About 5 minutes on one H100.

A random model never states a right answer, and with none TRICE and GRPO take no gradient;
so here a sample counts as correct by a coin (the parity of a hash of its text), which
makes a step train on about as many rationales as a real one.  The tokenizer is the
built-in character tokenizer with placeholder tokens up to the model's vocabulary, so that
every token a random model draws decodes to text.  ``--cpu-smoke`` runs the same code on
tiny shapes on the CPU (the tests do).
"""

from __future__ import annotations

try:
    import trice_rl  # noqa: F401  (the installed package)
except ModuleNotFoundError:
    raise SystemExit("gpu_check.py: the trice_rl package is not installed; run `pip install -e .` in the repository first") from None

import argparse
import gc
import json
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from algorithms import get_algorithm
from envs.arithmetic import ArithmeticTask
from trice_rl.builtin_model import build_tokenizer
from trice_rl.policy import Policy

QWEN_VOCAB = 151936
# Qwen2.5's published shapes (config.json of Qwen/Qwen2.5-0.5B and -1.5B), and a tiny one.
SHAPES = {
    "qwen2.5-0.5b": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": QWEN_VOCAB},
    "qwen2.5-1.5b": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": QWEN_VOCAB},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 512},
}
RUNS = [("lora", "trice"), ("lora", "grpo"), ("full", "trice"), ("full", "grpo")]
# Each step draws about 64 samples: TRICE 32 proposals and a hinted sample for each example
# whose memory a lazy first visit fills, GRPO 8 prompts x 8.
ALGORITHM_SETTINGS = {"trice": {"batch_size": 32, "memory_init": "lazy"}, "grpo": {"batch_size": 8, "group_size": 8}}
SMOKE_SETTINGS = {"trice": {"batch_size": 4, "memory_init": "lazy"}, "grpo": {"batch_size": 2, "group_size": 4}}
LEARNING_RATES = {"lora": 1e-4, "full": 1e-5}


class CoinArithmetic(ArithmeticTask):
    """The arithmetic task with a sample counted as correct by a coin (see the module doc)."""

    def score(self, completions, targets, kind="cot") -> np.ndarray:
        return np.array([zlib.crc32(text.encode()) & 1 for text in completions], dtype=np.float32)


def sized_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """The built-in character tokenizer with placeholder tokens ``<i>`` up to ``vocab_size``."""
    base = build_tokenizer()
    state = json.loads(base.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    vocab.update({f"<{i}>": i for i in range(len(vocab), vocab_size)})
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)), **base.special_tokens_map, clean_up_tokenization_spaces=False)


def build_model(shape: str, tokenizer, device: torch.device, dtype: torch.dtype):
    """A random-weight Qwen2 of ``shape`` (tied embeddings, as the small Qwen2.5 models)."""
    config = Qwen2Config(
        **SHAPES[shape],
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Seconds, model FLOPs and generated tokens spent inside the policy's sampling calls and
    its training calls (scoring with gradients, backward, optimizer step)."""

    PARTS = {"sample": "sample", "accumulate_gradient": "train", "optimizer_step": "train"}

    def __init__(self, policy: Policy):
        self.policy = policy
        self.seconds, self.flops, self.tokens = Counter(), Counter(), Counter()
        for name, part in self.PARTS.items():
            setattr(policy, name, self._timed(getattr(policy, name), part))

    def _timed(self, method, part: str):
        meter = self.policy.meter

        def timed(*args, **kwargs):
            synchronize(self.policy.device)
            start, flops, tokens = time.perf_counter(), meter.flops, meter.tokens_generated
            result = method(*args, **kwargs)
            synchronize(self.policy.device)
            self.seconds[part] += time.perf_counter() - start
            self.flops[part] += meter.flops - flops
            self.tokens[part] += meter.tokens_generated - tokens
            return result

        return timed

    def reset(self) -> None:
        for counter in (self.seconds, self.flops, self.tokens):
            counter.clear()


def matmul_rate(device: torch.device, size: int, repeats: int = 50) -> float:
    """FLOP/s of a square bfloat16 matmul: the peak that training FLOP/s is compared with."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def run(shape: str, tune: str, algo: str, args, tokenizer, task) -> dict:
    """One warm-up step, then ``args.steps`` measured ones."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(shape, tokenizer, device, torch.bfloat16)
    policy = Policy(model, tokenizer, tune=tune, device=device, seed=0, gradient_checkpointing=True, master_weights=True, max_tokens_per_batch=args.max_tokens)
    cls = get_algorithm(algo)
    settings = (SMOKE_SETTINGS if args.cpu_smoke else ALGORITHM_SETTINGS)[algo]
    config = cls.Config(lr=LEARNING_RATES[tune], max_new_tokens=args.max_new_tokens, **settings)
    algorithm = cls(policy, task, config, seed=0)
    clock = Clock(policy)
    algorithm.setup()
    algorithm.take_step()
    clock.reset()
    samples_before = policy.meter.samples
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        algorithm.take_step()
    synchronize(device)
    row = {
        "model": shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tune": tune,
        "algo": algo,
        "step_seconds": (time.perf_counter() - start) / args.steps,
        "samples_per_step": (policy.meter.samples - samples_before) / args.steps,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
        "sampled_tokens_per_s": clock.tokens["sample"] / clock.seconds["sample"],
        "train_flops_per_s": clock.flops["train"] / clock.seconds["train"],
        "max_new_tokens": args.max_new_tokens,
        "max_tokens_per_batch": args.max_tokens,
    }
    del policy, algorithm, model, clock
    if device.type == "cuda":  # the next run's peak memory counts its own tensors only
        gc.collect()
        torch.cuda.empty_cache()
    return row


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="qwen2.5-0.5b,qwen2.5-1.5b", help=f"comma-separated, any of: {', '.join(SHAPES)}")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run (after one warm-up step)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=8192, help="max_tokens_per_batch: padded positions per scoring / training micro-batch")
    parser.add_argument("--out", default=f"runs/gpu-check-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU, one measured step: the code paths only, no measurement")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.models, args.steps, args.max_new_tokens, args.max_tokens, args.device = "tiny", 1, 8, 256, "cpu"
    elif not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA GPU and torch sees none here; --cpu-smoke runs its code paths on tiny shapes on the CPU")
    else:
        args.device = "cuda"
    args.models = [m for m in args.models.split(",") if m]
    if not args.models or not set(args.models) <= set(SHAPES) or args.steps < 1:
        parser.error(f"--models must be among {', '.join(SHAPES)} and --steps at least 1")
    return args


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    task = CoinArithmetic(num_train=256, num_test=1)
    device = torch.device(args.device)
    peak = matmul_rate(device, 256 if args.cpu_smoke else 8192)
    rows = []
    for shape in args.models:
        tokenizer = sized_tokenizer(SHAPES[shape]["vocab_size"])
        rows += [run(shape, tune, algo, args, tokenizer, task) for tune, algo in RUNS]
    table = pd.DataFrame(rows)
    table["train_share_of_matmul_peak"] = table["train_flops_per_s"] / peak
    table["matmul_flops_per_s"] = peak
    table["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "gpu_check.csv", index=False)
    shown = table.drop(columns=["device", "matmul_flops_per_s", "max_new_tokens", "max_tokens_per_batch"])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\n{table['device'][0]}: bf16 matmul {peak / 1e12:.1f} TFLOP/s; wrote {out / 'gpu_check.csv'}")
    return table


if __name__ == "__main__":
    main()
