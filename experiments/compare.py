"""Compare training methods under identical budgets.

    python experiments/compare.py --algos trice,star

runs each algorithm for each seed from the same base model, on the same examples in the same
order, until the same budget is spent; evaluates on held-out data along the way; writes one
CSV per (algorithm, seed), ``summary.csv``, ``curves.png`` and ``config.json`` into ``--out``
and prints the summary table.  ``--resume`` continues an interrupted run from its checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import gymnasium as gym  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

import envs  # noqa: E402,F401  (registers the environments)
from algorithms import ALGORITHM_NAMES, get_algorithm  # noqa: E402
from envs.base import make_task  # noqa: E402
from trice_rl.budget import Budget, BudgetMeter  # noqa: E402
from trice_rl.builtin_model import MAX_NEW_TOKENS  # noqa: E402
from trice_rl.evaluation import EvalConfig  # noqa: E402
from trice_rl.plotting import plot_curves, summarize  # noqa: E402
from trice_rl.policy import TUNE_MODES, Policy  # noqa: E402
from trice_rl.runner import Runner, RunConfig  # noqa: E402

# Sizes per preset.  "default" is the embedded default (about ten minutes for two algorithms
# on a 2-core CPU, the built-in model's first build included); "smoke" is for CI and quick
# looks (about a minute, with the tiny built-in model whose accuracy means nothing).
PRESETS = {
    "default": {
        "model": "builtin",
        "env": "trice_rl/Arithmetic-v0",
        "env_kwargs": {"num_train": 300, "num_test": 200},
        "budget_samples": 2400,
        "eval_every": 400,
        "eval_examples": 200,
        "majority_k": 8,
        "variance_every": 10,
        "max_new_tokens": MAX_NEW_TOKENS["arithmetic"],  # 96 cut off 55 of the 200 test rationales
        "batch_size": 32,
        "lr": {"full": 1e-4, "lora": 1e-3, "prompt": 0.3},
    },
    "smoke": {
        "model": "builtin:arithmetic:tiny",
        "env": "trice_rl/Arithmetic-v0",
        "env_kwargs": {"num_train": 40, "num_test": 16},
        "budget_samples": 96,
        "eval_every": 48,
        "eval_examples": 16,
        "majority_k": 2,
        "variance_every": 0,
        "max_new_tokens": 48,
        "batch_size": 8,
        "lr": {"full": 1e-4, "lora": 1e-3, "prompt": 0.3},
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="trice,star", help=f"comma-separated, any of: {', '.join(ALGORITHM_NAMES)}")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--env", help="a registered trice_rl/... environment id (default: the preset's)")
    parser.add_argument("--env-kwargs", type=json.loads, help='JSON keyword arguments for the task, e.g. \'{"num_train": 500}\'')
    parser.add_argument("--model", help="'builtin', 'builtin:<family>[:tiny]', a local folder or a hub id")
    parser.add_argument("--tune", choices=TUNE_MODES, default="full", help="tunable parameters (prompt-tuning always uses a soft prompt)")
    parser.add_argument("--budget-samples", type=int, help="samples drawn per run (identical for every algorithm)")
    parser.add_argument("--budget-tokens", type=int, help="generated tokens per run, instead of samples")
    parser.add_argument("--budget-seconds", type=float, help="training seconds per run, instead of samples")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--eval-every", type=int, help="samples drawn between held-out evaluations")
    parser.add_argument("--eval-examples", type=int, help="held-out examples per evaluation (default: the preset's)")
    parser.add_argument("--majority-k", type=int, help="samples per question for the final majority-of-k accuracy")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override an algorithm config field for every algorithm that has it (repeatable), e.g. --set lr=3e-4")
    parser.add_argument("--variance-every", type=int, help="steps between gradient-variance probes of the stochastic-gradient methods (0: off; default: the preset's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="output folder (default: runs/compare-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the runs in --out from their checkpoints")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    for key in ("model", "env", "env_kwargs", "eval_every", "eval_examples", "majority_k", "variance_every"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = [a for a in args.algos if a not in ALGORITHM_NAMES]
    if unknown or not args.algos:
        parser.error(f"unknown algorithm {', '.join(unknown) or '(none)'}; valid: {', '.join(ALGORITHM_NAMES)}")
    if args.env not in gym.registry or not args.env.startswith("trice_rl/"):
        valid = ", ".join(sorted(k for k in gym.registry if k.startswith("trice_rl/")))
        parser.error(f"unknown environment {args.env!r}; valid: {valid}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    limits = {"samples": args.budget_samples, "tokens_generated": args.budget_tokens, "seconds": args.budget_seconds}
    for name, value in limits.items():
        if value is not None and value <= 0:
            parser.error(f"the {name} budget must be positive, got {value}")
    if all(v is None for v in limits.values()):
        limits["samples"] = preset["budget_samples"]
    args.budget = Budget(**limits)
    if args.eval_every <= 0:
        parser.error("--eval-every must be positive")
    args.overrides = {"max_new_tokens": preset["max_new_tokens"], "batch_size": preset["batch_size"]}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            args.overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            args.overrides[field] = value
    if args.out is None:
        args.out = f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not Path(args.out).exists():
        parser.error(f"--resume: {args.out} does not exist")
    try:
        from trice_rl.policy import resolve_model_path

        if not args.model.startswith("builtin"):
            resolve_model_path(args.model)
    except FileNotFoundError as error:
        parser.error(str(error))
    return args


def tune_mode(name: str, requested: str) -> str:
    """The tunable parameters of an algorithm's run: its own requirement, else ``--tune``."""
    return get_algorithm(name).default_tune or requested


def algorithm_configs(algos: list[str], overrides: dict, preset_lr: dict, tune: str) -> dict:
    """Each algorithm's default config with every override whose field it has; the learning
    rate, unless set, is the preset's for the algorithm's tune mode (a soft prompt needs a
    far larger one than the weights)."""
    fields = {name: {f.name for f in dataclasses.fields(get_algorithm(name).Config)} for name in algos}
    unknown = [key for key in overrides if not any(key in names for names in fields.values())]
    if unknown:
        raise SystemExit(f"compare.py: error: no selected algorithm has config field(s) {', '.join(unknown)}")
    configs = {}
    for name in algos:
        values = {"lr": preset_lr[tune_mode(name, tune)]} | {k: v for k, v in overrides.items() if k in fields[name]}
        configs[name] = get_algorithm(name).Config(**values)
    return configs


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    transformers_logging.disable_progress_bar()  # one "Loading weights" bar per run is noise
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = make_task(args.env, **args.env_kwargs)
    run_config = RunConfig(
        budget=args.budget,
        eval_every=args.eval_every,
        eval=EvalConfig(split="test", max_examples=args.eval_examples, majority_k=args.majority_k, max_new_tokens=args.overrides["max_new_tokens"]),
        variance_every=args.variance_every,
        variance_draws=4,
        variance_batch=8,
    )
    configs = algorithm_configs(args.algos, args.overrides, PRESETS[args.preset]["lr"], args.tune)
    (out / "config.json").write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "algos": args.algos,
                "env": args.env,
                "env_kwargs": args.env_kwargs,
                "model": args.model,
                "tune": args.tune,
                "seeds": args.seeds,
                "budget": dataclasses.asdict(args.budget),
                "run": {"eval_every": args.eval_every, "eval": dataclasses.asdict(run_config.eval), "variance_every": args.variance_every},
                "algorithm_configs": {name: dataclasses.asdict(config) for name, config in configs.items()},
            },
            indent=2,
        )
    )
    started = time.perf_counter()
    results = []
    for name in args.algos:
        cls = get_algorithm(name)
        for seed in args.seeds:
            policy = Policy.from_pretrained(args.model, tune=tune_mode(name, args.tune), seed=seed, meter=BudgetMeter(), device=args.device)
            algorithm = cls(policy, task, configs[name], seed=seed)
            results.append(Runner(algorithm, run_config, out, progress=not args.no_progress).run(resume=args.resume))
    from trice_rl.plotting import load_runs

    runs = load_runs([out])
    summary = summarize(runs)
    summary.to_csv(out / "summary.csv", index=False)
    budget = ", ".join(f"{value:g} {name.replace('_', ' ')}" for name, value in dataclasses.asdict(args.budget).items() if value is not None)
    plot_curves(runs, out / "curves.png", title=f"{args.env} ({args.model}), budget {budget}")
    print(f"\n{args.env}, model {args.model}, {len(args.seeds)} seed(s), wall time {time.perf_counter() - started:.0f} s")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote {out}/summary.csv, {out}/curves.png, {out}/config.json and one CSV per run")
    return {"summary": summary, "results": results, "out": out}


if __name__ == "__main__":
    main()
