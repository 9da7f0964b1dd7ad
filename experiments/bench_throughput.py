"""Throughput of the shared Policy and of our training steps, against Hugging Face / TRL.

    python experiments/bench_throughput.py            # full sizes (many minutes on 2 cores)
    python experiments/bench_throughput.py --quick    # small sizes, a few minutes
    python experiments/bench_throughput.py --smoke    # tiny sizes, seconds: checks that it runs

For two models, (a) the built-in model and (b) a randomly initialised Llama of about 85M
parameters over the built-in character vocabulary (``--quick``: about 11M), it measures

* sampling: ``Policy.sample`` against a plain ``model.generate`` loop (do_sample, top_k=0,
  top_p=1, temperature 1, same prompts, same n per prompt via ``num_return_sequences``, same
  max_new_tokens).  EOS is made unable to end a sample on both sides (generate:
  ``min_new_tokens = max_new_tokens``; the Policy: no EOS ids, no stop strings), so every
  row has exactly ``max_new_tokens`` tokens.  Ratio = our tokens/s / generate's (> 1: ours
  is faster).  Two shapes: a training batch (8 prompts x 4 samples, 64 tokens) for both
  models, and an evaluation pass (128 prompts x 1, 160 tokens: the arithmetic test split's
  greedy pass) for the built-in model, where ``Policy.greedy`` is also timed against
  ``generate(do_sample=False)``.  The verdict line compares each ratio with the decoding
  issue's target (``TARGETS``);
* training: one ``trice`` step and one ``grpo`` step of our algorithms through the Policy,
  against one TRL ``GRPOTrainer`` step with the same prompts per step (M), generations per
  prompt (G) and completion length (forced to T on every side, as above), configured by
  ``trice_rl.trl_adapter.matching_grpo_config`` to make the update our ``grpo`` makes (fp32,
  no gradient checkpointing, beta = 0: no reference model, one update per batch).
  Rewards are synthetic: every other sample of a group counts as correct, so every group
  has a non-zero advantage and both GRPO implementations back-propagate all M·G samples
  (with a random model all rewards would be 0 and our GRPO would skip the backward pass).
  Ratios are our time / TRL's time per step and per drawn sample (< 1: ours is faster);
* achieved FLOP/s: the FLOPs of every matrix product of one call (linear layers, LM head,
  attention; forward and backward; padding included), counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on a warm-up call that is not timed, divided
  by the call's median time; and the fraction of the machine's float32 matmul FLOP/s
  measured in the same run (a square torch.matmul with the same thread count).  For a
  forward that is about 2·N per token (N = non-embedding parameters) plus the LM head and
  attention (``tests/test_bench_throughput.py`` checks it).

Timing is ``torch.utils.benchmark.Timer`` with the script's thread count: ``--repeats``
rounds, in which each side of a comparison (ours, ``generate``) is warmed up and timed once
in turn, so that drifting load hits both alike; the table shows medians.  TRL's step runs
inside ``Trainer.train``, which cannot be called one step at a time: a ``TrainerCallback``
takes the time between the ends of consecutive optimizer steps (the first, counted for its
FLOPs, is the warm-up).
Results go to a CSV (``--out``, default ``runs/throughput/throughput.csv``) together with
the machine (CPU model, cores, threads, load average).  ``--profile`` adds cProfile
summaries of one call of each decoding measurement and one ``grpo`` step, and a torch
operator profile of our decoding calls.
"""

from __future__ import annotations

try:
    import trice_rl  # noqa: F401  (the installed package)
except ModuleNotFoundError:
    raise SystemExit("bench_throughput.py: the trice_rl package is not installed; run `pip install -e .` in the repository first") from None

import argparse
import contextlib
import copy
import cProfile
import csv
import io
import pstats
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.benchmark import Measurement, Timer
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

import envs  # noqa: F401  (registers the environments)
from algorithms import get_algorithm
from envs.arithmetic import ArithmeticTask
from trice_rl.machine import load_average, machine_info, matmul_flops
from trice_rl.policy import Policy


# ------------------------------------------------------------------ settings
@dataclass
class Sizes:
    sample_prompts: int  # prompts per sampling call
    sample_n: int  # samples per prompt
    sample_tokens: int  # max_new_tokens (forced) when sampling
    step_prompts: int  # M: prompts per training step
    step_group: int  # G: generations per prompt (GRPO, TRL)
    step_tokens: int  # T: completion length in training steps
    repeats: int
    big_model: dict = field(default_factory=dict)
    # (prompts, n, max_new_tokens) of a second sampling measurement shaped like an
    # evaluation pass (many rows, long rationales), for the built-in model only: at that
    # length the KV cache's handling dominates, and the 85M model would take many minutes
    eval_sample: tuple[int, int, int] | None = None


# Five timed repeats: with three, the built-in model's grpo step measured 1.13 and then 0.88
# times TRL's on one machine (its steps take half a second; other load moves the median).
FULL = Sizes(8, 4, 64, 4, 4, 48, 5, dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048), (128, 1, 160))
QUICK = Sizes(4, 2, 16, 2, 2, 16, 2, dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1024))
SMOKE = Sizes(2, 2, 4, 2, 2, 4, 1, dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))


# The decoding issue's targets, our tokens/s over generate's: (training shape, evaluation shape).
TARGETS = {"builtin": (2.0, 3.0), "random": (1.5, None)}


# ------------------------------------------------------------------ models
def builtin_model(size: str):
    """The built-in model with the attention plain ``generate`` decodes fastest with on a CPU
    (our decoder has its own); :func:`bench_model` switches to the Policy's for training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trice_rl.builtin_model import GENERATE_ATTENTION_ON_CPU, BuiltinConfig, builtin_model_path

    if size == "random":  # the default build's shape with random weights: the same speed, no build
        config = BuiltinConfig.preset("arithmetic", "default")
        shape = dict(hidden_size=config.hidden_size, num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size)
        return random_llama(shape, attention=GENERATE_ATTENTION_ON_CPU)
    path = builtin_model_path("arithmetic", size=size)
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=GENERATE_ATTENTION_ON_CPU), AutoTokenizer.from_pretrained(path)


def random_llama(shape: dict, seed: int = 0, attention: str | None = None):
    """A random-weight Llama over the built-in character tokenizer (throughput only);
    ``attention``: the attention implementation (transformers' default if None)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from trice_rl.builtin_model import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **({"attn_implementation": attention} if attention else {}),
        **shape,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model, tokenizer


def non_embedding_parameters(model) -> int:
    skip = {id(p) for module in (model.get_input_embeddings(), model.get_output_embeddings()) if module is not None for p in module.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the GPU kernels of scaled_dot_product_attention but not the CPU one
# (the random Llama's attention), whose FLOPs it would count as 0: the same formulas fit.
if torch.ops.aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry:
    register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)(_cpu_sdpa_flop)
    register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)(_cpu_sdpa_backward_flop)


class _GlobalOnly(contextlib.AbstractContextManager):
    """Stands in for FlopCounterMode's module tracker: every FLOP goes to the total."""

    parents = frozenset({"Global"})

    def __exit__(self, *exc_info) -> None:
        return None


class TotalFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` that counts the total only.  Its per-module tracker hooks the
    gradients of module inputs, which fails ("Expected gradient function to be set") on a
    view taken without gradient of a parameter that needs one, as the Policy's decoder
    does with the embedding; a relative: pytorch/pytorch#131753."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()


def counted_flops(fn):
    """``fn()``'s result and the FLOPs of the matrix products it ran, forward and backward."""
    with TotalFlopCounter() as counter:
        result = fn()
    return result, counter.get_total_flops()


def time_interleaved(runs: dict, repeats: int) -> dict[str, Measurement]:
    """Each run's times over ``repeats`` rounds that time every run once in turn, so that
    drifting load hits all alike.  ``blocked_autorange(min_run_time=0)`` warms a run up with
    one call and then times exactly one call."""
    timers = {name: Timer("fn()", globals={"fn": fn}, label=name, num_threads=torch.get_num_threads()) for name, fn in runs.items()}
    rounds: dict[str, list[Measurement]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, timer in timers.items():
            rounds[name].append(timer.blocked_autorange(min_run_time=0))
    return {name: Measurement.merge(measurements)[0] for name, measurements in rounds.items()}


# ------------------------------------------------------------------ the task
def make_task(num_train: int) -> ArithmeticTask:
    task = ArithmeticTask(num_train=num_train, num_validation=1, num_test=1)
    task.stop_strings = ()  # forced lengths: nothing ends a sample early
    return task


def synthetic_correct(count: int) -> list[bool]:
    """Every other sample is 'correct': every group of ≥ 2 has a non-zero advantage."""
    return [i % 2 == 0 for i in range(count)]


def no_eos_policy(model, tokenizer, seed: int = 0) -> Policy:
    policy = Policy(model, tokenizer, tune="full", seed=seed)
    policy.eos_token_ids = []  # EOS may be drawn but never ends a sample: forced lengths
    return policy


# ------------------------------------------------------------------ sampling
def bench_sampling(model, tokenizer, shape: tuple[int, int, int], repeats: int, peak: float, profile: bool, target: float, greedy: bool = False) -> list[dict]:
    """``shape``: prompts, samples per prompt, new tokens per sample; ``greedy``: time
    ``Policy.greedy`` against ``generate(do_sample=False)`` instead (n must be 1);
    ``target``: the least ratio the decoding issue asks for."""
    num_prompts, n, new_tokens = shape
    task = make_task(max(num_prompts, 4))
    prompts = [task.cot_prompt(e.question) for e in task.examples("train")[:num_prompts]]
    policy = no_eos_policy(model, tokenizer)
    eos = sorted({tokenizer.eos_token_id, *(v for v in [model.generation_config.eos_token_id] if isinstance(v, int))})
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    ours_name = "policy.greedy" if greedy else "policy.sample"
    drawing = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)

    def ours():
        samples = policy.greedy(prompts, max_new_tokens=new_tokens) if greedy else policy.sample(prompts, n=n, max_new_tokens=new_tokens)
        assert all(len(ids) == new_tokens for ids in samples.token_ids)
        return samples.num_tokens

    def generate():
        with torch.no_grad():
            out = model.generate(
                **encoded, **drawing, num_return_sequences=n, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
            )
        generated = out.shape[1] - encoded["input_ids"].shape[1]
        assert generated == new_tokens, generated
        return out.shape[0] * generated

    results = {}
    runs = {ours_name: ours, "model.generate": generate}
    counted = {name: counted_flops(fn) for name, fn in runs.items()}  # (tokens, FLOPs) of one call each
    measured = time_interleaved(runs, repeats)
    for name in runs:
        tokens, flops = counted[name]
        seconds = measured[name].median
        results[name] = dict(
            benchmark="greedy" if greedy else "sample",
            implementation=name,
            setting=f"{len(prompts)} prompts x n={n}, {new_tokens} new tokens",
            seconds=seconds,
            samples=len(prompts) * n,
            tokens=tokens,
            tokens_per_s=tokens / seconds,
            model_flops=flops,
        )
    results[ours_name].update(
        ratio=results[ours_name]["tokens_per_s"] / results["model.generate"]["tokens_per_s"], ratio_meaning="tokens/s ours / generate", target=target
    )
    if profile:
        print_profile(ours_name, ours)
        print_op_profile(ours_name, ours)
        print_profile("model.generate", generate)
    return finish(list(results.values()), peak)


# ------------------------------------------------------------------ training steps
def bench_steps(model, tokenizer, sizes: Sizes, peak: float, profile: bool) -> list[dict]:
    m, g, t, repeats = sizes.step_prompts, sizes.step_group, sizes.step_tokens, sizes.repeats
    num_train = m * (2 * repeats + 2)  # fresh examples for every step: one counted, two a round
    rows = [
        run_our_step("trice", model, tokenizer, make_task(num_train), dict(batch_size=m, max_new_tokens=t, init_batch_size=num_train), m, repeats, profile),
        run_our_step("grpo", model, tokenizer, make_task(num_train), dict(batch_size=m, group_size=g, max_new_tokens=t), m * g, repeats, profile),
        run_trl_step(model, tokenizer, make_task(num_train), m, g, t, repeats),
    ]
    trl = rows[-1]
    for row in rows[:2]:
        row["ratio"] = row["seconds"] / trl["seconds"]
        row["ratio_per_sample"] = row["s_per_sample"] / trl["s_per_sample"]
        row["ratio_meaning"] = "time ours / TRL GRPOTrainer"
    return finish(rows, peak)


def run_our_step(name, base_model, tokenizer, task, config_kwargs, samples_per_step, repeats, profile) -> dict:
    cls = get_algorithm(name)

    class Synthetic(cls):
        def correct(self, samples, indices):
            import numpy as np

            return np.array(synthetic_correct(len(samples)))

    model = copy.deepcopy(base_model)
    policy = no_eos_policy(model, tokenizer)
    algorithm = Synthetic(policy, task, cls.Config(lr=1e-5, **config_kwargs), seed=0)
    algorithm.setup()
    _, flops = counted_flops(algorithm.step)
    seconds = time_interleaved({name: algorithm.step}, repeats)[name].median
    if profile and name == "grpo":
        print_profile(f"{name} step", algorithm.step)
    return dict(
        benchmark="train_step",
        implementation=f"ours:{name}",
        setting=_step_setting(config_kwargs["batch_size"], config_kwargs.get("group_size", 1), config_kwargs["max_new_tokens"]),
        seconds=seconds,
        samples=samples_per_step,
        s_per_sample=seconds / samples_per_step,
        model_flops=flops,
    )


def run_trl_step(base_model, tokenizer, task, m, g, t, repeats) -> dict:
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from trice_rl.trl_adapter import matching_grpo_config, task_dataset

    model = copy.deepcopy(base_model)
    counter = TotalFlopCounter()
    counting = contextlib.ExitStack()
    marks: list[float] = []

    class Clock(TrainerCallback):
        """Counts the FLOPs of the first (warm-up) step, then marks the end of every step."""

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                counting.enter_context(counter)

        def on_step_end(self, args, state, control, **kwargs):
            counting.close()
            marks.append(time.perf_counter())

    def synthetic_reward(prompts, completions, **kwargs):
        return [float(c) for c in synthetic_correct(len(completions))]

    with tempfile.TemporaryDirectory() as out:
        # forced lengths, as for ours
        args = matching_grpo_config(out, m, g, t, max_steps=repeats + 1, learning_rate=1e-5, seed=0, generation_kwargs={"min_new_tokens": t})
        trainer = GRPOTrainer(
            model=model, reward_funcs=synthetic_reward, args=args, train_dataset=task_dataset(task), processing_class=tokenizer, callbacks=[Clock()]
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its final metrics
            trainer.train()
    # Step k's time: between the ends of steps k-1 and k; the first step is the warm-up.
    seconds = statistics.median([b - a for a, b in zip(marks, marks[1:])])
    return dict(
        benchmark="train_step",
        implementation="trl:GRPOTrainer",
        setting=_step_setting(m, g, t),
        seconds=seconds,
        samples=m * g,
        s_per_sample=seconds / (m * g),
        model_flops=counter.get_total_flops(),
    )


def _step_setting(m: int, g: int, t: int) -> str:
    return f"M={m} prompts x G={g}, T={t} tokens"


# ------------------------------------------------------------------ output
def finish(rows: list[dict], peak: float) -> list[dict]:
    for row in rows:
        row["flops_per_s"] = row["model_flops"] / row["seconds"]
        row["frac_of_matmul"] = row["flops_per_s"] / peak
    return rows


def _human(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def verdict(rows: list[dict]) -> str:
    """The targets: our decoding at least ``target`` times generate's tokens/s, our GRPO
    step no slower than TRL's."""
    by = {r["implementation"]: r for r in rows}
    parts = []
    for row in rows:
        if "target" in row:
            met = "OK" if row["ratio"] >= row["target"] else "MISSED"
            parts.append(f"{row['implementation']} {row['ratio']:.2f}x generate's tokens/s at {row['setting']} (target {row['target']:g}x: {met})")
    if "ours:grpo" in by:
        ratio = by["ours:grpo"]["ratio"]
        parts.append(f"grpo step {ratio:.2f}x TRL's time ({'OK' if ratio <= 1 else 'SLOWER'})")
    return "targets: " + "; ".join(parts)


def print_profile(title: str, fn, lines: int = 25) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(lines)
    print(f"\n--- cProfile: {title} (sorted by own time) ---")
    print("\n".join(stream.getvalue().splitlines()[:lines + 12]))


# Operator groups of the decoding profile; any other operator is in "other operators".
OP_GROUPS = {
    "linear layers (matmul)": ("aten::mm", "aten::addmm"),
    "attention (matmul, softmax)": ("aten::bmm", "aten::_softmax"),
    "copies (KV cache writes, layouts)": ("aten::copy_", "aten::cat", "aten::fill_"),
    "elementwise (norms, RoPE, SiLU, residuals)": ("aten::mul", "aten::add", "aten::add_", "aten::silu", "aten::pow", "aten::mean", "aten::rsqrt", "aten::sum"),
    "next token (log-softmax, draw, bookkeeping)": (
        "aten::_log_softmax", "aten::argmax", "aten::searchsorted", "aten::cumsum", "aten::gather", "aten::index_add_", "aten::index_put_", "aten::isin",
    ),
}
GROUP_OF_OP = {op: group for group, ops in OP_GROUPS.items() for op in ops}


def print_op_profile(title: str, fn, lines: int = 20) -> None:
    """Where the time goes below Python: torch operators by their own time, then by group;
    the wall time no operator accounts for is Python and dispatch."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    averages = profiler.key_averages()
    print(f"\n--- torch operators: {title} (sorted by own time) ---")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=lines))
    groups: dict[str, float] = {}
    for event in averages:
        group = GROUP_OF_OP.get(event.key, "other operators")
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1e6
    groups["Python and dispatch (wall time outside operators)"] = wall - sum(groups.values())
    print(f"| where the time goes ({title}, {wall:.3f} s wall under the profiler) | s | share |\n|---|---|---|")
    for group, seconds in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"| {group} | {seconds:.3f} | {100 * seconds / wall:.0f}% |")


COLUMNS = [
    "model", "non_embedding_params", "benchmark", "implementation", "setting", "seconds", "samples", "tokens",
    "tokens_per_s", "s_per_sample", "model_flops", "flops_per_s", "frac_of_matmul", "ratio", "ratio_per_sample",
    "ratio_meaning", "target", "matmul_flops_per_s", "cpu", "cores", "threads", "load1_start", "load1_end", "torch",
]


def print_table(rows: list[dict]) -> None:
    header = f"{'model':<22} {'benchmark':<10} {'implementation':<17} {'setting':<34} {'median s':>9} {'tok/s':>8} {'s/sample':>9} {'GFLOP/s':>8} {'%matmul':>8} {'ratio':>7} {'per-smpl':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        def fmt(key, spec):
            value = r.get(key)
            return format(value, spec) if isinstance(value, (int, float)) else ""

        print(
            f"{r['model']:<22} {r['benchmark']:<10} {r['implementation']:<17} {r['setting']:<34} {fmt('seconds', '9.3f')} "
            f"{fmt('tokens_per_s', '8.0f'):>8} {fmt('s_per_sample', '9.3f'):>9} {r['flops_per_s'] / 1e9:8.2f} "
            f"{100 * r['frac_of_matmul']:7.1f}% {fmt('ratio', '7.2f'):>7} {fmt('ratio_per_sample', '8.2f'):>8}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (seconds): checks that the script runs, measures nothing useful")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", default="runs/throughput/throughput.csv", help="CSV to write")
    parser.add_argument("--builtin-size", choices=("auto", "default", "tiny", "random"), default="auto",
                        help="built-in model size; auto: default, or tiny with --quick when default is not built yet, random with --smoke; "
                        "random: the default's shape with random weights (every sample has a forced length, so the same speed, without the build)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (each timed call after its own warm-up call)")
    parser.add_argument("--models", default="builtin,random", help="comma list of builtin, random")
    parser.add_argument("--profile", action="store_true", help="print cProfile summaries of sampling and a grpo step")
    return parser.parse_args(argv)


def resolve_builtin_size(args: argparse.Namespace) -> str:
    if args.builtin_size != "auto":
        return args.builtin_size
    if args.smoke:
        return "random"
    if args.quick:
        from trice_rl.builtin_model import BuiltinConfig, cache_root

        built = (cache_root() / "builtin" / BuiltinConfig.preset("arithmetic", "default").folder_name()).is_dir()
        return "default" if built else "tiny"
    return "default"


def bench_model(which: str, builtin_size: str, sizes: Sizes, peak: float, profile: bool) -> list[dict]:
    """Every measurement of one model (``builtin`` or ``random``), its table printed."""
    started = time.perf_counter()
    if which == "builtin":
        model, tokenizer = builtin_model(builtin_size)
        label = f"builtin:arithmetic:{builtin_size}"
    elif which == "random":
        model, tokenizer = random_llama(sizes.big_model)
        label = "random-llama"
    else:
        raise SystemExit(f"unknown model {which!r}; valid: builtin, random")
    n_params = non_embedding_parameters(model)
    label = f"{label} ({_human(n_params)})"
    print(f"\n== {label}: {n_params:,} non-embedding parameters", flush=True)
    train_target, eval_target = TARGETS[which]
    rows = bench_sampling(model, tokenizer, (sizes.sample_prompts, sizes.sample_n, sizes.sample_tokens), sizes.repeats, peak, profile, train_target)
    if which == "builtin" and sizes.eval_sample:
        for greedy in (False, True):
            rows += bench_sampling(model, tokenizer, sizes.eval_sample, sizes.repeats, peak, profile, eval_target, greedy=greedy)
    model.set_attn_implementation("sdpa")  # training steps, ours and TRL's, on the model as the Policy loads it
    rows += bench_steps(model, tokenizer, sizes, peak, profile)
    for row in rows:
        row.update(model=label, non_embedding_params=n_params)
    print_table(rows)
    print(verdict(rows))
    print(f"({time.perf_counter() - started:.0f} s)", flush=True)
    return rows


def write_csv(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = copy.copy(SMOKE if args.smoke else QUICK if args.quick else FULL)
    if args.repeats:
        sizes.repeats = args.repeats
    machine = machine_info(args.threads)
    load_start = load_average()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch threads {args.threads}, torch {machine['torch']}, load1 {load_start:.2f}")
    if load_start > 0.5 * (machine["cores"] or 1):
        print(f"WARNING: load average {load_start:.2f} on {machine['cores']} cores: other processes compete for the CPU, so "
              "timings are unreliable (with several torch threads each parallel op waits for descheduled peers)")
    matmul_size = 256 if args.smoke else 1024 if args.quick else 2048
    peak = matmul_flops(matmul_size, min_run_time=0.1 if args.smoke else 1.0)
    print(f"float32 matmul ({matmul_size}^2, {args.threads} threads): {peak / 1e9:.1f} GFLOP/s")
    print("model FLOPs: every matrix product of one call (linear layers, LM head, attention; forward and backward; "
          "padding included), counted by torch.utils.flop_counter.FlopCounterMode; times: medians by torch.utils.benchmark")

    builtin_size = resolve_builtin_size(args)
    rows: list[dict] = []
    for which in [w.strip() for w in args.models.split(",") if w.strip()]:
        rows += bench_model(which, builtin_size, sizes, peak, args.profile)
    load_end = load_average()
    for row in rows:
        row.update(machine, matmul_flops_per_s=peak, load1_start=load_start, load1_end=load_end)
    print()
    print_table(rows)
    print(f"\nratio: sample = our tokens/s / generate's (>1: ours faster); train_step = our time / TRL's (<1: ours faster). load1 {load_start:.2f} -> {load_end:.2f}")
    write_csv(rows, Path(args.out))
    return rows


if __name__ == "__main__":
    main()
