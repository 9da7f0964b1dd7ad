"""Compare training methods under identical budgets.

    python experiments/compare.py --algos trice,star

runs each algorithm for each seed from the same base model, on the same examples in the same
order, until the same budget is spent; evaluates on held-out data along the way; writes one
CSV per (algorithm, seed), ``summary.csv``, ``curves.png`` (against samples),
``curves_flops.png`` (against training FLOPs) and ``config.json`` into ``--out`` and prints
the summary table, with each method's accuracy at the end of the budget and at equal
training FLOPs (read off the curves where every sampling method has arrived).

    torchrun --nproc-per-node 2 experiments/compare.py --algos trice,star

shares each run between two processes (data parallel; docs/distributed.md).

Every flag is checked before any work starts; a bad one is a usage error that says what is
allowed.  ``--resume`` continues the runs in ``--out`` from their checkpoints (finished runs
are kept as they are), and refuses where the settings that define the runs differ from the
folder's ``config.json``.
"""

from __future__ import annotations

try:
    import trice_rl  # noqa: F401  (the installed package)
except ModuleNotFoundError:
    raise SystemExit("compare.py: the trice_rl package is not installed; run `pip install -e .` in the repository first") from None

import argparse
import dataclasses
import inspect
import json
import sys
import time
from pathlib import Path

import gymnasium as gym
import torch
from transformers.utils import logging as transformers_logging

import envs  # noqa: F401  (registers the environments)
from algorithms import ALGORITHM_NAMES, get_algorithm
from envs.arithmetic import ArithmeticTask
from envs import DataError, make_task
from trice_rl.options import check_values, describe_config, field_types, parse_assignments
from trice_rl.budget import Budget, BudgetMeter
from trice_rl import distributed
from trice_rl.builtin_model import FAMILIES, VARIANTS, is_builtin, resolve_model_path
from trice_rl.evaluation import EvalConfig
from trice_rl.plotting import load_runs, plot_curves, summarize
from trice_rl.policy import TUNE_MODES, Policy
from trice_rl.runner import Runner, RunConfig, atomic_write_text

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
        "max_new_tokens": ArithmeticTask.max_new_tokens,  # 96 cut off 55 of the 200 test rationales
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


class FlagError(ValueError):
    """A bad flag value: :func:`parse_args` reports it as a usage error (exit code 2)."""


def json_object(text: str) -> dict:
    """``--env-kwargs``: a JSON object."""
    example = """an object such as '{"num_train": 500}'"""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg} at column {error.colno}); expected {example}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected {example}, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="trice,star", help=f"comma-separated, any of: {', '.join(ALGORITHM_NAMES)}")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--env", help="a registered trice_rl/... environment id (default: the preset's)")
    parser.add_argument("--env-kwargs", type=json_object, help='JSON keyword arguments for the task, e.g. \'{"num_train": 500}\' (default: the preset\'s, for the preset\'s env only)')
    parser.add_argument("--model", help="'builtin', 'builtin:<family>[:tiny|:cache]', a local folder or a hub id")
    parser.add_argument("--tune", choices=TUNE_MODES, default="full", help="tunable parameters (prompt-tuning always uses a soft prompt)")
    parser.add_argument("--budget-samples", type=int, help="samples drawn per run (identical for every algorithm)")
    parser.add_argument("--budget-tokens", type=int, help="generated tokens per run, instead of samples")
    parser.add_argument("--budget-seconds", type=float, help="training seconds per run, instead of samples")
    parser.add_argument("--budget-flops", type=float, help="training model FLOPs per run (sampling, scoring and back-propagation; evaluation excluded), instead of samples")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--eval-every", type=int, help="samples drawn between held-out evaluations")
    parser.add_argument("--eval-examples", type=int, help="held-out examples per evaluation (default: the preset's)")
    parser.add_argument("--majority-k", type=int, help="samples per question for the final majority-of-k accuracy (0: off)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override an algorithm config field for every algorithm that has it (repeatable), e.g. --set lr=3e-4")
    parser.add_argument("--variance-every", type=int, help="steps between gradient-variance probes of the stochastic-gradient methods (0: off; default: the preset's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model weights' precision (default: as saved; a CPU runs float32)")
    parser.add_argument("--list", action="store_true", help="print the environment ids and algorithm names, then exit")
    parser.add_argument("--algo-help", metavar="NAME", choices=ALGORITHM_NAMES, help="print an algorithm's config fields (for --set) with defaults and help, then exit")
    parser.add_argument("--out", help="output folder (default: runs/compare-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the runs in --out from their checkpoints (with the same settings)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, each checked and turned into what :func:`main` runs (the task, the configs,
    the run settings) before any work starts: a bad value is a usage error that says what is
    allowed, not a traceback minutes into a run."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list or args.algo_help:
        print(listing() if args.list else algorithm_help(args.algo_help))
        parser.exit(0)
    try:
        resolve(args)
    except FlagError as error:
        parser.error(str(error))
    return args


def listing() -> str:
    environments = sorted(name for name in gym.registry if name.startswith("trice_rl/"))
    return "environments:\n  " + "\n  ".join(environments) + "\nalgorithms:\n  " + "\n  ".join(ALGORITHM_NAMES)


def algorithm_help(name: str) -> str:
    """An algorithm's config fields as ``--set FIELD=VALUE`` takes them."""
    return f"{name} (--set FIELD=VALUE):\n" + describe_config(get_algorithm(name).Config)


def resolve(args: argparse.Namespace) -> None:
    """Fill in the preset's defaults and check every flag, cheapest first."""
    preset = PRESETS[args.preset]
    for key in ("model", "env", "eval_every", "eval_examples", "majority_k", "variance_every"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.env_kwargs is None:  # the preset's sizes are its own task's fields
        args.env_kwargs = dict(preset["env_kwargs"]) if args.env == preset["env"] else {}
    args.algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = [a for a in args.algos if a not in ALGORITHM_NAMES]
    if unknown or not args.algos:
        raise FlagError(f"unknown algorithm {', '.join(unknown) or '(none)'}; valid: {', '.join(ALGORITHM_NAMES)}")
    if args.env not in gym.registry or not args.env.startswith("trice_rl/"):
        valid = ", ".join(sorted(k for k in gym.registry if k.startswith("trice_rl/")))
        raise FlagError(f"unknown environment {args.env!r}; valid: {valid}")
    args.seeds = parse_seeds(args.seeds)
    check_counts(args)
    args.budget = budget_from(args, preset)
    args.overrides = set_overrides(args.set, preset)
    args.configs = algorithm_configs(args.algos, args.overrides, preset["lr"], args.tune)
    args.run_config = RunConfig(
        budget=args.budget,
        eval_every=args.eval_every,
        eval=EvalConfig(split="test", max_examples=args.eval_examples, majority_k=args.majority_k, max_new_tokens=args.overrides["max_new_tokens"]),
        variance_every=args.variance_every,
        variance_draws=4,
        variance_batch=8,
    )
    check_device(args.device)
    check_model(args.model)
    args.task = load_task(args.env, args.env_kwargs)
    args.out = args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"
    args.settings = run_settings(args)
    check_out(Path(args.out), args.settings, args.resume)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise FlagError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) < len(seeds):
        raise FlagError(f"--seeds must be distinct non-negative integers, got {text!r}")
    return seeds


# The least value of each count flag (0 where 0 turns the feature off).
COUNT_FLAGS = {"eval_every": 1, "eval_examples": 1, "majority_k": 0, "variance_every": 0}


def check_counts(args: argparse.Namespace) -> None:
    for name, least in COUNT_FLAGS.items():
        value = getattr(args, name)
        if value < least:
            allowed = "a positive integer" if least else "0 (off) or a positive integer"
            raise FlagError(f"--{name.replace('_', '-')} must be {allowed}, got {value}")


def budget_from(args: argparse.Namespace, preset: dict) -> Budget:
    limits = {"samples": args.budget_samples, "tokens_generated": args.budget_tokens, "seconds": args.budget_seconds, "flops": args.budget_flops}
    for name, value in limits.items():
        if value is not None and not value > 0:
            raise FlagError(f"the {name} budget must be positive, got {value}")
    if all(v is None for v in limits.values()):
        limits["samples"] = preset["budget_samples"]
    return Budget(**limits)


def set_overrides(items: list[str], preset: dict) -> dict:
    """The ``--set`` values (JSON where they parse, else text) over the preset's shape."""
    try:
        return {"max_new_tokens": preset["max_new_tokens"], "batch_size": preset["batch_size"]} | parse_assignments(items)
    except ValueError as error:
        raise FlagError(str(error)) from None


def check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise FlagError(f"--device {device!r} is not a torch device; e.g. cpu, cuda, cuda:1") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise FlagError(f"--device {device}: torch sees no CUDA device here; use --device cpu")


def check_model(name: str) -> None:
    """A model that cannot load is named here, in one line: a missing folder (not taken for
    a hub id when it looks like a path), a folder that is no model, an unknown built-in, or
    a hub id that is neither cached nor reachable."""
    if is_builtin(name):
        _, family, size = (name.split(":") + ["", ""])[:3]
        if name.count(":") > 2 or (family or "arithmetic") not in FAMILIES or (size or "default") not in VARIANTS:
            raise FlagError(f"--model {name!r}: the built-in model is builtin[:<family>[:<variant>]], family one of {', '.join(FAMILIES)}, variant one of {', '.join(VARIANTS)}")
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FlagError(f"--model {name}: the folder holds no config.json, so it is no Hugging Face model folder (save_pretrained writes one)")
        return
    if path.exists():
        raise FlagError(f"--model {name}: a file, not a model folder")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/") or Path(name.split("/")[0]).is_dir():
        raise FlagError(f"--model {name}: the folder does not exist; give a model folder, 'builtin' or a hub id (owner/name)")
    try:
        from huggingface_hub import model_info, try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            model_info(name, timeout=10)
    except Exception as error:  # offline, unknown, private or malformed: loading would fail
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FlagError(f"--model {name}: no such local folder, and no cached or reachable hub model ({reason}); give a model folder, 'builtin' or a hub id") from None


def load_task(env: str, kwargs: dict):
    """The task with its train and test splits loaded: an unknown or bad keyword argument,
    an empty split or missing data is named here, not after the model is loaded."""
    for key, value in kwargs.items():
        if key.startswith("num_") and (type(value) is not int or value < 1):
            raise FlagError(f"--env-kwargs {key}={json.dumps(value)}: split sizes must be positive integers")
    try:
        task = make_task(env, **kwargs)
    except TypeError as error:
        raise FlagError(f"--env-kwargs for {env}: {error}{task_fields(env)}") from None
    except ValueError as error:
        raise FlagError(f"--env-kwargs for {env}: {error}") from None
    for split in ("train", "test"):
        try:
            examples = task.examples(split)
        except DataError as error:
            raise FlagError(f"--env {env}: {error}") from None  # it says how to supply the data
        except ValueError as error:
            raise FlagError(f"--env-kwargs for {env}: {error}") from None
        if not examples:
            raise FlagError(f"--env {env}: the {split} split holds no examples")
    return task


def task_fields(env: str) -> str:
    """'; valid: ...' with the keyword arguments an environment's task takes, where its
    signature lists them (a task taking ``**kwargs`` names them in its own error)."""
    parameters = inspect.signature(gym.registry[env].kwargs["task_factory"]).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return ""
    return f"; valid: {', '.join(p.name for p in parameters)}"


def run_settings(args: argparse.Namespace) -> dict:
    """What defines the runs' numbers: written to config.json, and unchanged on --resume
    (the progress bar, the command line and --out itself may change)."""
    return {
        "algos": args.algos,
        "env": args.env,
        "env_kwargs": args.env_kwargs,
        "model": args.model,
        "tune": args.tune,
        "device": args.device,
        "dtype": args.dtype,
        "seeds": args.seeds,
        "budget": dataclasses.asdict(args.budget),
        "run": {"eval_every": args.eval_every, "eval": dataclasses.asdict(args.run_config.eval), "variance_every": args.variance_every},
        "algorithm_configs": {name: dataclasses.asdict(config) for name, config in args.configs.items()},
    }


def check_out(out: Path, settings: dict, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FlagError(f"--out {out}: a file of that name exists; give a folder")
    if not resume:
        return
    if not out.is_dir():
        raise FlagError(f"--resume: {out} does not exist")
    if not (out / "config.json").is_file():
        raise FlagError(f"--resume: {out} holds no config.json, so no runs of compare.py")
    recorded = json.loads((out / "config.json").read_text())
    recorded.pop("command", None)
    changes = setting_changes(recorded, json.loads(json.dumps(settings)))
    if changes:
        raise FlagError(f"--resume: {out} holds runs with other settings: {'; '.join(changes)}; resume with the same flags, or give another --out")


def write_config(args: argparse.Namespace) -> None:
    """Create the output folder with its record of the runs' settings (and the command)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({"command": " ".join(sys.argv), **args.settings}, indent=2), out / "config.json")


_UNSET = object()


def setting_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Each setting that differs, as 'name: old → new' (nested ones by dotted name)."""
    changes = []
    for key in dict.fromkeys([*new, *old]):
        before, after = old.get(key, _UNSET), new.get(key, _UNSET)
        if isinstance(before, dict) and isinstance(after, dict):
            changes += setting_changes(before, after, f"{prefix}{key}.")
        elif before != after:
            before, after = ("(unset)" if v is _UNSET else json.dumps(v) for v in (before, after))
            changes.append(f"{prefix}{key}: {before} → {after}")
    return changes


def tune_mode(name: str, requested: str) -> str:
    """The tunable parameters of an algorithm's run: its own requirement, else ``--tune``."""
    return get_algorithm(name).default_tune or requested


def algorithm_configs(algos: list[str], overrides: dict, preset_lr: dict, tune: str) -> dict:
    """Each algorithm's default config with every override whose field it has; the learning
    rate, unless set, is the preset's for the algorithm's tune mode (a soft prompt needs a
    far larger one than the weights).  Values of the wrong type, and the configs' own
    checks, are flag errors."""
    types_of = {name: field_types(get_algorithm(name).Config) for name in algos}
    unknown = [key for key in overrides if not any(key in names for names in types_of.values())]
    if unknown:
        known = sorted(set().union(*types_of.values()))
        raise FlagError(f"--set {', '.join(unknown)}: no selected algorithm has such a config field; fields: {', '.join(known)}")
    configs = {}
    for name in algos:
        values = {"lr": preset_lr[tune_mode(name, tune)]} | {k: v for k, v in overrides.items() if k in types_of[name]}
        try:
            check_values(get_algorithm(name).Config, values)
            configs[name] = get_algorithm(name).Config(**values)
        except (TypeError, ValueError) as error:
            raise FlagError(f"--set: {error}") from None
    return configs


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison; under ``torchrun`` / ``accelerate launch`` each run is shared by
    the launched processes (docs/distributed.md), and rank 0 alone writes and prints."""
    args = parse_args(argv)
    joined = distributed.init_from_env(args.device)
    try:
        return run_comparison(args)
    finally:
        if joined:
            distributed.shutdown()


def run_comparison(args: argparse.Namespace) -> dict:
    transformers_logging.disable_progress_bar()  # one "Loading weights" bar per run is noise
    out = Path(distributed.agree(args.out))  # a default --out names rank 0's start time
    if distributed.is_main():
        if not args.resume:  # a resumed folder keeps the record of the command that started it
            write_config(args)
        resolve_model_path(args.model)  # a missing built-in model is built once, not per rank
    distributed.barrier()
    started = time.perf_counter()
    results = []
    device = distributed.local_device(args.device)
    for name in args.algos:
        cls = get_algorithm(name)
        for seed in args.seeds:
            policy = Policy.from_pretrained(args.model, tune=tune_mode(name, args.tune), seed=seed, meter=BudgetMeter(), device=device, dtype=args.dtype)
            algorithm = cls(policy, args.task, args.configs[name], seed=seed)
            results.append(Runner(algorithm, args.run_config, out, progress=not args.no_progress).run(resume=args.resume))
    if not distributed.is_main():
        return {"summary": None, "results": results, "out": out}
    runs = load_runs([out])
    summary = summarize(runs)
    summary.to_csv(out / "summary.csv", index=False)
    budget = ", ".join(f"{value:g} {name.replace('_', ' ')}" for name, value in dataclasses.asdict(args.budget).items() if value is not None)
    plot_curves(runs, out / "curves.png", title=f"{args.env} ({args.model}), budget {budget}")
    plot_curves(runs, out / "curves_flops.png", x="train_flops", title=f"{args.env} ({args.model}), against training FLOPs")
    print(f"\n{args.env}, model {args.model}, {len(args.seeds)} seed(s), wall time {time.perf_counter() - started:.0f} s")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote {out}/summary.csv, {out}/curves.png, {out}/curves_flops.png, {out}/config.json and one CSV per run")
    return {"summary": summary, "results": results, "out": out}


if __name__ == "__main__":
    main()
