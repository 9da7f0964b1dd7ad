"""How often is a correct answer right by luck?  For each built-in model's setting: the base
model's samples on the training questions and its greedy answers on the test items, and of
those whose final answer is right, the share whose every step is right (the procedural tasks
know their gold steps).  A method that trains on its own correct rationales trains on the
lucky ones too, so this bounds what "more correct rationales" can teach.

    python experiments/lucky_answers.py --out docs/benchmark/lucky_answers.csv
"""

from __future__ import annotations

try:
    import trice_rl  # noqa: F401  (the installed package)
except ModuleNotFoundError:
    raise SystemExit("lucky_answers.py: the trice_rl package is not installed; run `pip install -e .` in the repository first") from None

import argparse
from pathlib import Path

import pandas as pd

from envs import make_task
from trice_rl.builtin_model import FAMILIES
from trice_rl.machine import machine_info
from trice_rl.policy import Policy

SETTINGS = {
    "arithmetic": ("trice_rl/Arithmetic-v0", {"num_train": 150}),
    "boolean_expressions": ("trice_rl/BBH-boolean_expressions-v0", {"train_source": "procedural", "num_train": 150}),
    "multistep_arithmetic_two": ("trice_rl/BBH-multistep_arithmetic_two-v0", {"train_source": "procedural", "num_train": 150}),
}


def measure(family: str, samples_per_question: int, seed: int) -> list[dict]:
    env, kwargs = SETTINGS[family]
    task = make_task(env, **kwargs)
    policy = Policy.from_pretrained(f"builtin:{family}", seed=seed)
    decode = dict(max_new_tokens=task.max_new_tokens, stop=task.stop_strings)
    rows = []
    for split, greedy in (("train", False), ("test", True)):
        examples = task.examples(split)
        prompts = [task.cot_prompt(e.question) for e in examples]
        n = 1 if greedy else samples_per_question
        out = policy.greedy(prompts, **decode) if greedy else policy.sample(prompts, n=n, **decode)
        questions = [examples[i].question for i in out.prompt_index]
        correct = task.score(out.texts, [examples[i].answer for i in out.prompt_index]).astype(bool)
        steps_right = task.steps_right(questions, out.texts)
        rows.append(
            {
                "setting": family,
                "split": split,
                "decoding": "greedy" if greedy else f"sampled x{n}",
                "completions": len(out),
                "answer_right": float(correct.mean()),
                "every_step_right": float(steps_right.mean()),
                "right_answers_with_every_step_right": float(steps_right[correct].mean()) if correct.any() else float("nan"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--samples", type=int, default=4, help="samples per training question")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/lucky_answers.csv")
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or args.samples < 1:
        parser.error(f"families must be among {', '.join(FAMILIES)} and --samples at least 1")
    table = pd.DataFrame([row for family in families for row in measure(family, args.samples, args.seed)])
    table["machine"] = machine_info().get("cpu", "")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.drop(columns="machine").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return table


if __name__ == "__main__":
    main()
