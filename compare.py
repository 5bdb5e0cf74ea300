"""The paper's comparison in one command: from the same warm start and seeds, SFT on all
teacher data versus GRPO with the sparse, strict and MENTOR rewards.

    python compare.py --seeds 3

Prints one table of ID and OOD accuracy and teacher similarity (tool-name F1, JSD of the
tool-usage distributions), mean and spread over seeds, and writes runs/compare/results.json
(and curves.png, if matplotlib is installed). Finished runs are reused, so a rerun only
does what is missing; a finished run of other settings (say another --rl-steps) stops the
comparison with an error instead of being reported as if it were this one.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

import evaluate
import model as student
import rl
import sft
import teacher

METHODS = {  # name -> the reward mode of its GRPO run (None: SFT on all teacher data)
    "sft": None, "sparse": "sparse", "strict": "strict", "mentor": "mentor",
}
# Run settings that say where and how a run is written, run or logged, not what it learns:
# a finished run that differs only in these is reused.
IGNORED = {"out", "device", "compile", "grad_ckpt", "resume", "save_every", "eval_every", "eval_limit"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (sys.argv when `argv` is None); bad values exit through ap.error."""
    ap = argparse.ArgumentParser(description="SFT vs sparse, strict and MENTOR GRPO, over seeds.")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS) + ["mentor-exact"])
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--data", default="data")
    ap.add_argument("--rl-steps", type=int, default=rl.PROFILES["tiny"]["steps"])
    ap.add_argument("--sft-steps", type=int, default=600, help="SFT steps on all data, after the warm start")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once, one CPU thread each (a tiny model gains little from more threads)")
    args = ap.parse_args(argv)
    if min(args.seeds, args.rl_steps, args.sft_steps, args.jobs) < 1:
        ap.error("--seeds, --rl-steps, --sft-steps and --jobs must be positive")
    # A method named twice would train into one folder twice and count each seed twice.
    args.methods = list(dict.fromkeys(args.methods))
    return args


def reusable(run: argparse.Namespace) -> bool:
    """Whether run.out holds a finished run (its eval.json) of these very settings: False
    when it holds none. Raises ModelError when it holds one trained with other settings
    (its args.json), rather than report that run as this one or delete it."""
    if not os.path.isfile(os.path.join(run.out, "eval.json")):
        return False
    try:
        with open(os.path.join(run.out, "args.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise student.ModelError(f"{run.out} has no readable args.json, so how it was trained is unknown; "
                                 "use another --out or delete it")
    wanted = json.loads(json.dumps(vars(run)))  # as args.json stores it
    changed = [key for key in wanted if key not in IGNORED and (key not in saved or saved[key] != wanted[key])]
    if changed:
        old = " and ".join(f"{key}={saved.get(key, 'unset')}" for key in changed)
        new = " and ".join(str(wanted[key]) for key in changed)
        raise student.ModelError(f"{run.out} was trained with {old}, this run asks for {new}; "
                                 "use another --out or delete it")
    return True


def warm_args(seed: int, flags: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """The sft.py settings of one seed's warm start (sft.py `flags`)."""
    return sft.parse_args(flags + ["--out", os.path.join(args.out, f"warm-s{seed}"), "--seed", str(seed),
                                   "--data", args.data, "--device", args.device])


def method_args(method: str, seed: int, warm: str, args: argparse.Namespace) -> argparse.Namespace:
    """The settings of one method's run from the warm start `warm`: sft.py's for "sft", else rl.py's."""
    common = ["--data", args.data, "--device", args.device, "--seed", str(seed),
              "--out", os.path.join(args.out, f"{method}-s{seed}")]
    if method == "sft":
        # Continue from the warm start on all teacher data, with the tiny profile's step size.
        return sft.parse_args(common + ["--model", warm, "--steps", str(args.sft_steps), "--eval-every", "0",
                                        "--lr", str(sft.PROFILES["tiny"]["lr"] / 3), "--batch-size", "32",
                                        "--warmup", "50"])
    return rl.parse_args(common + ["--init", warm, "--reward", METHODS.get(method, method),
                                   "--steps", str(args.rl_steps), "--eval-every", "0"])


def run_warm(seed: int, flags: list[str], args: argparse.Namespace) -> str:
    """The warm start of one seed (sft.py `flags`), trained unless it already exists; its folder."""
    warm = warm_args(seed, flags, args)
    if not reusable(warm):
        sft.train(warm)
    return warm.out


def run_method(method: str, seed: int, warm: str, args: argparse.Namespace) -> str:
    """Train one method from the warm start (unless its run already finished); return its folder."""
    run = method_args(method, seed, warm, args)
    if not reusable(run):
        (sft.train if method == "sft" else rl.train)(run)
    return run.out


def run_all(fn, jobs: list[tuple], workers: int) -> list:
    """fn(*job) for every job, in order: here, or in `workers` processes at once."""
    if workers == 1:
        return [fn(*job) for job in jobs]
    # spawn, not fork: a forked child inherits torch's thread pools (and CUDA) half-initialised
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return list(pool.map(fn, *zip(*jobs)))


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def plot(runs: dict[str, list[str]], path: str) -> None:
    """Reward and rollout accuracy per RL step, one line per method (mean over seeds)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves.png (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, folders in runs.items():
        logs = []
        for folder in folders:
            with open(os.path.join(folder, "metrics.jsonl")) as f:
                logs.append([json.loads(line) for line in f if '"reward"' in line])
        if method == "sft" or not logs:
            continue
        for ax, key in zip(axes, ("reward", "correct")):
            steps = min(len(log) for log in logs)
            ax.plot(range(1, steps + 1), [statistics.mean(log[i][key] for log in logs) for i in range(steps)], label=method)
            ax.set_xlabel("step")
            ax.set_title({"reward": "mean reward", "correct": "rollout accuracy"}[key])
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main() -> None:
    args = parse_args()
    t0 = time.time()
    seeds = range(args.seeds)
    try:
        teacher.ensure_data(args.data)
        # Refuse a folder of other settings now, not after hours of training the runs before it.
        for seed in seeds:
            warm = warm_args(seed, rl.WARM_START, args)
            reusable(warm)
            for method in args.methods:
                reusable(method_args(method, seed, warm.out, args))
        # Every method of a seed starts from that seed's warm start, so those come first.
        warms = run_all(run_warm, [(seed, rl.WARM_START, args) for seed in seeds], args.jobs)
        jobs = [(method, seed, warms[seed], args) for seed in seeds for method in args.methods]
        folders = run_all(run_method, jobs, args.jobs)
    except (teacher.DataError, student.ModelError) as e:
        sys.exit(f"error: {e}")
    runs = {"warm": warms, **{m: [f for (method, *_), f in zip(jobs, folders) if method == m] for m in args.methods}}

    results, rows = {}, []
    header = f"{'method':<13}{'ID acc':>16}{'OOD acc':>16}{'OOD tool F1':>16}{'OOD JSD':>16}"
    for method, folders in runs.items():
        evals = []
        for folder in folders:
            with open(os.path.join(folder, "eval.json")) as f:
                evals.append(json.load(f))
        cols = [("ID", "accuracy"), ("OOD", "accuracy"), ("OOD", "tool_f1"), ("OOD", "tool_jsd")]
        results[method] = {f"{s}_{k}": [e[s][k] for e in evals] for s, k in cols}
        rows.append(f"{method:<13}" + "".join(f"{summary(results[method][f'{s}_{k}']):>16}" for s, k in cols))
    minutes = (time.time() - t0) / 60
    evaluate.write_json(os.path.join(args.out, "results.json"), {"seeds": args.seeds, "minutes": minutes, **results})
    print(f"{args.seeds} seeds, mean ± std, {minutes:.1f} min\n" + header + "\n" + "\n".join(rows))
    plot({m: f for m, f in runs.items() if m != "warm"}, os.path.join(args.out, "curves.png"))


if __name__ == "__main__":
    main()
