"""The learning benchmark: every method from the same built-in model, under one sample
budget, with its learning rate chosen on a validation split, over several seeds.

    python experiments/benchmark.py                  # the "quick" preset: three settings, 640 samples per run
    python experiments/benchmark.py --preset paper   # 300 steps of 32 over 150 examples, 8 evaluations per run
    python experiments/benchmark.py --preset full    # the sizes of the paper's BBH runs
    python experiments/benchmark.py --settings arithmetic --methods trice,rft --seeds 0
    python experiments/benchmark.py --preset smoke   # seconds, tiny models (the tests use it)
    python experiments/report.py runs/benchmark      # the README section, from results.csv

Per setting (a task and the built-in model of its family):

1. The untuned base model: greedy and majority-of-k accuracy on the test split, and its
   per-example sampled accuracy on the training split, whose lowest quartile is tracked as
   "the hardest examples" (the share of them for which a method holds a correct rationale is
   logged as ``tracked_solved``).
2. The learning-rate search: each method, the first seed, every learning rate of its grid (the
   grid of its tune mode), the full budget; greedy accuracy on the validation split picks
   the rate (ties: the smaller).  Test items are never used to choose anything.
3. The remaining seeds at the chosen rate.  Every run evaluates greedy test accuracy every
   ``eval_every`` samples (at step 0, runs that start from the base model log the base
   model's) and majority-of-k at the end (search runs: only the chosen one, afterwards).
4. TRL's ``GRPOTrainer`` on the same model, the same prompts per step and generations, the
   same number of samples and our ``grpo``'s chosen learning rate, once per seed: its test
   accuracy and its wall time per sample next to ours.

Every method draws 32 samples per optimizer step (TRICE: 32 examples × 1 proposal;
trice-k and rft: 8 × 4; GRPO: 4 prompts × 8; the supervised methods are charged one sample
per target), so an equal sample budget is also an equal number of optimizer steps, except
for STaR, whose fine-tuning phases draw no samples (capped at 200 steps per iteration).
Training compute differs, so every result is reported twice: at the end of the samples
budget, and at equal training FLOPs (``eval_acc_greedy_at_matched_train_flops``: per
setting and seed, the last evaluation of each chosen run at or before the largest training
FLOPs that every sampling method reached; a reading of the curves, not a separate run).

Writes into ``--out``: ``results.csv`` (one row per setting, method and seed),
``lr_search.csv``, ``base.csv``, ``trl_grpo.csv``, ``<setting>/lr<rate>/<algo>-seed<k>.csv``
(the runs), and per setting ``curves_<setting>.png`` (test accuracy against samples, band
over seeds), ``variance_<setting>.png`` (TRICE vs TRICE without control variate) and
``hardest_<setting>.png``, ``summary.csv`` and ``config.json``.  Runs go to ``--workers``
processes (default one per core, each with its share of the torch threads).  Finished runs,
base-model measurements (``<setting>/base.json``) and TRL's runs
(``<setting>/trl-grpo/lr<rate>-seed<k>.json``) are skipped and an interrupted run
continues from its checkpoint, so a stopped benchmark resumes where it stopped.
"""

from __future__ import annotations

try:
    import trice_rl  # noqa: F401  (the installed package)
except ModuleNotFoundError:
    raise SystemExit("benchmark.py: the trice_rl package is not installed; run `pip install -e .` in the repository first") from None

import argparse
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

import envs  # noqa: F401  (registers the environments)
from algorithms import get_algorithm
from envs import Task, make_task
from trice_rl.budget import Budget, BudgetMeter
from trice_rl.evaluation import EvalConfig, evaluate
from trice_rl.machine import load_average, machine_info
from trice_rl.plotting import matched_accuracy, plot_curves
from trice_rl.policy import Policy
from trice_rl.runner import Runner, RunConfig, run_files

METHODS = ("prompt-tuning", "cot-sft", "star", "rft", "trice-nocv", "trice", "trice-k", "grpo")
SAMPLES_PER_STEP = 32
# Per-method batch shapes giving SAMPLES_PER_STEP samples per optimizer step.
METHOD_SHAPES = {
    "prompt-tuning": {"batch_size": 32},
    "cot-sft": {"batch_size": 32},
    # capped near STaR's 10th iteration (40·1.2^9 ≈ 206 steps): uncapped, the full preset's
    # ~60 iterations would take tens of millions of steps; the quick preset never reaches it
    "star": {"batch_size": 32, "max_inner_steps": 200},
    "rft": {"batch_size": 8, "particles": 4},
    "trice-nocv": {"batch_size": 32},
    "trice": {"batch_size": 32},
    "trice-k": {"batch_size": 8, "num_proposals": 4},
    "grpo": {"batch_size": 4, "group_size": 8},
}
LEARNING_RATES = {"full": (3e-5, 1e-4, 3e-4), "prompt": (0.1, 0.3, 1.0)}


@dataclass(frozen=True)
class Setting:
    env: str
    family: str  # the built-in model family
    env_kwargs: dict = field(default_factory=dict)
    num_train: int | None = None  # overrides the preset's (the large-training-set regime)

    def model(self, size: str = "default") -> str:
        return f"builtin:{self.family}:{size}"


SETTINGS = {
    "arithmetic": Setting("trice_rl/Arithmetic-v0", "arithmetic"),
    # the other regime: a large training set, each example visited about once
    "arithmetic-large": Setting("trice_rl/Arithmetic-v0", "arithmetic", num_train=2000),
    "boolean_expressions": Setting("trice_rl/BBH-boolean_expressions-v0", "boolean_expressions", {"train_source": "procedural"}),
    "multistep_arithmetic_two": Setting("trice_rl/BBH-multistep_arithmetic_two-v0", "multistep_arithmetic_two", {"train_source": "procedural"}),
}

PRESETS = {
    # The three settings: 150 training examples (the paper's BBH count), each visited about
    # 4 times, 20 optimizer steps.  On a 2-core CPU (two workers) the three settings took
    # 8,260 s (multistep_arithmetic_two 3,967), more than twice the hour this preset aims at;
    # with the current decoder, on a slower CPU (77 GFLOP/s matmul), the three in one
    # invocation took 7,711 s.
    "quick": dict(
        settings=("arithmetic", "boolean_expressions", "multistep_arithmetic_two"),
        num_train=150,
        num_validation=100,
        num_test=200,  # arithmetic; the BBH settings test on all 250 real items
        budget_samples=640,
        eval_every=320,
        variance_every=5,
        majority_k=4,
        base_samples_per_example=4,
        seeds=(0, 1, 2),
        model_size="default",
    ),
    # The paper's BBH regime (150 examples, 500 steps of 32: about 100 visits each) and the
    # large-training-set regime; about 12 times the quick preset's compute per run.
    "full": dict(
        settings=("arithmetic", "arithmetic-large", "boolean_expressions", "multistep_arithmetic_two"),
        num_train=150,
        num_validation=250,
        num_test=500,
        budget_samples=16000,
        eval_every=1600,
        variance_every=25,
        majority_k=8,
        base_samples_per_example=8,
        seeds=(0, 1, 2),
        model_size="default",
    ),
    # The paper's regime within a CPU's reach: 150 training examples, 300 optimizer steps of
    # 32 samples (each example visited about 64 times), 8 held-out evaluations per run so
    # that over-fitting shows in the curves.
    "paper": dict(
        settings=("arithmetic", "boolean_expressions", "multistep_arithmetic_two"),
        num_train=150,
        num_validation=100,
        num_test=200,
        budget_samples=9600,
        eval_every=1200,
        variance_every=25,
        majority_k=4,
        base_samples_per_example=4,
        seeds=(0, 1, 2),
        model_size="default",
    ),
    # Seconds, with the tiny built-in models whose accuracy means nothing: for tests.
    "smoke": dict(
        settings=("arithmetic",),
        num_train=16,
        num_validation=8,
        num_test=8,
        budget_samples=48,
        eval_every=32,
        variance_every=1,
        majority_k=2,
        base_samples_per_example=2,
        seeds=(0, 1),
        model_size="tiny",
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--settings", help=f"comma-separated, any of: {', '.join(SETTINGS)} (default: the preset's)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, any of: {', '.join(METHODS)}")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the preset's); the first is the search seed")
    parser.add_argument("--budget-samples", type=int, help="samples per run (default: the preset's)")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL's GRPOTrainer")
    parser.add_argument("--out", default="runs/benchmark")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="runs in parallel, each on cores/workers torch threads (default: one per core)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    args.settings = _choices(parser, args.settings or ",".join(preset["settings"]), SETTINGS, "setting")
    args.methods = _choices(parser, args.methods, METHODS, "method")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(preset["seeds"])
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.budget_samples is not None:
        if args.budget_samples <= 0:
            parser.error("--budget-samples must be positive")
        preset["budget_samples"] = args.budget_samples
    args.sizes = preset
    return args


def _choices(parser: argparse.ArgumentParser, text: str, valid, what: str) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in valid]
    if unknown or not chosen:
        parser.error(f"unknown {what} {', '.join(unknown) or '(none)'}; valid: {', '.join(valid)}")
    return chosen


# ------------------------------------------------------------------------- the task
def setting_task(name: str, sizes: dict) -> Task:
    setting = SETTINGS[name]
    num_train = setting.num_train or sizes["num_train"]
    kwargs = {"num_train": num_train, "num_validation": sizes["num_validation"]} | setting.env_kwargs
    if setting.family == "arithmetic":
        kwargs["num_test"] = sizes["num_test"]
    return make_task(setting.env, **kwargs)


def hardest_quartile(policy: Policy, task: Task, samples_per_example: int, max_new_tokens: int, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """The base model's sampled accuracy per training example (not charged), and the indices
    of the lowest quartile (ties broken by index, so the set is fixed)."""
    train = task.examples("train")
    prompts = [task.cot_prompt(e.question) for e in train]
    with policy.meter.paused():
        samples = policy.sample(prompts, n=samples_per_example, max_new_tokens=max_new_tokens, stop=task.stop_strings, seed=seed)
    targets = [e.answer for e in train for _ in range(samples_per_example)]
    accuracy = task.score(samples.texts, targets).reshape(len(train), samples_per_example).mean(1)
    order = np.lexsort((np.arange(len(train)), accuracy))
    return sorted(int(i) for i in order[: max(1, len(train) // 4)]), accuracy


# ------------------------------------------------------------------------- the runs
def method_config(method: str, lr: float, max_new_tokens: int):
    return get_algorithm(method).Config(lr=lr, max_new_tokens=max_new_tokens, **METHOD_SHAPES[method])


def run_once(setting: str, method: str, lr: float, seed: int, args, tracked: list[int], base_greedy: float, majority: bool) -> dict:
    """One (method, learning rate, seed) run, or its result if it already finished.

    CoT methods tuning the whole model start from the base model itself, whose test accuracy
    the base run measured: step 0 logs that instead of evaluating it again.  ``majority``:
    end with majority-of-k on the test split (search runs skip it; the chosen one gets it
    afterwards from ``final_majority``)."""
    sizes = args.sizes
    folder = run_folder(args, setting, lr)
    csv_path, _ = run_files(folder, method, seed)
    seconds_path = folder / f"{method}-seed{seed}.seconds.json"
    if csv_path.exists():
        last = pd.read_csv(csv_path).iloc[-1]
        if pd.notna(last.get("val_acc_greedy")):
            seconds = json.loads(seconds_path.read_text()) if seconds_path.exists() else {}
            return last.to_dict() | seconds | {"reused": True}
    task = setting_task(setting, sizes)
    max_new_tokens = task.max_new_tokens
    cls = get_algorithm(method)
    policy = method_policy(setting, cls, seed, args)
    algorithm = cls(policy, task, method_config(method, lr, max_new_tokens), seed=seed)
    starts_from_base = cls.prompt_kind == "cot" and cls.default_tune in (None, "full")
    run_config = RunConfig(
        budget=Budget(samples=sizes["budget_samples"]),
        eval_every=sizes["eval_every"],
        eval=EvalConfig(split="test", majority_k=sizes["majority_k"] if majority else 0, max_new_tokens=max_new_tokens),
        variance_every=sizes["variance_every"] if method in ("trice", "trice-nocv") else 0,
        variance_draws=4,
        variance_batch=8,
        tracked_examples=tuple(tracked),
        final_validation=EvalConfig(split="validation", majority_k=0, max_new_tokens=max_new_tokens),
        initial_eval={"eval_acc_greedy": base_greedy} if starts_from_base else None,
    )
    started = time.perf_counter()
    outcome = Runner(algorithm, run_config, folder, progress=False).run(resume=True)
    seconds = {"run_seconds": time.perf_counter() - started}  # training and evaluation
    seconds_path.write_text(json.dumps(seconds))
    return outcome | seconds | {"reused": False}


def final_majority(setting: str, method: str, lr: float, seed: int, args) -> dict:
    """Majority-of-k test accuracy of a finished run, from the parameters in its final
    checkpoint, with the seed the run's own final evaluation would have used (so the same
    number)."""
    sizes = args.sizes
    cls = get_algorithm(method)
    policy = method_policy(setting, cls, seed, args)
    _, checkpoint = run_files(run_folder(args, setting, lr), method, seed)
    policy.load_tunable_state_dict(torch.load(checkpoint, weights_only=False)["policy"])
    task = setting_task(setting, sizes)
    config = EvalConfig(split="test", majority_k=sizes["majority_k"], max_new_tokens=task.max_new_tokens, greedy=False)
    return evaluate(policy, task, config, prompt_kind=cls.prompt_kind, seed=seed)


def kept(path: Path, compute, *compute_args):
    """``compute(*compute_args)``, a JSON value, kept at ``path``: a resumed benchmark reads
    it instead of measuring it again."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute(*compute_args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def method_policy(setting: str, cls, seed: int, args) -> Policy:
    """The setting's built-in model, tunable as the method needs."""
    return Policy.from_pretrained(SETTINGS[setting].model(args.sizes["model_size"]), tune=cls.default_tune or "full", seed=seed, meter=BudgetMeter())


def run_folder(args, setting: str, lr: float) -> Path:
    return Path(args.out) / setting / f"lr{lr:g}"


def trl_file(out: Path, setting: str, lr: float, seed: int) -> Path:
    """Where TRL's run of a setting, rate and seed is kept."""
    return out / setting / "trl-grpo" / f"lr{lr:g}-seed{seed}.json"


def learning_rates(method: str) -> tuple[float, ...]:
    return LEARNING_RATES[get_algorithm(method).default_tune or "full"]


def run_base(setting: str, args) -> dict:
    """The untuned model's accuracies (``row``) and the hardest quartile of the training
    examples (``tracked``)."""
    sizes = args.sizes
    task = setting_task(setting, sizes)
    max_new_tokens = task.max_new_tokens
    started = time.perf_counter()
    base = Policy.from_pretrained(SETTINGS[setting].model(sizes["model_size"]), seed=0, meter=BudgetMeter())
    tracked, base_train_accuracy = hardest_quartile(base, task, sizes["base_samples_per_example"], max_new_tokens)
    row = {"setting": setting, "method": "base", "seed": 0, "train_acc_sampled": float(base_train_accuracy.mean())}
    row |= evaluate(base, task, EvalConfig(split="test", majority_k=sizes["majority_k"], max_new_tokens=max_new_tokens))
    row |= {"val_acc_greedy": evaluate(base, task, EvalConfig(split="validation", majority_k=0, max_new_tokens=max_new_tokens))["eval_acc_greedy"]}
    row |= {"hardest_quartile_base_acc": float(base_train_accuracy[tracked].mean()), "hardest_quartile_size": len(tracked), "wall_seconds": time.perf_counter() - started}
    return {"row": row, "tracked": tracked}


def _init_worker(threads: int) -> None:
    """Each worker process runs single runs with its share of the cores: small models
    sample far faster on one thread per process than on several threads in one."""
    import warnings

    import torch

    torch.set_num_threads(threads)
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


def _final_columns(outcome: dict) -> dict:
    keys = ("eval_acc_greedy", "eval_acc_majority", "eval_acc_sampled", "val_acc_greedy", "samples_drawn", "grad_steps", "tokens_generated", "train_flops", "wall_seconds", "run_seconds", "tracked_solved")
    return {k: outcome.get(k, float("nan")) for k in keys}


# ---------------------------------------------------------------------- TRL's GRPO
def run_trl_grpo(setting: str, lr: float, seed: int, args) -> dict:
    """TRL's GRPOTrainer with our grpo's shape and chosen learning rate, for one of our seeds;
    our evaluation on the result.  The loss is TRL's ``dr_grpo`` (a constant divisor, which Adam
    ignores), rewards scaled by the group std, constant learning rate, no KL: our ``grpo``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from trice_rl.builtin_model import CPU_ATTENTION, resolve_model_path
    from trice_rl.trl_adapter import task_dataset, task_reward

    sizes = args.sizes
    out = trl_file(Path(args.out), setting, lr, seed).parent
    task = setting_task(setting, sizes)
    shape = METHOD_SHAPES["grpo"]
    prompts_per_step, group = shape["batch_size"], shape["group_size"]
    steps = -(-sizes["budget_samples"] // (prompts_per_step * group))
    path = resolve_model_path(SETTINGS[setting].model(sizes["model_size"]))
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=CPU_ATTENTION)  # as the Policy loads it
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # for TRL's generate; the Policy pads its own batches
    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=prompts_per_step * group,
        num_generations=group,
        max_completion_length=task.max_new_tokens,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        loss_type="dr_grpo",
        scale_rewards="group",
        beta=0.0,
        temperature=1.0,
        max_grad_norm=1.0,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=task_reward(task), args=config, train_dataset=task_dataset(task), processing_class=tokenizer)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    seconds = time.perf_counter() - started
    policy = Policy(trainer.model, tokenizer, seed=seed, meter=BudgetMeter())
    accuracy = evaluate(policy, task, EvalConfig(split="test", majority_k=sizes["majority_k"], max_new_tokens=task.max_new_tokens), seed=seed)
    samples = steps * prompts_per_step * group
    return {"setting": setting, "method": "trl-grpo", "lr": lr, "seed": seed, "samples_drawn": samples, "grad_steps": steps, "wall_seconds": seconds, "trl_s_per_sample": seconds / samples} | accuracy


# ---------------------------------------------------------------------- the plots
def plot_setting(setting: str, args) -> None:
    """Curves of the chosen runs: test accuracy, TRICE's estimator variance, the hardest
    quartile holding a correct rationale."""
    folder = Path(args.out)
    search = pd.read_csv(folder / "lr_search.csv") if (folder / "lr_search.csv").exists() else None
    runs = chosen_runs(folder, setting, search)
    if runs.empty:
        return
    title = f"{setting}: built-in model, {args.sizes['budget_samples']} samples"
    plot_curves(runs, folder / f"curves_{setting}.png", title=title)
    plot_curves(runs, folder / f"curves_flops_{setting}.png", x="train_flops", title=f"{setting}: built-in model, against training FLOPs")
    variance = runs[runs["algo"].isin(["trice", "trice-nocv"])]
    if variance["grad_variance"].notna().any():
        plot_curves(variance, folder / f"variance_{setting}.png", y="grad_variance", title=f"{setting}: gradient-estimator variance", log_y=True)
    hardest = runs[runs["algo"].isin(["trice", "star", "rft"])]
    if hardest["tracked_solved"].notna().any():
        plot_curves(hardest, folder / f"hardest_{setting}.png", y="tracked_solved", title=f"{setting}: hardest quartile holding a correct rationale")


def with_matched_flops(results: pd.DataFrame, folder: Path, search: pd.DataFrame) -> pd.DataFrame:
    """``results`` with each chosen run's test greedy accuracy at equal training FLOPs."""
    matched = []
    for setting in results["setting"].unique():
        runs = chosen_runs(folder, setting, search)
        if "train_flops" in runs and runs["train_flops"].notna().all():
            matched.append(matched_accuracy(runs).rename(columns={"algo": "method"}).assign(setting=setting))
    if not matched:
        return results
    return results.merge(pd.concat(matched), on=["setting", "method", "seed"], how="left")


def chosen_runs(folder: Path, setting: str, search: pd.DataFrame | None) -> pd.DataFrame:
    """The per-step rows of every run at its method's chosen learning rate."""
    frames = []
    rows = [] if search is None else search[(search["setting"] == setting) & search["chosen"]].itertuples()
    chosen = {row.method: row.lr for row in rows}
    for method, lr in chosen.items():
        for path in sorted((folder / setting / f"lr{lr:g}").glob(f"{method}-seed*.csv")):
            frames.append(pd.read_csv(path))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    transformers_logging.disable_progress_bar()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    if previous and previous.get("preset") != json.loads(json.dumps(args.sizes)):  # finished runs are reused: only with the same sizes
        raise SystemExit(f"benchmark.py: error: {out} holds a benchmark with other sizes ({previous.get('preset')}); choose another --out")
    command = " ".join(["python"] + sys.argv)
    config = {
        "command": command,
        "preset": args.sizes,
        "settings": {name: dataclasses.asdict(SETTINGS[name]) for name in args.settings},
        "methods": args.methods,
        "method_shapes": METHOD_SHAPES,
        "learning_rates": LEARNING_RATES,
        "seeds": args.seeds,
        "machine": machine_info() | {"load1_start": load_average()},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    started = time.perf_counter()
    trl_kept = set(out.glob("*/trl-grpo/*.json"))
    outcomes, bases, trl_rows = schedule(args)
    search_seed = args.seeds[0]
    search, chosen = [], {}
    for s in args.settings:
        for m in args.methods:
            chosen[s, m] = choose_rate(outcomes, s, m, search_seed)
            for lr in learning_rates(m):
                outcome = outcomes[s, m, lr, search_seed]
                search.append({"setting": s, "method": m, "lr": lr, "seed": search_seed, "val_acc_greedy": outcome["val_acc_greedy"], "test_acc_greedy": outcome["eval_acc_greedy"], "chosen": lr == chosen[s, m]})
    pd.DataFrame(search).to_csv(out / "lr_search.csv", index=False)
    pd.DataFrame(bases.values()).to_csv(out / "base.csv", index=False)
    results = [
        {"setting": s, "method": m, "lr": chosen[s, m], "seed": seed} | _final_columns(outcomes[s, m, chosen[s, m], seed])
        for s in args.settings
        for m in args.methods
        for seed in args.seeds
    ]
    results = with_matched_flops(pd.DataFrame(results), out, pd.DataFrame(search))
    results.to_csv(out / "results.csv", index=False)
    if trl_rows:
        pd.DataFrame(trl_rows).to_csv(out / "trl_grpo.csv", index=False)
    for setting in args.settings:
        plot_setting(setting, args)
    table = summary_table(results, pd.DataFrame(bases.values()))
    table.to_csv(out / "summary.csv", index=False)
    config["wall_seconds"] = time.perf_counter() - started
    config["machine"]["load1_end"] = load_average()
    # Every invocation that wrote into this folder, so the report can say what a resumed
    # benchmark's time covers.
    reused = sum(1 for outcome in outcomes.values() if outcome.get("reused"))
    trl_reused = sum(trl_file(out, r["setting"], r["lr"], r["seed"]) in trl_kept for r in trl_rows)
    config["invocations"] = previous.get("invocations", []) + [
        {"command": command, "wall_seconds": config["wall_seconds"], "runs": len(outcomes), "runs_reused": reused, "trl_runs": len(trl_rows), "trl_runs_reused": trl_reused}
    ]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", formatters={"lr": lambda v: f"{v:g}"}))
    if trl_rows:
        print(pd.DataFrame(trl_rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return table


# Relative cost of one run (seconds with evaluation, multistep_arithmetic_two search runs at
# the quick sizes: star 320, trice-nocv 170, trice 165, grpo 150, rft 140, cot-sft 108,
# prompt-tuning 33): the longest runs start first, so that the last ones to finish are
# short and no worker idles long at the end.
METHOD_COST = {"star": 3, "trice-nocv": 1.6, "trice": 1.5, "trice-k": 1.4, "grpo": 1.4, "rft": 1.3, "cot-sft": 1, "prompt-tuning": 0.3}


def choose_rate(outcomes: dict, setting: str, method: str, seed: int) -> float:
    """The rate of best validation greedy accuracy (ties: the smaller)."""
    return max(learning_rates(method), key=lambda lr: (outcomes[setting, method, lr, seed]["val_acc_greedy"], -lr))


def schedule(args) -> tuple[dict, dict, list[dict]]:
    """Every run of the benchmark on a pool of workers, each started as soon as what it
    needs is known: a setting's search once its base model is measured, a method's other
    seeds (and the majority-of-k of its chosen search run, and TRL's GRPOTrainer for grpo, every seed)
    once its search is done.  Returns the run outcomes by (setting, method, lr, seed), the
    base rows by setting and TRL's rows."""
    search_seed = args.seeds[0]
    outcomes, bases, tracked, majorities, trl_rows = {}, {}, {}, {}, []
    runs_total = len(args.settings) * sum(len(learning_rates(m)) + len(args.seeds) - 1 for m in args.methods)
    bar = tqdm(total=runs_total, desc="benchmark runs", unit="run", disable=args.no_progress)
    completion_tokens = {s: setting_task(s, args.sizes).max_new_tokens for s in args.settings}
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        pending = {}

        def submit(kind: str, key: tuple, fn, *fn_args) -> None:
            pending[pool.submit(fn, *fn_args)] = (kind, key)

        def submit_runs(jobs: list[tuple[str, str, float, int]], majority: bool) -> None:
            for s, m, lr, seed in sorted(jobs, key=lambda job: -METHOD_COST[job[1]] * completion_tokens[job[0]]):
                submit("run", (s, m, lr, seed), run_once, s, m, lr, seed, args, tracked[s], bases[s]["eval_acc_greedy"], majority)

        for s in sorted(args.settings, key=lambda s: -completion_tokens[s]):
            submit("base", (s,), kept, Path(args.out) / s / "base.json", run_base, s, args)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                kind, key = pending.pop(future)
                result = future.result()
                if kind == "base":
                    (s,) = key
                    bases[s], tracked[s] = result["row"], result["tracked"]
                    bar.write(f"[{s}] base model: test greedy {bases[s]['eval_acc_greedy']:.3f}, majority {bases[s]['eval_acc_majority']:.3f}, validation {bases[s]['val_acc_greedy']:.3f}")
                    submit_runs([(s, m, lr, search_seed) for m in args.methods for lr in learning_rates(m)], majority=False)
                elif kind == "run":
                    outcomes[key] = result
                    bar.update()
                    bar.write(f"  {key[0]} {key[1]} lr {key[2]:g} seed {key[3]}: test greedy {result['eval_acc_greedy']:.3f}, validation {result['val_acc_greedy']:.3f}, {result.get('run_seconds', float('nan')):.0f} s")
                    s, m, _, seed = key
                    if seed == search_seed and all((s, m, lr, seed) in outcomes for lr in learning_rates(m)):
                        lr = choose_rate(outcomes, s, m, seed)
                        submit("majority", (s, m, lr, seed), kept, run_folder(args, s, lr) / f"{m}-seed{seed}.majority.json", final_majority, s, m, lr, seed, args)
                        submit_runs([(s, m, lr, other) for other in args.seeds[1:]], majority=True)
                        if m == "grpo" and not args.no_trl:
                            for trl_seed in args.seeds:
                                submit("trl", (s, trl_seed), kept, trl_file(Path(args.out), s, lr, trl_seed), run_trl_grpo, s, lr, trl_seed, args)
                elif kind == "majority":
                    majorities[key] = result
                else:
                    trl_rows.append(result)
                    bar.write(f"  {result['setting']} TRL GRPOTrainer seed {result['seed']}: test greedy {result['eval_acc_greedy']:.3f}, {result['trl_s_per_sample']:.4f} s/sample")
        bar.close()
    for key, result in majorities.items():
        outcomes[key] = outcomes[key] | result
    return outcomes, bases, sorted(trl_rows, key=lambda row: (args.settings.index(row["setting"]), row["seed"]))


def summary_table(results: pd.DataFrame, bases: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the final test accuracies, per setting and method."""
    columns = [c for c in ("eval_acc_greedy", "eval_acc_greedy_at_matched_train_flops", "eval_acc_majority") if c in results]
    table = results.groupby(["setting", "method"], sort=False)[columns].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table["lr"] = results.groupby(["setting", "method"], sort=False)["lr"].first()
    table["seeds"] = results.groupby(["setting", "method"], sort=False)["seed"].nunique()
    table = table.reset_index()
    base = bases.rename(columns={"eval_acc_greedy": "eval_acc_greedy_mean", "eval_acc_majority": "eval_acc_majority_mean"})
    base = base.assign(seeds=1)[["setting", "method", "eval_acc_greedy_mean", "eval_acc_majority_mean", "seeds"]]
    return pd.concat([base, table], ignore_index=True).sort_values("setting", kind="stable")


if __name__ == "__main__":
    main()
