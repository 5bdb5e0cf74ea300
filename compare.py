"""The paper's comparison in one command: from the same warm start and seeds, SFT on all
teacher data versus GRPO with the sparse, strict and MENTOR rewards.

    python compare.py --seeds 3

Prints one table of ID and OOD accuracy and teacher similarity (tool-name F1, JSD of the
tool-usage distributions), mean and spread over seeds, and writes runs/compare/results.json
(and curves.png, if matplotlib is installed). Finished runs are reused, so a rerun only
does what is missing.
"""
import argparse
import json
import os
import statistics
import sys
import time

import evaluate
import model as student
import rl
import sft
import teacher

METHODS = {  # name -> the reward mode of its GRPO run (None: SFT on all teacher data)
    "sft": None, "sparse": "sparse", "strict": "strict", "mentor": "mentor",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="SFT vs sparse, strict and MENTOR GRPO, over seeds.")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS) + ["mentor-exact"])
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--data", default="data")
    ap.add_argument("--rl-steps", type=int, default=rl.PROFILES["tiny"]["steps"])
    ap.add_argument("--sft-steps", type=int, default=600, help="SFT steps on all data, after the warm start")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.rl_steps < 1 or args.sft_steps < 1:
        ap.error("--seeds, --rl-steps and --sft-steps must be positive")
    return args


def run_method(method: str, seed: int, warm: str, args: argparse.Namespace) -> str:
    """Train one method from the warm start (unless its run already finished); return its folder."""
    out = os.path.join(args.out, f"{method}-s{seed}")
    if os.path.isfile(os.path.join(out, "eval.json")):
        return out
    common = ["--data", args.data, "--device", args.device, "--seed", str(seed), "--out", out]
    if method == "sft":
        # Continue from the warm start on all teacher data, with the tiny profile's step size.
        sft.train(sft.parse_args(common + ["--model", warm, "--steps", str(args.sft_steps), "--eval-every", "0",
                                           "--lr", str(sft.PROFILES["tiny"]["lr"] / 3), "--batch-size", "32",
                                           "--warmup", "50"]))
    else:
        rl.train(rl.parse_args(common + ["--init", warm, "--reward", METHODS.get(method, method),
                                         "--steps", str(args.rl_steps), "--eval-every", "0"]))
    return out


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
    runs = {m: [] for m in ["warm"] + args.methods}
    try:
        teacher.ensure_data(args.data)
        for seed in range(args.seeds):
            warm = sft.parse_args(rl.WARM_START + ["--out", os.path.join(args.out, f"warm-s{seed}"), "--seed", str(seed),
                                                   "--data", args.data, "--device", args.device])
            if not os.path.isfile(os.path.join(warm.out, "eval.json")):
                sft.train(warm)
            runs["warm"].append(warm.out)
            for method in args.methods:
                runs[method].append(run_method(method, seed, warm.out, args))
    except (teacher.DataError, student.ModelError) as e:
        sys.exit(f"error: {e}")

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
