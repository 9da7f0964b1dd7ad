"""Write the benchmark's results page from its CSVs (never typed by hand).

    python experiments/report.py runs/benchmark --throughput runs/throughput/throughput.csv

Reads ``results.csv``, ``base.csv``, ``lr_search.csv``, ``trl_grpo.csv`` and ``config.json``
of a benchmark folder (experiments/benchmark.py) and a throughput CSV
(experiments/bench_throughput.py); copies the plots and those CSVs to ``docs/benchmark/`` and
writes ``docs/benchmark/results.md``.  Each expectation of the paper gets a verdict computed
from the seeds, at equal samples and at equal training FLOPs: the difference of means ± its
standard error, "supported" beyond two standard errors, "contradicted" below minus two,
"not resolved" in between.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"
COT_METHODS = ("cot-sft", "star", "rft", "trice-nocv", "trice", "trice-k", "grpo")
MATCHED = "eval_acc_greedy_at_matched_train_flops"


def mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def difference(results: pd.DataFrame, setting: str, a: str, b: str, metric: str = "eval_acc_greedy") -> tuple[float, float, int]:
    """mean(a) − mean(b) over seeds, its standard error, and the smaller seed count."""
    rows = results[results["setting"] == setting]
    x, y = rows[rows["method"] == a][metric].dropna(), rows[rows["method"] == b][metric].dropna()
    if x.empty or y.empty:
        return float("nan"), float("nan"), 0
    if len(x) < 2 or len(y) < 2:  # no spread to judge a difference by
        return float(x.mean() - y.mean()), float("nan"), min(len(x), len(y))
    se = np.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
    return float(x.mean() - y.mean()), float(se), min(len(x), len(y))


def verdict(d: float, se: float, at_least: bool = False) -> str:
    """'≥' claims are contradicted only by a clear deficit, and supported by a clear gain
    or a tie within noise is reported as such."""
    if np.isnan(d):
        return "not measured"
    if np.isnan(se):
        return "not judged (one seed)"
    if d > 2 * se:
        return "supported"
    if d < -2 * se:
        return "contradicted"
    return "consistent (within noise)" if at_least else "not resolved (within noise)"


def accuracy_table(results: pd.DataFrame, base: pd.DataFrame, trl: pd.DataFrame | None) -> str:
    lines = [
        "| setting | method | lr | test greedy | test greedy at equal FLOPs | test majority | validation greedy | hardest quartile solved | samples | optimizer steps | training PFLOPs | training s / run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    matched = MATCHED if MATCHED in results else None
    for setting in results["setting"].unique():
        b = base[base["setting"] == setting].iloc[0]
        lines.append(
            f"| {setting} | base model | – | {b['eval_acc_greedy']:.3f} | – | {b['eval_acc_majority']:.3f} | {b['val_acc_greedy']:.3f} | – | 0 | 0 | 0 | – |"
        )
        rows = results[results["setting"] == setting]
        for method, group in rows.groupby("method", sort=False):
            solved = mean_std(group["tracked_solved"]) if group["tracked_solved"].notna().any() else "–"
            lines.append(
                f"| {setting} | {method} | {group['lr'].iloc[0]:g} | {mean_std(group['eval_acc_greedy'])} | {mean_std(group[matched]) if matched else '–'} "
                f"| {mean_std(group['eval_acc_majority'])} | {mean_std(group['val_acc_greedy'])} | {solved} | {int(group['samples_drawn'].mean())} "
                f"| {int(group['grad_steps'].mean())} | {pflops(group)} | {group['wall_seconds'].mean():.0f} |"
            )
        if trl is not None and (trl["setting"] == setting).any():
            t = trl[trl["setting"] == setting]
            label = "TRL GRPOTrainer" if len(t) > 1 else f"TRL GRPOTrainer (seed {int(t['seed'].iloc[0])})"
            lines.append(
                f"| {setting} | {label} | {t['lr'].iloc[0]:g} | {mean_std(t['eval_acc_greedy'])} | – | {mean_std(t['eval_acc_majority'])} | – | – "
                f"| {int(t['samples_drawn'].mean())} | {int(t['grad_steps'].mean())} | – | {t['wall_seconds'].mean():.0f} |"
            )
    return "\n".join(lines)


def pflops(group: pd.DataFrame) -> str:
    if "train_flops" not in group or group["train_flops"].isna().all():
        return "–"
    return f"{group['train_flops'].mean() / 1e15:.3g}"


def trl_table(trl: pd.DataFrame, results: pd.DataFrame) -> str:
    """Per setting, TRL's runs (one per seed) against our grpo's chosen runs: training wall
    time per sample (mean over seeds) and test greedy accuracy (mean ± std over seeds)."""
    lines = [
        "| setting | TRL s / sample | ours s / sample | ours / TRL | TRL test greedy | ours test greedy | TRL − ours ± s.e. |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, t in trl.groupby("setting", sort=False):
        ours = results[(results["setting"] == setting) & (results["method"] == "grpo")]
        theirs_s, ours_s = (t["wall_seconds"] / t["samples_drawn"]).mean(), (ours["wall_seconds"] / ours["samples_drawn"]).mean()
        both = pd.concat([t.assign(method="trl-grpo"), ours])
        d, se, _ = difference(both, setting, "trl-grpo", "grpo")
        lines.append(
            f"| {setting} | {theirs_s:.4f} | {ours_s:.4f} | {ours_s / theirs_s:.2f} | {mean_std(t['eval_acc_greedy'])} | {mean_std(ours['eval_acc_greedy'])} | {d:+.3f} ± {se:.3f} |"
        )
    return "\n".join(lines)


def steps_right_table(results: pd.DataFrame, folder: Path) -> str | None:
    """Per setting and method (chosen runs, mean over seeds), of what is right by its answer,
    the share with every step right: the greedy test outputs at the end (a share of all
    items), the correct samples over the run, and the rationales the method holds at the
    end (TRICE's memory, STaR's kept set).  ``None`` where the runs logged none."""
    rows = []
    for row in results.itertuples():
        path = folder / row.setting / f"lr{row.lr:g}" / f"{row.method}-seed{row.seed}.csv"
        run = pd.read_csv(path) if path.exists() else pd.DataFrame()
        last = {c: run[c].dropna().iloc[-1] if c in run and run[c].notna().any() else np.nan for c in ("eval_steps_right", "held_steps_right")}
        last["correct_steps_right"] = run["correct_steps_right"].mean() if "correct_steps_right" in run else np.nan
        rows.append({"setting": row.setting, "method": row.method, "eval_acc_greedy": row.eval_acc_greedy} | last)
    table = pd.DataFrame(rows)
    if table.empty or table[["eval_steps_right", "correct_steps_right", "held_steps_right"]].isna().all().all():
        return None
    lines = [
        "| setting | method | test greedy: answer right | test greedy: every step right | correct samples with every step right | held rationales with every step right |",
        "|---|---|---|---|---|---|",
    ]
    for (setting, method), group in table.groupby(["setting", "method"], sort=False):
        cells = [mean_std(group[c]) for c in ("eval_acc_greedy", "eval_steps_right", "correct_steps_right", "held_steps_right")]
        lines.append(f"| {setting} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def expectations(results: pd.DataFrame, folder: Path) -> str:
    """Each of the paper's expectations judged on test greedy accuracy at the end of the
    samples budget and, where measured, at equal training FLOPs."""
    lines = [
        "| setting | expectation | at equal samples: difference of test greedy means ± s.e. | verdict | at equal FLOPs: difference ± s.e. | verdict |",
        "|---|---|---|---|---|---|",
    ]
    claims = [
        ("trice", "trice-nocv", "TRICE ≥ TRICE-noCV", True),
        ("trice-nocv", "rft", "TRICE-noCV ≥ rft", True),
        ("trice", "rft", "TRICE ≥ rft", True),  # the chain's ends, judged also where TRICE-noCV did not run
        ("trice", "star", "TRICE > STaR", False),
    ]
    for setting in results["setting"].unique():
        methods = set(results[results["setting"] == setting]["method"])
        for a, b, label, at_least in claims:
            if {a, b} <= methods:
                d, se, _ = difference(results, setting, a, b)
                at_flops = "– | –"
                if MATCHED in results:
                    df, sef, _ = difference(results, setting, a, b, MATCHED)
                    at_flops = f"{df:+.3f} ± {sef:.3f} | {verdict(df, sef, at_least)}"
                lines.append(f"| {setting} | {label} | {d:+.3f} ± {se:.3f} | {verdict(d, se, at_least)} | {at_flops} |")
        if "prompt-tuning" in methods:
            cot = [m for m in COT_METHODS if m in methods]
            beats = []
            for m in cot:
                d, se, _ = difference(results, setting, m, "prompt-tuning")
                beats.append(f"{m} {d:+.3f} ± {se:.3f} ({verdict(d, se)})")
            lines.append(f"| {setting} | chain-of-thought methods > direct prompt tuning | {'; '.join(beats)} | {sum('(supported)' in x for x in beats)} of {len(cot)} supported | – | – |")
        for line in half_samples_bar(results, folder, setting):
            lines.append(line)
        ratio = variance_ratio(folder, setting)
        if ratio:
            lines.append(f"| {setting} | the control variate lowers gradient variance as accuracy rises | TRICE ÷ TRICE-noCV variance, {ratio} | see the variance plot | – | – |")
    return "\n".join(lines)


def samples_to_reach(run: pd.DataFrame, accuracy: float) -> float:
    """The samples drawn at a run's first test evaluation at or above ``accuracy`` (NaN: never)."""
    evaluations = run[run["eval_acc_greedy"].notna()]
    reached = evaluations[evaluations["eval_acc_greedy"] >= accuracy - 1e-9]
    return float(reached["samples_drawn"].iloc[0]) if not reached.empty else float("nan")


def half_samples_bar(results: pd.DataFrame, folder: Path, setting: str) -> list[str]:
    """Issue 16's bar, per TRICE variant and baseline: does each seed's run reach the
    baseline's final mean test greedy accuracy with at most half the baseline's samples?"""
    rows = results[results["setting"] == setting]
    lines = []
    for variant in ("trice", "trice-k"):
        runs = rows[rows["method"] == variant]
        for baseline in ("star", "rft"):
            base = rows[rows["method"] == baseline]
            if runs.empty or base.empty:
                continue
            target, half = base["eval_acc_greedy"].mean(), base["samples_drawn"].mean() / 2
            reached = []
            for row in runs.itertuples():
                path = folder / setting / f"lr{row.lr:g}" / f"{variant}-seed{row.seed}.csv"
                reached.append(samples_to_reach(pd.read_csv(path), target) if path.exists() else float("nan"))
            met = all(r <= half for r in reached)  # NaN (never reached) compares False
            shown = ", ".join("never" if np.isnan(r) else f"{r:,.0f}" for r in reached)
            lines.append(
                f"| {setting} | {variant} reaches {baseline}'s final accuracy ({target:.3f}) with at most half its samples ({half:,.0f}) "
                f"| samples to reach it, per seed: {shown} | {'met' if met else 'not met'} | – | – |"
            )
    return lines


def variance_ratio(folder: Path, setting: str) -> str:
    """Mean (over seeds) gradient variance of TRICE over TRICE-noCV at each probe step, with
    TRICE's training proposal accuracy there."""
    search = pd.read_csv(folder / "lr_search.csv")
    chosen = search[(search["setting"] == setting) & search["chosen"]].set_index("method")["lr"]
    if not {"trice", "trice-nocv"} <= set(chosen.index):
        return ""
    per_step = {}
    for method in ("trice", "trice-nocv"):
        paths = sorted((folder / setting / f"lr{chosen[method]:g}").glob(f"{method}-seed*.csv"))
        rows = pd.concat([pd.read_csv(p) for p in paths]).dropna(subset=["grad_variance"])
        per_step[method] = rows.groupby("step")[["grad_variance", "train_proposal_acc"]].mean()
    both = per_step["trice"].merge(per_step["trice-nocv"], left_index=True, right_index=True, suffixes=("", "_nocv"))
    return "; ".join(
        f"step {step}: ratio {row.grad_variance / row.grad_variance_nocv:.2g} at proposal accuracy {row.train_proposal_acc:.2f}"
        for step, row in both.iterrows()
    )


def throughput_table(path: Path) -> str:
    rows = pd.read_csv(path)
    lines = ["| model | benchmark | implementation | setting | median s | tokens/s | s / sample | GFLOP/s | % of matmul | ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows.itertuples():
        ratio = "" if pd.isna(r.ratio) else f"{r.ratio:.2f}"
        tokens = "" if pd.isna(r.tokens_per_s) else f"{r.tokens_per_s:.0f}"
        lines.append(
            f"| {r.model} | {r.benchmark} | {r.implementation} | {r.setting} | {r.seconds:.3f} | {tokens} | {'' if pd.isna(r.s_per_sample) else f'{r.s_per_sample:.4f}'} | {r.flops_per_s / 1e9:.2f} | {100 * r.frac_of_matmul:.1f} | {ratio} |"
        )
    first = rows.iloc[0]
    lines.append(
        f"\nMachine: {first['cpu']}, {first['cores']} cores, {first['threads']} torch threads, torch {first['torch']}; float32 matmul "
        f"{first['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s; load average {first['load1_start']:.2f} → {first['load1_end']:.2f}. "
        "Ratio: sampling = our tokens/s ÷ `model.generate`'s (> 1: ours faster); train step = our time ÷ TRL GRPOTrainer's (< 1: ours faster)."
    )
    return "\n".join(lines)


def copy(source: Path, target: Path) -> None:
    """Copy unless they are one file (regenerating the section from docs/benchmark itself)."""
    if not target.exists() or not source.samefile(target):
        shutil.copy(source, target)


def commands(config: dict) -> str:
    """The command that wrote the folder, or for a benchmark resumed in the same folder each
    invocation with its time and the finished runs it reused from the ones before."""
    invocations = config.get("invocations") or [{"command": config["command"], "wall_seconds": config.get("wall_seconds", float("nan"))}]

    def reuse(i: dict) -> str:
        parts = [f"{i['runs_reused']} of its {i['runs']} runs"] if i.get("runs_reused") else []
        if i.get("trl_runs_reused") or (parts and i.get("trl_runs")):
            parts.append(f"{i.get('trl_runs_reused') or 'none'} of its {i['trl_runs']} TRL runs")
        return ", reusing " + " and ".join(parts) if parts else ""

    if len(invocations) == 1:  # runs it reused were finished in the folder before it (their times are the table's)
        return f"Command: `{invocations[0]['command']}` ({invocations[0]['wall_seconds']:.0f} s{reuse(invocations[0])})"
    steps = [f"`{i['command']}` ({i['wall_seconds']:.0f} s{reuse(i)})" for i in invocations]
    return "Commands, one benchmark resumed in the same folder: " + ", then ".join(steps) + ","


def matmul_note(machine: dict) -> str:
    """The machine's float32 matmul rate, where the benchmark measured it."""
    rate = machine.get("matmul_gflops")
    return f" ({rate:.0f} GFLOP/s float32 matmul, 2048², {machine.get('threads', '?')} threads)" if rate else ""


def own_sizes(config: dict) -> str:
    """The settings whose training set is not the preset's (the large-training-set regime)."""
    own = [f"{name}: {setting['num_train']:,}" for name, setting in config.get("settings", {}).items() if setting.get("num_train")]
    return f" ({', '.join(own)})" if own else ""


def rates_note(config: dict) -> str:
    """How each tune mode's learning rate was chosen: a grid searched on validation, or fixed."""
    seed = config["seeds"][0]
    kinds = [
        f"{kind}: fixed at {rates[0]:g}" if len(rates) == 1 else f"{kind}: searched over {', '.join(f'{lr:g}' for lr in rates)} on seed {seed} by validation greedy accuracy"
        for kind, rates in config["learning_rates"].items()
    ]
    return f"Learning rates ({'; '.join(kinds)}); test items choose nothing."


def time_note(results: pd.DataFrame) -> str:
    """How the runs in the table split their time between training and held-out evaluation
    (the runner records both; older benchmark folders have no evaluation time)."""
    if "eval_seconds" not in results or results["eval_seconds"].isna().any():
        return ""
    training, evaluating = results["wall_seconds"].sum(), results["eval_seconds"].sum()
    return (
        f" The {len(results)} runs in the table spent {training:,.0f} s training and {evaluating:,.0f} s in held-out "
        f"evaluation (test and validation): evaluation is {evaluating / (training + evaluating):.0%} of their time."
    )


def build_section(folder: Path, throughput: Path | None, docs: Path, readme_dir: Path = ROOT) -> str:
    config = json.loads((folder / "config.json").read_text())
    results = pd.read_csv(folder / "results.csv")
    base = pd.read_csv(folder / "base.csv")
    trl = pd.read_csv(folder / "trl_grpo.csv") if (folder / "trl_grpo.csv").exists() else None
    if trl is not None and "grad_steps" not in trl:  # older benchmark runs: derive from the shapes
        shape = config["method_shapes"]["grpo"]
        trl["grad_steps"] = trl["samples_drawn"] // (shape["batch_size"] * shape["group_size"])
    docs.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "results.csv", "base.csv", "lr_search.csv", "trl_grpo.csv", "summary.csv"):
        if (folder / name).exists():  # the tables behind the section, committed next to the plots
            copy(folder / name, docs / name)
    if throughput is not None:
        copy(throughput, docs / "throughput.csv")
    machine = config.get("machine", {})
    sizes = config["preset"]
    parts = [
        START,
        "## Results",
        "",
        "Generated by `experiments/report.py` from the CSVs of one benchmark run; do not edit by hand.",
        "Accuracy \"at equal FLOPs\" is read off each run's curve at the largest training FLOPs that every sampling method reached (per seed).",
        "",
        f"{commands(config)} on {machine.get('cpu', 'unknown CPU')}, "
        f"{machine.get('cores', '?')} cores{matmul_note(machine)}, torch {machine.get('torch', '?')}, no GPU. Sizes: {sizes['num_train']} training examples{own_sizes(config)} "
        f"(validation {sizes['num_validation']}), {sizes['budget_samples']} samples per run, seeds {', '.join(map(str, config['seeds']))}, "
        f"majority of {sizes['majority_k']}. {rates_note(config)} "
        f"The full-size setting is `--preset full`.{time_note(results)}",
        "",
        "Final held-out accuracy (mean ± std over seeds; the base model is deterministic greedy, one sampled majority run):",
        "",
        accuracy_table(results, base, trl),
        "",
    ]
    for setting in results["setting"].unique():
        images = [f"{kind}_{setting}.png" for kind in ("curves", "curves_flops", "variance", "hardest") if (folder / f"{kind}_{setting}.png").exists()]
        for image in images:
            copy(folder / image, docs / image)
        if images:
            parts += [f"**{setting}**", "", " ".join(f"![{image}]({os.path.relpath(docs / image, readme_dir)})" for image in images), ""]
    parts += ["### The paper's expectations", "", expectations(results, folder), ""]
    steps = steps_right_table(results, folder)
    if steps is not None:
        parts += [
            "### Right answers from right steps",
            "",
            "The procedural tasks know their gold steps: of what a method gets right by its answer, how much is right step by step (a right answer from a wrong step is right by luck).",
            "",
            steps,
            "",
        ]
    if trl is not None:
        parts += ["### TRL's GRPOTrainer next to our `grpo` (same model, prompts per step, generations, samples, learning rate)", "", trl_table(trl, results), ""]
    if throughput is not None:
        parts += ["### Throughput (`python experiments/bench_throughput.py`)", "", throughput_table(throughput), ""]
    parts.append(END)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a benchmark output folder")
    parser.add_argument("--throughput", help="a throughput CSV")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmark"), help="where the page, its plots and CSVs go")
    args = parser.parse_args(argv)
    docs = Path(args.docs)
    page = build_section(Path(args.folder), Path(args.throughput) if args.throughput else None, docs, docs.resolve())
    (docs / "results.md").write_text(page.replace(START + "\n", "").replace("\n" + END, "") + "\n")
    print(f"wrote {docs / 'results.md'}")
    return page


if __name__ == "__main__":
    main()
