"""The learning benchmark: every method from the same built-in model, under one sample
budget, with its learning rate chosen on a validation split, over several seeds.

    python experiments/benchmark.py                  # the "quick" preset (75 min measured on 2 cores)
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
   ``eval_every`` samples and majority-of-k at the end.
4. TRL's ``GRPOTrainer`` on the same model, the same prompts per step and generations, the
   same number of samples and our ``grpo``'s chosen learning rate: its test accuracy and
   its wall time per sample next to ours.

Every method draws 32 samples per optimizer step (TRICE: 32 examples × 1 proposal; rft: 8
× 4 particles; GRPO: 4 prompts × 8; the supervised methods are charged one sample per
target), so an equal sample budget is also an equal number of optimizer steps, except for
STaR, whose fine-tuning phases draw no samples (capped at 200 steps per iteration).

Writes into ``--out``: ``results.csv`` (one row per setting, method and seed),
``lr_search.csv``, ``base.csv``, ``trl_grpo.csv``, ``<setting>/lr<rate>/<algo>-seed<k>.csv``
(the runs), and per setting ``curves_<setting>.png`` (test accuracy against samples, band
over seeds), ``variance_<setting>.png`` (TRICE vs TRICE without control variate) and
``hardest_<setting>.png``, ``summary.csv`` and ``config.json``.  Runs go to ``--workers``
processes (default one per core, each with its share of the torch threads).  Finished runs
are skipped and an interrupted run continues from its checkpoint, so a stopped benchmark
resumes where it stopped.
"""

from __future__ import annotations

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

import envs  # noqa: E402,F401  (registers the environments)
from algorithms import get_algorithm  # noqa: E402
from envs.base import Task, make_task  # noqa: E402
from trice_rl.budget import Budget, BudgetMeter  # noqa: E402
from trice_rl.builtin_model import MAX_NEW_TOKENS  # noqa: E402
from trice_rl.evaluation import EvalConfig, evaluate  # noqa: E402
from trice_rl.machine import load_average, machine_info  # noqa: E402
from trice_rl.plotting import plot_curves  # noqa: E402
from trice_rl.policy import Policy  # noqa: E402
from trice_rl.runner import Runner, RunConfig  # noqa: E402

METHODS = ("prompt-tuning", "cot-sft", "star", "rft", "trice-nocv", "trice", "grpo")
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
    # 75 min measured on a 2-core CPU (two workers): 150 training examples (the paper's BBH count), each
    # visited about 8 times.  multistep_arithmetic_two is left to --settings / "full": its
    # built-in model (0.11 greedy on the real items) has not been benchmarked yet.
    "quick": dict(
        settings=("arithmetic", "boolean_expressions"),
        num_train=150,
        num_validation=100,
        num_test=200,  # arithmetic; the BBH settings test on all 250 real items
        budget_samples=1280,
        eval_every=640,
        variance_every=10,
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


def run_once(setting: str, method: str, lr: float, seed: int, args, tracked: list[int]) -> dict:
    """One (method, learning rate, seed) run, or its result if it already finished."""
    sizes, family = args.sizes, SETTINGS[setting].family
    folder = Path(args.out) / setting / f"lr{lr:g}"
    csv_path = folder / f"{method}-seed{seed}.csv"
    if csv_path.exists():
        last = pd.read_csv(csv_path).iloc[-1]
        if pd.notna(last.get("val_acc_greedy")):
            return last.to_dict()
    max_new_tokens = MAX_NEW_TOKENS[family]
    cls = get_algorithm(method)
    policy = Policy.from_pretrained(SETTINGS[setting].model(sizes["model_size"]), tune=cls.default_tune or "full", seed=seed, meter=BudgetMeter())
    algorithm = cls(policy, setting_task(setting, sizes), method_config(method, lr, max_new_tokens), seed=seed)
    run_config = RunConfig(
        budget=Budget(samples=sizes["budget_samples"]),
        eval_every=sizes["eval_every"],
        eval=EvalConfig(split="test", majority_k=sizes["majority_k"], max_new_tokens=max_new_tokens),
        variance_every=sizes["variance_every"] if method in ("trice", "trice-nocv") else 0,
        variance_draws=4,
        variance_batch=8,
        tracked_examples=tuple(tracked),
        final_validation=EvalConfig(split="validation", majority_k=0, max_new_tokens=max_new_tokens),
    )
    return Runner(algorithm, run_config, folder, progress=False).run(resume=True)


def learning_rates(method: str) -> tuple[float, ...]:
    return LEARNING_RATES[get_algorithm(method).default_tune or "full"]


def run_base(setting: str, args) -> tuple[dict, list[int]]:
    """The untuned model's accuracies and the hardest quartile of the training examples."""
    sizes, family = args.sizes, SETTINGS[setting].family
    task = setting_task(setting, sizes)
    max_new_tokens = MAX_NEW_TOKENS[family]
    started = time.perf_counter()
    base = Policy.from_pretrained(SETTINGS[setting].model(sizes["model_size"]), seed=0, meter=BudgetMeter())
    tracked, base_train_accuracy = hardest_quartile(base, task, sizes["base_samples_per_example"], max_new_tokens)
    row = {"setting": setting, "method": "base", "seed": 0, "train_acc_sampled": float(base_train_accuracy.mean())}
    row |= evaluate(base, task, EvalConfig(split="test", majority_k=sizes["majority_k"], max_new_tokens=max_new_tokens))
    row |= {"val_acc_greedy": evaluate(base, task, EvalConfig(split="validation", majority_k=0, max_new_tokens=max_new_tokens))["eval_acc_greedy"]}
    row |= {"hardest_quartile_base_acc": float(base_train_accuracy[tracked].mean()), "hardest_quartile_size": len(tracked), "wall_seconds": time.perf_counter() - started}
    return row, tracked


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
    keys = ("eval_acc_greedy", "eval_acc_majority", "eval_acc_sampled", "val_acc_greedy", "samples_drawn", "grad_steps", "tokens_generated", "wall_seconds", "tracked_solved")
    return {k: outcome.get(k, float("nan")) for k in keys}


# ---------------------------------------------------------------------- TRL's GRPO
def run_trl_grpo(setting: str, lr: float, args) -> dict:
    """TRL's GRPOTrainer with our grpo's shape and learning rate, seed of the search; our
    evaluation on the result.  The loss is TRL's ``dr_grpo`` (a constant divisor, which Adam
    ignores), rewards scaled by the group std, constant learning rate, no KL: our ``grpo``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from trice_rl.policy import resolve_model_path
    from trice_rl.trl_adapter import task_dataset, task_reward

    sizes, family, seed = args.sizes, SETTINGS[setting].family, args.seeds[0]
    task = setting_task(setting, sizes)
    shape = METHOD_SHAPES["grpo"]
    prompts_per_step, group = shape["batch_size"], shape["group_size"]
    steps = -(-sizes["budget_samples"] // (prompts_per_step * group))
    out = Path(args.out) / setting / "trl-grpo"
    path = resolve_model_path(SETTINGS[setting].model(sizes["model_size"]))
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # for TRL's generate; the Policy pads its own batches
    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=prompts_per_step * group,
        num_generations=group,
        max_completion_length=MAX_NEW_TOKENS[family],
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
    accuracy = evaluate(policy, task, EvalConfig(split="test", majority_k=sizes["majority_k"], max_new_tokens=MAX_NEW_TOKENS[family]), seed=seed)
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
    variance = runs[runs["algo"].isin(["trice", "trice-nocv"])]
    if variance["grad_variance"].notna().any():
        plot_curves(variance, folder / f"variance_{setting}.png", y="grad_variance", title=f"{setting}: gradient-estimator variance", log_y=True)
    hardest = runs[runs["algo"].isin(["trice", "star", "rft"])]
    if hardest["tracked_solved"].notna().any():
        plot_curves(hardest, folder / f"hardest_{setting}.png", y="tracked_solved", title=f"{setting}: hardest quartile holding a correct rationale")


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
    if (out / "config.json").exists():  # finished runs are reused: only with the same sizes
        previous = json.loads((out / "config.json").read_text()).get("preset")
        if previous != json.loads(json.dumps(args.sizes)):
            raise SystemExit(f"benchmark.py: error: {out} holds a benchmark with other sizes ({previous}); choose another --out")
    config = {
        "command": " ".join(["python"] + sys.argv),
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
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        bar = tqdm(desc="benchmark runs", unit="run", disable=args.no_progress)
        bases, tracked = {}, {}
        for setting, future in [(s, pool.submit(run_base, s, args)) for s in args.settings]:
            bases[setting], tracked[setting] = future.result()
            b = bases[setting]
            bar.write(f"[{setting}] base model: test greedy {b['eval_acc_greedy']:.3f}, majority {b['eval_acc_majority']:.3f}, validation {b['val_acc_greedy']:.3f}")
        pd.DataFrame(bases.values()).to_csv(out / "base.csv", index=False)

        def submit_all(jobs: list[tuple[str, str, float, int]]) -> dict:
            bar.total = (bar.total or 0) + len(jobs)
            futures = {pool.submit(run_once, s, m, lr, seed, args, tracked[s]): (s, m, lr, seed) for s, m, lr, seed in jobs}
            outcomes = {}
            for future in as_completed(futures):
                key, outcome = futures[future], future.result()
                outcomes[key] = outcome
                bar.update()
                bar.write(f"  {key[0]} {key[1]} lr {key[2]:g} seed {key[3]}: test greedy {outcome['eval_acc_greedy']:.3f}, validation {outcome['val_acc_greedy']:.3f}")
            return outcomes

        # 1. the learning-rate search on the first seed
        search_seed = args.seeds[0]
        searched = submit_all([(s, m, lr, search_seed) for s in args.settings for m in args.methods for lr in learning_rates(m)])
        search, chosen = [], {}
        for s in args.settings:
            for m in args.methods:
                rates = learning_rates(m)
                chosen[s, m] = max(rates, key=lambda lr: (searched[s, m, lr, search_seed]["val_acc_greedy"], -lr))
                for lr in rates:
                    outcome = searched[s, m, lr, search_seed]
                    search.append({"setting": s, "method": m, "lr": lr, "seed": search_seed, "val_acc_greedy": outcome["val_acc_greedy"], "test_acc_greedy": outcome["eval_acc_greedy"], "chosen": lr == chosen[s, m]})
        pd.DataFrame(search).to_csv(out / "lr_search.csv", index=False)
        # 2. the other seeds at the chosen rates, and TRL's GRPOTrainer next to our grpo
        seeded = submit_all([(s, m, chosen[s, m], seed) for s in args.settings for m in args.methods for seed in args.seeds[1:]])
        trl_futures = [pool.submit(run_trl_grpo, s, chosen[s, "grpo"], args) for s in args.settings] if not args.no_trl and "grpo" in args.methods else []
        outcomes = {**searched, **seeded}
        results = [
            {"setting": s, "method": m, "lr": chosen[s, m], "seed": seed} | _final_columns(outcomes[s, m, chosen[s, m], seed])
            for s in args.settings
            for m in args.methods
            for seed in args.seeds
        ]
        pd.DataFrame(results).to_csv(out / "results.csv", index=False)
        trl_rows = []
        for future in trl_futures:
            row = future.result()
            ours = [r for r in results if r["method"] == "grpo" and r["setting"] == row["setting"]]
            row["ours_s_per_sample"] = float(np.mean([r["wall_seconds"] / r["samples_drawn"] for r in ours]))
            row["ours_acc_greedy"] = float(np.mean([r["eval_acc_greedy"] for r in ours]))
            trl_rows.append(row)
            bar.write(f"  {row['setting']} TRL GRPOTrainer: test greedy {row['eval_acc_greedy']:.3f}, {row['trl_s_per_sample']:.4f} s/sample (ours {row['ours_s_per_sample']:.4f})")
        bar.close()
    if trl_rows:
        pd.DataFrame(trl_rows).to_csv(out / "trl_grpo.csv", index=False)
    for setting in args.settings:
        plot_setting(setting, args)
    table = summary_table(pd.DataFrame(results), pd.DataFrame(bases.values()))
    table.to_csv(out / "summary.csv", index=False)
    config["wall_seconds"] = time.perf_counter() - started
    config["machine"]["load1_end"] = load_average()
    (out / "config.json").write_text(json.dumps(config, indent=2))
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", formatters={"lr": lambda v: f"{v:g}"}))
    if trl_rows:
        print(pd.DataFrame(trl_rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return table


def summary_table(results: pd.DataFrame, bases: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the final test accuracies, per setting and method."""
    columns = ["eval_acc_greedy", "eval_acc_majority"]
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
