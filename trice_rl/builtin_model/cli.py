"""``python -m trice_rl.builtin_model``: build a built-in model, measure it through the
project's :class:`~trice_rl.policy.Policy` and evaluation, and ship it into the package."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from envs.base import DataError
from trice_rl import builtin_model as builtin
from trice_rl.evaluation import EvalConfig, evaluate, sampled_answers, sampled_correct
from trice_rl.options import describe_config
from trice_rl.policy import Policy

DIRECT_ANSWER_TOKENS = 16  # a direct answer and its full stop


def ship(family: str, threads: int | None = None) -> dict:
    """Copy the family's default cache build into the package and record it in the
    manifest, with the greedy accuracy of the shipped files on the first test items."""
    source = builtin.builtin_model_path(family, threads=threads)
    target = builtin.SHIPPED_MODELS / family
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name != builtin.MARKER_FILE:
            shutil.copy2(path, target / path.name)
    record = json.loads((target / builtin.CONFIG_FILE).read_text())
    entry = {
        "files": {path.name: builtin.sha256_of(path) for path in sorted(target.iterdir())},
        "build_command": f"python -m trice_rl.builtin_model --family {family} --ship",
        "config": record["config"],
        "build": {key: record[key] for key in ("parameters", "build_seconds", "final_loss")},
    }
    builtin.record_shipped(family, entry)
    entry["slice_greedy"] = slice_greedy_accuracy(family)  # loads the shipped files
    builtin.record_shipped(family, entry)
    return entry


def slice_greedy_accuracy(family: str) -> float:
    """Greedy chain-of-thought accuracy of ``builtin:<family>`` on the first
    :data:`~trice_rl.builtin_model.SHIPPED_SLICE` test items."""
    policy = Policy.from_pretrained(f"builtin:{family}")
    task = builtin.family_task(family)
    config = EvalConfig(split="test", max_examples=builtin.SHIPPED_SLICE, majority_k=0, max_new_tokens=task.max_new_tokens)
    return evaluate(policy, task, config)["eval_acc_greedy"]


def measure_accuracy(folder: Path, family: str, split: str, num_examples: int = 200, num_samples: int = 8, seed: int = 0) -> dict[str, float]:
    """Greedy, sampled (temperature 1) and hinted-sampled chain-of-thought accuracy, greedy
    direct-answer accuracy, and the spread of per-example sampled accuracy."""
    task = builtin.family_task(family)
    policy = Policy.from_pretrained(str(folder), seed=seed)
    config = EvalConfig(split=split, max_examples=num_examples, majority_k=0, max_new_tokens=task.max_new_tokens)
    examples = task.examples(split)[:num_examples]
    prompts = [task.prompt("cot", example.question) for example in examples]
    sampled = sampled_correct(
        sampled_answers(policy, task, prompts, dataclasses.replace(config, majority_k=num_samples), seed=seed),
        [task.normalize(example.answer) for example in examples],
    )
    hinted = evaluate(policy, task, dataclasses.replace(config, greedy=False, majority_k=num_samples), "hinted", seed)
    direct = evaluate(policy, task, dataclasses.replace(config, max_new_tokens=DIRECT_ANSWER_TOKENS), "direct")
    per_example = sampled.mean(axis=1)
    return {
        "examples": len(examples),
        "greedy": evaluate(policy, task, config)["eval_acc_greedy"],
        "sampled": float(sampled.mean()),
        "hinted_sampled": hinted["eval_acc_sampled"],
        "direct_greedy": direct["eval_acc_greedy"],
        "share_sampled_at_least_0.75": float(np.mean(per_example >= 0.75)),
        "share_sampled_zero": float(np.mean(per_example == 0)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trice_rl.builtin_model",
        description="Build (if missing) the embedded default model and print its accuracies.",
    )
    parser.add_argument("--family", choices=builtin.FAMILIES, default="arithmetic")
    parser.add_argument("--size", choices=builtin.SIZES, default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache holds the model")
    parser.add_argument("--examples", type=int, default=200, help="examples per split to evaluate (0: none)")
    parser.add_argument("--samples", type=int, default=8, help="samples per example for sampled accuracy")
    parser.add_argument("--threads", type=int, help="torch threads for a build (default: 2; 1 on a busy machine)")
    parser.add_argument("--ship", action="store_true", help="copy the default build into the package (trice_rl/models) and record it in its manifest")
    parser.add_argument("--recipe", action="store_true", help="print the build's config (every field, its value and meaning), then exit")
    args = parser.parse_args(argv)

    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.ship and (args.size != "default" or args.seed != 0):
        parser.error("--ship ships the default size built with seed 0")
    if args.recipe:
        print(f"{args.family} {args.size} (seed {args.seed}):\n" + describe_config(builtin.BuiltinConfig.preset(args.family, args.size, args.seed)))
        return
    folder = builtin.builtin_model_path(args.family, args.size, args.seed, rebuild=args.force, threads=args.threads)
    record = json.loads((folder / builtin.CONFIG_FILE).read_text())
    print(f"model: {folder}")
    print(f"parameters: {record['parameters']:,}  build: {record['build_seconds']} s  final loss: {record['final_loss']}")
    entry = None
    if args.ship:
        entry = ship(args.family, args.threads)
        folder = builtin.SHIPPED_MODELS / args.family
        print(f"shipped to {folder}: greedy {entry['slice_greedy']:.3f} on the first {builtin.SHIPPED_SLICE} test items")
    if args.examples <= 0:
        return
    try:
        accuracy = {split: measure_accuracy(folder, args.family, split, args.examples, args.samples, args.seed) for split in ("train", "test")}
    except DataError as error:
        print(f"not evaluated: {error}")
        return
    for split, result in accuracy.items():
        print(f"{split:>5}: " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    if entry is not None:
        builtin.record_shipped(args.family, entry | {"accuracy": accuracy, "accuracy_command": f"python -m trice_rl.builtin_model --family {args.family} --examples {args.examples} --samples {args.samples}"})
