"""The comparison in one command: for each task condition and seed, from the same warm start
(SFT on a weak demonstrator, playing the pretrained student), SFT on the teacher's
trajectories versus GRPO with the sparse, strict and MENTOR rewards.

    python compare.py --gate          # the pre-registered check, before any comparison (minutes)
    python compare.py --jobs 2        # every condition, 3 seeds, two runs at a time

Methods: sft-matched (the teacher's trajectories of the very problems GRPO samples, as many
as it samples), sft-all (all teacher data, 300 steps of 32), and GRPO with each reward (40
steps of 16 problems x 8 samples); on request sft-replay (sft-all with a fifth of each batch
from the warm start's skills the teacher never shows: the forgetting condition's).
Prints, per condition, ID and OOD accuracy, the share of OOD answers that use exactly the
teacher's tools, accuracy on the retained skills (where a condition has them), and OOD
accuracy minus sparse GRPO's seed by seed, mean and spread over seeds, and writes
runs/compare/results.json (with per-family accuracy) and curves.png (matplotlib, if
installed). Each seed's warm start must pass rl.WARM_GATE (else it is drawn again) before
any method starts from it. Finished runs are reused, so a rerun only does what is missing;
a finished run of other settings stops the comparison with an error instead of being
reported as if it were this one.
"""
import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial

import torch

import files
import model as student
import plot
import reward
import rl
import sft
import tasks
import teacher
import tools

METHODS = {  # name -> the reward mode of its GRPO run (None: SFT on the teacher's trajectories)
    "sft-matched": None, "sft-all": None,
    "sparse": "sparse", "strict": "strict", "mentor": "mentor",
}
# sft-all replaying the warm start's skills the teacher never shows ("forgetting" only)
REPLAY = {"sft-replay": 0.2}
SFT_LR = sft.SETTINGS["lr"][0] / 3  # SFT from a warm start: a third of the from-scratch rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (sys.argv when `argv` is None); bad values exit through ap.error."""
    ap = argparse.ArgumentParser(
        description="SFT vs sparse, strict and MENTOR GRPO, per condition, over seeds.")
    ap.add_argument("--conditions", nargs="+", default=list(tasks.CONDITIONS),
                    choices=tasks.CONDITIONS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS),
                    choices=list(METHODS) + list(REPLAY) + list(reward.MODES))
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--rl-steps", type=int, default=40, help="GRPO steps (and sft-matched steps)")
    ap.add_argument("--sft-steps", type=int, default=300,
                    help="sft-all: SFT steps of 32 on all teacher data")
    ap.add_argument("--sft-lr", type=float, default=SFT_LR, help="sft-all: peak learning rate")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once, one CPU thread each "
                         "(a tiny model gains little from more threads)")
    ap.add_argument("--gate", action="store_true",
                    help="only the gate: sample the hidden condition's warm start")
    ap.add_argument("--gate-problems", type=int, default=200)
    args = ap.parse_args(argv)
    if min(args.seeds, args.rl_steps, args.sft_steps, args.jobs, args.gate_problems) < 1:
        ap.error("--seeds, --rl-steps, --sft-steps, --jobs and --gate-problems must be positive")
    if args.sft_lr <= 0:
        ap.error("--sft-lr must be positive")
    # A method named twice would train into one folder twice and count each seed twice.
    args.methods = list(dict.fromkeys(args.methods))
    args.warm_start = rl.WARM_START  # carried along: worker processes import rl afresh
    return args


# ------------------------------------------------------------------------------- the runs

def warm_args(condition: str, seed: int, args: argparse.Namespace) -> argparse.Namespace:
    """The sft.py settings of one condition's and seed's warm start (rl.py's)."""
    out = os.path.join(args.out, condition, f"warm-s{seed}")
    return sft.parse_args(args.warm_start + ["--condition", condition, "--seed", str(seed),
                                             "--device", args.device, "--out", out])


def method_args(condition: str, method: str, seed: int, warm: str,
                args: argparse.Namespace) -> argparse.Namespace:
    """The settings of one method's run from the warm start `warm`: sft.py's or rl.py's."""
    common = ["--condition", condition, "--device", args.device, "--seed", str(seed),
              "--eval-every", "0",
              "--out", os.path.join(args.out, condition, f"{method}-s{seed}")]
    if method in ("sft-all", *REPLAY):
        return sft.parse_args(common + ["--model", warm, "--steps", str(args.sft_steps),
                                        "--batch-size", "32", "--lr", str(args.sft_lr),
                                        "--warmup", "50", "--replay", str(REPLAY.get(method, 0))])
    if method == "sft-matched":  # the same problems, in the same order, as this seed's GRPO runs
        grpo = rl.parse_args([])  # the tiny GRPO run's problems per step and warm-up
        return sft.parse_args(common + ["--model", warm, "--matched", "--steps", str(args.rl_steps),
                                        "--batch-size", str(grpo.prompts), "--lr", str(SFT_LR),
                                        "--warmup", str(grpo.warmup)])
    return rl.parse_args(common + ["--init", warm, "--reward", METHODS.get(method) or method,
                                   "--steps", str(args.rl_steps)])


def run_warm(condition: str, seed: int, args: argparse.Namespace) -> str:
    """One warm start, trained unless it already exists and held to rl.WARM_GATE; its folder."""
    return rl.make_warm_start(warm_args(condition, seed, args))


def run_method(condition: str, method: str, seed: int, warm: str, args: argparse.Namespace) -> str:
    """Train one method from the warm start (unless its run already finished); return its folder."""
    run = method_args(condition, method, seed, warm, args)
    if not files.finished_run(run):
        (sft.train if method.startswith("sft") else rl.train)(run)
    return run.out


def run_all(warm_start: Callable, method: Callable, pairs: list[tuple[str, int]],
            methods: list[str], workers: int) -> tuple[dict, dict]:
    """warm_start(condition, seed) for every pair, and method(condition, name, seed, its warm
    start's result) for every method of each: here, or in `workers` processes at once, where a
    pair's methods are queued as soon as its warm start is done, in the order of `methods` (the
    longest first, so that no process idles at the end while another works). Returns
    ({pair: warm start's result}, {(condition, name, seed): method's result})."""
    if workers == 1:
        warms = {pair: warm_start(*pair) for pair in pairs}
        return warms, {(c, m, s): method(c, m, s, warms[c, s]) for c, s in pairs for m in methods}
    # spawn, not fork: a forked child inherits torch's thread pools (and CUDA) half-initialised
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        started = {pool.submit(warm_start, *pair): pair for pair in pairs}
        warms, runs = {}, {}
        for future in as_completed(started):
            c, s = started[future]
            warms[c, s] = future.result()
            runs.update({(c, m, s): pool.submit(method, c, m, s, warms[c, s]) for m in methods})
        return warms, {key: future.result() for key, future in runs.items()}


# ------------------------------------------------------------------------------- the gate

def gate_stats(records: list[dict], rollouts: list, group: int) -> dict:
    """The gate's statistics of `group` rollouts per record (model.Rollouts, a record's adjacent):
    on the records whose habit picks other tools than the teacher ("habit problems"), the share
    of samples that use exactly the teacher's set of tools, and the share of problems where the
    habit's answer is right too (the outcome cannot tell them apart); over all records, per
    reward mode, the share of groups whose rewards are not all equal (the groups that teach)."""
    habit = [i for i, r in enumerate(records) if files.habit_differs(r)]
    spread = {}
    for mode in reward.MODES:
        rewards = torch.tensor([reward.score_rollout(ro, records[i // group], mode)["reward"]
                                for i, ro in enumerate(rollouts)]).view(-1, group)
        spread[mode] = (rewards.std(1) > 0).float().mean().item()
    samples = [reward.score_rollout(rollouts[i * group + j], records[i])["same_tools"]
               for i in habit for j in range(group)]
    return {"problems": len(records), "habit_problems": len(habit),
            "teacher_tools_share": sum(samples) / max(1, len(samples)),
            "outcome_agrees": sum(tasks.is_correct(records[i]["habit"]["answer"],
                                                   records[i]["answer"])
                                  for i in habit) / max(1, len(habit)),
            "spread": spread}


def gate_passes(stats: dict) -> bool:
    """The pre-registered gate: the teacher's tools are there to be found (10-60% of samples on
    habit problems), the outcome cannot find them (it agrees on >= 80% of those problems), and
    MENTOR's reward has signal where sparse has little (>= 1.5x the groups with spread)."""
    return (0.10 <= stats["teacher_tools_share"] <= 0.60 and stats["outcome_agrees"] >= 0.80
            and stats["spread"]["mentor"] >= 1.5 * stats["spread"]["sparse"])


def gate(args: argparse.Namespace) -> dict:
    """Sample the hidden condition's warm start (seed 0), G = 8 rollouts of the first
    --gate-problems training problems at rl.py's settings, score them with every reward mode.
    Writes and returns the statistics with the verdict."""
    warm = run_warm("hidden", 0, args)
    settings = rl.parse_args(["--condition", "hidden"])  # rl.py's tiny defaults
    train = files.load_records(teacher.ensure_data(settings.data, "hidden")["train"])
    records = train[:args.gate_problems]
    policy, tokenizer = student.load(warm, device=args.device)
    rollouts = []
    with torch.no_grad():
        for i in range(0, len(records), 50):
            prompts = [tasks.prompt(r["question"]) for r in records[i:i + 50]]
            rollouts += student.rollout(policy, tokenizer, prompts, tools.schemas(),
                                        n=settings.group, max_tokens=settings.max_tokens,
                                        temperature=settings.temperature, seed=i)
    stats = gate_stats(records, rollouts, settings.group)
    stats["passed"] = gate_passes(stats)
    files.write_json(os.path.join(args.out, "gate.json"), stats)
    return stats


# ---------------------------------------------------------------------------- the report

def summary(values: list[float]) -> str:
    if all(math.isnan(v) for v in values):  # a split this condition does not have
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


COLUMNS = [("ID", "accuracy", "ID acc"), ("OOD", "accuracy", "OOD acc"),
           ("OOD", "same_tools", "OOD same tools"), ("retain", "accuracy", "retain acc")]


def report(runs: dict[str, dict[str, list[str]]]) -> tuple[dict, str]:
    """Per condition and method, the final evaluations of its runs (one per seed): the
    columns of COLUMNS and per-family accuracy, each a list over seeds; where sparse GRPO ran,
    also OOD accuracy minus sparse's, seed by seed (paired: a seed's methods share its warm
    start, and warm starts differ more than methods do); and the text table."""
    header = f"{'condition':<14}{'method':<13}" + "".join(f"{t:>18}" for *_, t in COLUMNS)
    results, lines = {}, [header + f"{'OOD - sparse':>18}"]
    for condition, methods in runs.items():
        results[condition] = {method: scores(folders) for method, folders in methods.items()}
        sparse = results[condition].get("sparse", {}).get("OOD_accuracy")
        for method, row in results[condition].items():
            paired = ""
            if sparse:
                row["OOD_minus_sparse"] = [a - b for a, b in zip(row["OOD_accuracy"], sparse)]
                paired = summary(row["OOD_minus_sparse"])
            lines.append(f"{condition:<14}{method:<13}" + "".join(
                f"{summary(row[f'{s}_{k}']):>18}" for s, k, _ in COLUMNS) + f"{paired:>18}")
    return results, "\n".join(lines)


def scores(folders: list[str]) -> dict:
    """The final evaluations of one method's runs (a folder per seed): the columns of COLUMNS
    and per-family accuracy, each a list over seeds."""
    evals = []
    for folder in folders:
        with open(os.path.join(folder, "eval.json")) as f:
            evals.append(json.load(f))
    row = {f"{split}_{key}": [e.get(split, {}).get(key, float("nan")) for e in evals]
           for split, key, _ in COLUMNS}
    row["by_family"] = {f: [e[s]["by_family"][f] for e in evals] for s in ("ID", "OOD", "retain")
                        if s in evals[0] for f in evals[0][s]["by_family"]}
    return row


def curves(runs: dict[str, dict[str, list[str]]], path: str) -> None:
    """plot.py's panels, a row per condition, a line per GRPO method (the mean of its seeds'
    runs, `runs`: condition -> method -> run folders), to the image `path`."""
    rows = {condition: {method: plot.mean([plot.series(folder) for folder in folders])
                        for method, folders in methods.items()
                        if METHODS.get(method, method) in reward.MODES}
            for condition, methods in runs.items()}  # the warm start and SFT have no rollouts
    try:
        plot.draw(rows, path)
    except ImportError:
        print("matplotlib is not installed: no curves.png (pip install matplotlib)")
        return
    print(f"wrote {path}")


def main() -> None:
    args = parse_args()
    t0 = time.time()
    try:
        if args.gate:
            stats = gate(args)
            print(json.dumps(stats, indent=1))
            verdict = "passed" if stats["passed"] else "FAILED"
            print(f"gate {verdict} ({(time.time() - t0) / 60:.1f} min)")
            return
        seeds = range(args.seeds)
        for condition in args.conditions:
            paths = teacher.ensure_data(os.path.join("data", condition), condition)
            if "warm" not in paths and set(REPLAY) & set(args.methods):
                raise files.DataError(f"sft-replay: the {condition} condition has no warm split "
                                      "to replay (forgetting has one)")
            # Refuse a folder of other settings now, not after hours of training the runs before it.
            for seed in seeds:
                first, redraw = rl.warm_draws(warm_args(condition, seed, args))
                start = redraw.out if files.finished_run(redraw) else first.out
                files.finished_run(first)
                for method in args.methods:
                    files.finished_run(method_args(condition, method, seed, start, args))
        # Every method of a seed starts from that seed's warm start; GRPO runs take longest.
        pairs = [(c, seed) for c in args.conditions for seed in seeds]
        longest_first = sorted(args.methods, key=lambda m: m.startswith("sft"))
        warms, folders = run_all(partial(run_warm, args=args), partial(run_method, args=args),
                                 pairs, longest_first, args.jobs)
    except (files.DataError, student.ModelError) as e:
        sys.exit(f"error: {e}")
    runs = {c: {"warm": [warms[c, s] for s in seeds],
                **{m: [folders[c, m, s] for s in seeds] for m in args.methods}}
            for c in args.conditions}
    results, table = report(runs)
    minutes = (time.time() - t0) / 60
    files.write_json(os.path.join(args.out, "results.json"),
                     {"seeds": args.seeds, "minutes": minutes, **results})
    print(f"{args.seeds} seeds, mean ± std, {minutes:.1f} min\n{table}")
    curves(runs, os.path.join(args.out, "curves.png"))


if __name__ == "__main__":
    main()
