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
   grid of its tune mode; ``--lrs`` replaces the full-tuning grid, and one rate means no
   search), the full budget; greedy accuracy on the validation split picks the rate (ties:
   the smaller).  Test items are never used to choose anything.
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
processes (default one per core, each with its share of the torch threads).  Finished runs
(the runner's ``<algo>-seed<k>.result.json``, where a chosen search run's majority-of-k is
added afterwards), base-model measurements (``<setting>/base.json``) and TRL's runs
(``<setting>/trl-grpo/lr<rate>-seed<k>.json``) are read instead of run again and an
interrupted run continues from its checkpoint, so a stopped benchmark resumes where it
stopped.
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
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

import envs  # noqa: F401  (registers the environments)
from algorithms import get_algorithm
from envs import Task, make_task
from trice_rl.budget import Budget, BudgetMeter
from trice_rl.evaluation import EvalConfig, evaluate, hardest_quartile
from trice_rl.machine import load_average, machine_info, matmul_flops
from trice_rl.options import check_values, field_types, parse_assignments
from trice_rl.plotting import matched_accuracy, plot_curves
from trice_rl.policy import Policy
from trice_rl.runner import Runner, RunConfig, add_to_result, atomic_write_text, finished_result, load_final_parameters

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
# Over 300 steps 1e-4 already over-fits (docs/benchmark/notes-2026-12-01.md): the paper
# preset's grid is a factor of 3 lower.
PRESET_LEARNING_RATES = {"paper": {"full": (1e-5, 3e-5, 1e-4), "prompt": (0.1, 0.3, 1.0)}}


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

@dataclass(frozen=True)
class Sizes:
    """What a benchmark measures; finished runs are reused only under the same sizes."""

    settings: tuple[str, ...]
    num_train: int  # training examples (a setting's own ``num_train`` overrides it)
    num_validation: int  # items that choose the learning rate
    num_test: int  # arithmetic's test items (the BBH settings test on all 250 real items)
    budget_samples: int  # samples per run
    eval_every: int  # samples between held-out test evaluations
    variance_every: int  # TRICE's optimizer steps between estimator-variance probes
    majority_k: int  # samples per test item for majority-of-k
    base_samples_per_example: int  # the base model's samples per training example
    seeds: tuple[int, ...]  # the first is the search seed
    model_size: str  # the built-in models' size


# The three settings: 150 training examples (the paper's BBH count), each visited about 4
# times, 20 optimizer steps.  Measured times: docs/benchmark.
QUICK = Sizes(
    settings=("arithmetic", "boolean_expressions", "multistep_arithmetic_two"),
    num_train=150,
    num_validation=100,
    num_test=200,
    budget_samples=640,
    eval_every=320,
    variance_every=5,
    majority_k=4,
    base_samples_per_example=4,
    seeds=(0, 1, 2),
    model_size="default",
)
PRESETS = {
    "quick": QUICK,
    # The paper's BBH regime (150 examples, 500 steps of 32: about 100 visits each) and the
    # large-training-set regime; about 12 times the quick preset's compute per run.
    "full": dataclasses.replace(
        QUICK,
        settings=("arithmetic", "arithmetic-large", "boolean_expressions", "multistep_arithmetic_two"),
        num_validation=250,
        num_test=500,
        budget_samples=16000,
        eval_every=1600,
        variance_every=25,
        majority_k=8,
        base_samples_per_example=8,
    ),
    # The paper's regime within a CPU's reach: 300 optimizer steps of 32 samples (each
    # example visited about 64 times), 8 held-out evaluations per run so that over-fitting
    # shows in the curves.
    "paper": dataclasses.replace(QUICK, budget_samples=9600, eval_every=1200, variance_every=25),
    # Seconds, with the tiny built-in models whose accuracy means nothing: for tests.
    "smoke": dataclasses.replace(
        QUICK,
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


@dataclass(frozen=True)
class Plan:
    """One invocation: the sizes, what to run, where, and on how many worker processes."""

    sizes: Sizes
    settings: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    out: Path
    workers: int
    trl: bool = True
    progress: bool = True
    learning_rates: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(LEARNING_RATES))  # the grid per tune mode
    method_shapes: dict[str, dict] = field(default_factory=lambda: dict(METHOD_SHAPES))  # config fields per method (with --set)

    @property
    def search_seed(self) -> int:
        return self.seeds[0]


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--settings", help=f"comma-separated, any of: {', '.join(SETTINGS)} (default: the preset's)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, any of: {', '.join(METHODS)}")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the preset's); the first is the search seed")
    parser.add_argument("--budget-samples", type=int, help="samples per run (default: the preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a config field for every selected method that has it (repeatable), e.g. --set memory_max_reuse=4; a folder holding runs with other values is refused")
    parser.add_argument("--lrs", help="comma-separated learning rates of the fully tuned methods, replacing the preset's grid (one rate: no search)")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL's GRPOTrainer")
    parser.add_argument("--out", default="runs/benchmark")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="runs in parallel, each on cores/workers torch threads (default: one per core)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    sizes = PRESETS[args.preset]
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else sizes.seeds
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.budget_samples is not None:
        if args.budget_samples <= 0:
            parser.error("--budget-samples must be positive")
        sizes = dataclasses.replace(sizes, budget_samples=args.budget_samples)
    rates = dict(PRESET_LEARNING_RATES.get(args.preset, LEARNING_RATES))
    if args.lrs:
        try:
            rates["full"] = tuple(sorted({float(lr) for lr in args.lrs.split(",")}))
        except ValueError:
            parser.error(f"--lrs must be comma-separated numbers, got {args.lrs!r}")
        if not all(0 < lr < float("inf") for lr in rates["full"]):
            parser.error(f"--lrs must be positive, got {args.lrs!r}")
    methods = _choices(parser, args.methods, METHODS, "method")
    return Plan(
        sizes=sizes,
        settings=_choices(parser, args.settings or ",".join(sizes.settings), SETTINGS, "setting"),
        methods=methods,
        seeds=seeds,
        out=Path(args.out),
        workers=args.workers,
        trl=not args.no_trl,
        progress=not args.no_progress,
        learning_rates=rates,
        method_shapes=_method_shapes(parser, methods, args.set),
    )


def _method_shapes(parser: argparse.ArgumentParser, methods: tuple[str, ...], assignments: list[str]) -> dict[str, dict]:
    """Each selected method's config fields: its batch shape and the ``--set`` values of the
    fields it has (the rate and the completion length are the benchmark's own)."""
    try:
        overrides = parse_assignments(assignments)
    except ValueError as error:
        parser.error(str(error))
    own = sorted({"lr", "max_new_tokens"} & set(overrides))
    if own:
        parser.error(f"--set {', '.join(own)}: the benchmark sets these itself (rates: --lrs)")
    fields_of = {m: field_types(get_algorithm(m).Config) for m in methods}
    unknown = [key for key in overrides if not any(key in names for names in fields_of.values())]
    if unknown:
        parser.error(f"--set {', '.join(unknown)}: no selected method has such a config field")
    shapes = {}
    for method in methods:
        shapes[method] = METHOD_SHAPES[method] | {k: v for k, v in overrides.items() if k in fields_of[method]}
        try:
            check_values(get_algorithm(method).Config, shapes[method])
            get_algorithm(method).Config(lr=1e-4, **shapes[method])
        except (TypeError, ValueError) as error:
            parser.error(f"--set: {error}")
    return shapes


def _choices(parser: argparse.ArgumentParser, text: str, valid, what: str) -> tuple[str, ...]:
    chosen = tuple(item.strip() for item in text.split(",") if item.strip())
    unknown = [item for item in chosen if item not in valid]
    if unknown or not chosen:
        parser.error(f"unknown {what} {', '.join(unknown) or '(none)'}; valid: {', '.join(valid)}")
    return chosen


# ------------------------------------------------------------------------- the task
def setting_task(name: str, sizes: Sizes) -> Task:
    setting = SETTINGS[name]
    kwargs = {"num_train": setting.num_train or sizes.num_train, "num_validation": sizes.num_validation} | setting.env_kwargs
    if setting.family == "arithmetic":
        kwargs["num_test"] = sizes.num_test
    return make_task(setting.env, **kwargs)


def learning_rates(plan: Plan, method: str) -> tuple[float, ...]:
    return plan.learning_rates[get_algorithm(method).default_tune or "full"]


def run_folder(plan: Plan, setting: str, lr: float) -> Path:
    return plan.out / setting / f"lr{lr:g}"


def trl_file(out: Path, setting: str, lr: float, seed: int) -> Path:
    """Where TRL's run of a setting, rate and seed is kept."""
    return out / setting / "trl-grpo" / f"lr{lr:g}-seed{seed}.json"


def method_policy(plan: Plan, setting: str, method: str, seed: int) -> Policy:
    """The setting's built-in model, tunable as the method needs."""
    tune = get_algorithm(method).default_tune or "full"
    return Policy.from_pretrained(SETTINGS[setting].model(plan.sizes.model_size), tune=tune, seed=seed, meter=BudgetMeter())


def kept(path: Path, compute, *compute_args):
    """``compute(*compute_args)``, a JSON value, kept at ``path`` (written atomically): a
    resumed benchmark reads it instead of measuring it again."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute(*compute_args)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(result), path)
    return result


# ------------------------------------------------------------------- the jobs
# Each job runs in a worker process and returns a JSON-able dict; a finished job's result
# is on disk (the runner's result file, base.json, TRL's file), so a resumed benchmark
# reads it instead of running the job again.
def measure_base(plan: Plan, setting: str) -> dict:
    """The untuned model's accuracies (``row``) and the hardest quartile of the training
    examples (``tracked``)."""
    sizes, task = plan.sizes, setting_task(setting, plan.sizes)
    started = time.perf_counter()
    base = Policy.from_pretrained(SETTINGS[setting].model(sizes.model_size), seed=0, meter=BudgetMeter())
    tracked, accuracy = hardest_quartile(base, task, sizes.base_samples_per_example, task.max_new_tokens)
    row = {"setting": setting, "method": "base", "seed": 0, "train_acc_sampled": float(accuracy.mean())}
    row |= evaluate(base, task, EvalConfig(split="test", majority_k=sizes.majority_k, max_new_tokens=task.max_new_tokens))
    row |= {"val_acc_greedy": evaluate(base, task, EvalConfig(split="validation", majority_k=0, max_new_tokens=task.max_new_tokens))["eval_acc_greedy"]}
    row |= {"hardest_quartile_base_acc": float(accuracy[tracked].mean()), "hardest_quartile_size": len(tracked), "wall_seconds": time.perf_counter() - started}
    return {"row": row, "tracked": tracked}


def base_job(plan: Plan, setting: str) -> dict:
    return kept(plan.out / setting / "base.json", measure_base, plan, setting)


@dataclass(frozen=True)
class RunJob:
    """One (setting, method, learning rate, seed) run.  ``majority``: end with majority-of-k
    on the test split (search runs skip it; the chosen one gets it afterwards)."""

    setting: str
    method: str
    lr: float
    seed: int
    majority: bool


def run_job(plan: Plan, job: RunJob, base: dict) -> dict:
    """The run, or its result if it finished.  CoT methods tuning the whole model start from
    the base model itself, whose test accuracy the base job measured: step 0 logs that
    instead of evaluating it again."""
    folder, sizes = run_folder(plan, job.setting, job.lr), plan.sizes
    finished = finished_result(folder, job.method, job.seed)
    if finished is not None:
        return finished | {"reused": True}
    task = setting_task(job.setting, sizes)
    cls = get_algorithm(job.method)
    config = cls.Config(lr=job.lr, max_new_tokens=task.max_new_tokens, **plan.method_shapes[job.method])
    algorithm = cls(method_policy(plan, job.setting, job.method, job.seed), task, config, seed=job.seed)
    starts_from_base = cls.prompt_kind == "cot" and cls.default_tune in (None, "full")
    run_config = RunConfig(
        budget=Budget(samples=sizes.budget_samples),
        eval_every=sizes.eval_every,
        eval=EvalConfig(split="test", majority_k=sizes.majority_k if job.majority else 0, max_new_tokens=task.max_new_tokens),
        variance_every=sizes.variance_every if job.method in ("trice", "trice-nocv") else 0,
        variance_draws=4,
        variance_batch=8,
        tracked_examples=tuple(base["tracked"]),
        final_validation=EvalConfig(split="validation", majority_k=0, max_new_tokens=task.max_new_tokens),
        initial_eval={"eval_acc_greedy": base["row"]["eval_acc_greedy"]} if starts_from_base else None,
    )
    return Runner(algorithm, run_config, folder, progress=False).run(resume=True) | {"reused": False}


def majority_job(plan: Plan, job: RunJob) -> dict:
    """A finished search run's majority-of-k test accuracy, from its final parameters, with
    the seed its own final evaluation would have used (so the same number); added to its
    result file."""
    folder = run_folder(plan, job.setting, job.lr)
    result = finished_result(folder, job.method, job.seed)
    if result is not None and result.get("eval_acc_majority") is not None:
        return result
    policy = method_policy(plan, job.setting, job.method, job.seed)
    load_final_parameters(policy, folder, job.method, job.seed)
    task = setting_task(job.setting, plan.sizes)
    config = EvalConfig(split="test", majority_k=plan.sizes.majority_k, max_new_tokens=task.max_new_tokens, greedy=False)
    majority = evaluate(policy, task, config, prompt_kind=get_algorithm(job.method).prompt_kind, seed=job.seed)
    return add_to_result(folder, job.method, job.seed, majority)


def trl_job(plan: Plan, setting: str, lr: float, seed: int) -> dict:
    return kept(trl_file(plan.out, setting, lr, seed), run_trl_grpo, plan, setting, lr, seed)


def run_trl_grpo(plan: Plan, setting: str, lr: float, seed: int) -> dict:
    """TRL's GRPOTrainer with our grpo's shape and chosen learning rate, for one of our seeds;
    our evaluation on the result."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from trice_rl.builtin_model import resolve_model_path
    from trice_rl.trl_adapter import matching_grpo_config, task_dataset, task_reward

    sizes, task = plan.sizes, setting_task(setting, plan.sizes)
    prompts_per_step, group = plan.method_shapes["grpo"]["batch_size"], plan.method_shapes["grpo"]["group_size"]
    steps = -(-sizes.budget_samples // (prompts_per_step * group))
    path = resolve_model_path(SETTINGS[setting].model(sizes.model_size))
    model = AutoModelForCausalLM.from_pretrained(path)  # as the Policy loads it
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # for TRL's generate; the Policy pads its own batches
    config = matching_grpo_config(str(trl_file(plan.out, setting, lr, seed).parent), prompts_per_step, group, task.max_new_tokens, steps, lr, seed)
    trainer = GRPOTrainer(model=model, reward_funcs=task_reward(task), args=config, train_dataset=task_dataset(task), processing_class=tokenizer)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    seconds = time.perf_counter() - started
    policy = Policy(trainer.model, tokenizer, seed=seed, meter=BudgetMeter())
    accuracy = evaluate(policy, task, EvalConfig(split="test", majority_k=sizes.majority_k, max_new_tokens=task.max_new_tokens), seed=seed)
    samples = steps * prompts_per_step * group
    return {"setting": setting, "method": "trl-grpo", "lr": lr, "seed": seed, "samples_drawn": samples, "grad_steps": steps, "wall_seconds": seconds, "trl_s_per_sample": seconds / samples} | accuracy


def _init_worker(threads: int) -> None:
    """Each worker process runs single runs with its share of the cores: small models
    sample far faster on one thread per process than on several threads in one."""
    import warnings

    torch.set_num_threads(threads)
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


def _final_columns(outcome: dict) -> dict:
    keys = ("eval_acc_greedy", "eval_acc_majority", "eval_acc_sampled", "val_acc_greedy", "samples_drawn", "grad_steps", "tokens_generated", "train_flops", "wall_seconds", "eval_seconds", "tracked_solved")
    return {k: outcome.get(k, float("nan")) for k in keys}


def plot_setting(plan: Plan, setting: str) -> None:
    """Curves of the chosen runs: test accuracy, TRICE's estimator variance, the hardest
    quartile holding a correct rationale."""
    folder = plan.out
    search = pd.read_csv(folder / "lr_search.csv") if (folder / "lr_search.csv").exists() else None
    runs = chosen_runs(folder, setting, search)
    if runs.empty:
        return
    title = f"{setting}: built-in model, {plan.sizes.budget_samples} samples"
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
    plan = parse_args(argv)
    transformers_logging.disable_progress_bar()
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    sizes = json.loads(json.dumps(dataclasses.asdict(plan.sizes)))
    if previous and previous.get("preset") != sizes:  # finished runs are reused: only with the same sizes
        raise SystemExit(f"benchmark.py: error: {out} holds a benchmark with other sizes ({previous.get('preset')}); choose another --out")
    changed = [m for m in plan.methods if m in previous.get("method_shapes", {}) and previous["method_shapes"][m] != json.loads(json.dumps(plan.method_shapes[m]))]
    if changed:
        m = changed[0]
        raise SystemExit(f"benchmark.py: error: {out} holds {m} runs with other settings ({previous['method_shapes'][m]}, now {plan.method_shapes[m]}); choose another --out")
    previous_shapes = previous.get("method_shapes", {})
    command = " ".join(["python"] + sys.argv)
    config = {
        "command": command,
        "preset": sizes,
        "settings": {name: dataclasses.asdict(SETTINGS[name]) for name in plan.settings},
        "methods": plan.methods,
        "method_shapes": previous_shapes | plan.method_shapes,  # every method ever run in this folder
        "learning_rates": plan.learning_rates,
        "seeds": plan.seeds,
        "machine": machine_info() | {"load1_start": load_average(), "matmul_gflops": round(matmul_flops() / 1e9, 1)},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    started = time.perf_counter()
    trl_kept = set(out.glob("*/trl-grpo/*.json"))
    outcomes, bases, trl_rows = run_all(plan)
    chosen = {(s, m): choose_rate(plan, outcomes, s, m) for s in plan.settings for m in plan.methods}
    search = [
        {"setting": s, "method": m, "lr": lr, "seed": plan.search_seed, "val_acc_greedy": outcomes[s, m, lr, plan.search_seed]["val_acc_greedy"], "test_acc_greedy": outcomes[s, m, lr, plan.search_seed]["eval_acc_greedy"], "chosen": lr == chosen[s, m]}
        for s in plan.settings
        for m in plan.methods
        for lr in learning_rates(plan, m)
    ]
    pd.DataFrame(search).to_csv(out / "lr_search.csv", index=False)
    pd.DataFrame(bases.values()).to_csv(out / "base.csv", index=False)
    results = [{"setting": s, "method": m, "lr": chosen[s, m], "seed": seed} | _final_columns(outcomes[s, m, chosen[s, m], seed]) for s in plan.settings for m in plan.methods for seed in plan.seeds]
    results = with_matched_flops(pd.DataFrame(results), out, pd.DataFrame(search))
    results.to_csv(out / "results.csv", index=False)
    if trl_rows:
        pd.DataFrame(trl_rows).to_csv(out / "trl_grpo.csv", index=False)
    for setting in plan.settings:
        plot_setting(plan, setting)
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
    print(f"\nbenchmark wall time {config['wall_seconds']:.0f} s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", formatters={"lr": lambda v: f"{v:g}"}))
    if trl_rows:
        print(pd.DataFrame(trl_rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return table


# Relative cost of one run (seconds with evaluation, multistep_arithmetic_two search runs at
# the quick sizes: star 320, trice-nocv 170, trice 165, grpo 150, rft 140, cot-sft 108,
# prompt-tuning 33): each stage starts its longest jobs first, so that the last ones to
# finish are short and no worker idles long at the stage's end.
METHOD_COST = {"star": 3, "trice-nocv": 1.6, "trice": 1.5, "trice-k": 1.4, "grpo": 1.4, "rft": 1.3, "cot-sft": 1, "prompt-tuning": 0.3}


def choose_rate(plan: Plan, outcomes: dict, setting: str, method: str) -> float:
    """The rate of best validation greedy accuracy on the search seed (ties: the smaller)."""
    return max(learning_rates(plan, method), key=lambda lr: (outcomes[setting, method, lr, plan.search_seed]["val_acc_greedy"], -lr))


def run_all(plan: Plan) -> tuple[dict, dict, list[dict]]:
    """Every job of the benchmark on a pool of worker processes, in three stages: the base
    models; every method's learning-rate search on the search seed; then the other seeds at
    the chosen rates, the chosen search runs' majority-of-k and TRL's GRPOTrainer.  Returns
    the run outcomes by (setting, method, lr, seed), the base rows by setting and TRL's rows.
    A job's exception stops the benchmark (finished jobs stay on disk for a resume)."""
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // plan.workers)
    cost = {s: setting_task(s, plan.sizes).max_new_tokens for s in plan.settings}
    runs_total = len(plan.settings) * sum(len(learning_rates(plan, m)) + len(plan.seeds) - 1 for m in plan.methods)
    with ProcessPoolExecutor(plan.workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool, tqdm(total=runs_total, desc="benchmark runs", unit="run", disable=not plan.progress) as bar:
        settings = sorted(plan.settings, key=lambda s: -cost[s])
        bases = dict(zip(settings, pool.map(base_job, [plan] * len(settings), settings)))
        for s, base in bases.items():
            bar.write(f"[{s}] base model: test greedy {base['row']['eval_acc_greedy']:.3f}, majority {base['row']['eval_acc_majority']:.3f}, validation {base['row']['val_acc_greedy']:.3f}")
        search = [RunJob(s, m, lr, plan.search_seed, majority=False) for s in settings for m in plan.methods for lr in learning_rates(plan, m)]
        outcomes = _run_stage(pool, bar, plan, search, bases, cost)
        chosen = [RunJob(s, m, choose_rate(plan, outcomes, s, m), plan.search_seed, majority=True) for s in settings for m in plan.methods]
        majorities = [pool.submit(majority_job, plan, job) for job in chosen]
        trl = [pool.submit(trl_job, plan, job.setting, job.lr, seed) for job in chosen if job.method == "grpo" and plan.trl for seed in plan.seeds]
        others = [dataclasses.replace(job, seed=seed) for job in chosen for seed in plan.seeds[1:]]
        outcomes |= _run_stage(pool, bar, plan, others, bases, cost)
        for job, future in zip(chosen, majorities):
            outcomes[job.setting, job.method, job.lr, job.seed] |= future.result()
        trl_rows = [future.result() for future in trl]
    for row in trl_rows:
        bar.write(f"  {row['setting']} TRL GRPOTrainer seed {row['seed']}: test greedy {row['eval_acc_greedy']:.3f}, {row['trl_s_per_sample']:.4f} s/sample")
    return outcomes, {s: base["row"] for s, base in bases.items()}, sorted(trl_rows, key=lambda row: (plan.settings.index(row["setting"]), row["seed"]))


def _run_stage(pool: ProcessPoolExecutor, bar: tqdm, plan: Plan, jobs: list[RunJob], bases: dict, cost: dict) -> dict:
    """Run ``jobs``, longest first; their outcomes by (setting, method, lr, seed)."""
    jobs = sorted(jobs, key=lambda job: -METHOD_COST[job.method] * cost[job.setting])
    futures = {pool.submit(run_job, plan, job, bases[job.setting]): job for job in jobs}
    outcomes = {}
    for future in as_completed(futures):
        job, result = futures[future], future.result()
        outcomes[job.setting, job.method, job.lr, job.seed] = result
        bar.update()
        bar.write(f"  {job.setting} {job.method} lr {job.lr:g} seed {job.seed}: test greedy {result['eval_acc_greedy']:.3f}, validation {result['val_acc_greedy']:.3f}, {result['wall_seconds']:.0f} s training")
    return outcomes


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
