"""Curves of GRPO runs, step by step, from their metrics.jsonl (matplotlib, optional).

    python plot.py RUN [RUN ...] [--out curves.png]

Four panels: the share of rollouts that use exactly the teacher's tools on the problems
where the warm student's habit picks others (all problems when there is no habit); the share
of groups whose rewards differ (a group of equal rewards teaches nothing); the mean reward;
OOD accuracy where the run was evaluated (its start, every --eval-every steps, its end).
rl.py draws its own run's curves at the end (RUN/curves.png), compare.py each condition's
methods, the mean of their seeds (runs/compare/curves.png), where matplotlib is installed.
"""
import argparse
import json
import os
import sys

PANELS = [("same_tools_habit", "teacher's tools on habit problems"),
          ("spread", "groups with reward spread"),
          ("reward", "mean reward"),
          ("ood", "OOD accuracy")]


def series(run: str) -> dict[str, list]:
    """Each panel's values of the run folder `run`: a value per step (its metrics.jsonl rows
    of a step), and for "ood" (step, accuracy) points: the start's eval.json (rl.py names the
    folder it started from in args.json), the periodic evaluations, the run's eval.json."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = list(map(json.loads, f))
    steps = [row for row in rows if "reward" in row]
    for row in steps:
        row["spread"] = 1 - row["zero_var_groups"]
        row.setdefault("same_tools_habit", row["same_tools"])
    out = {key: [row[key] for row in steps] for key, _ in PANELS[:-1]}
    with open(os.path.join(run, "args.json")) as f:
        start = json.load(f).get("init")
    periodic = [(row["step"], row["OOD_accuracy"]) for row in rows if "OOD_accuracy" in row]
    out["ood"] = ood_at(start, 0) + periodic + ood_at(run, len(steps))
    return out


def ood_at(folder: str | None, step: int) -> list[tuple[int, float]]:
    """[(step, OOD accuracy in `folder`/eval.json)], or [] where there is none."""
    path = os.path.join(folder or "", "eval.json")
    if not folder or not os.path.isfile(path):
        return []
    with open(path) as f:
        return [(step, json.load(f)["OOD"]["accuracy"])]


def mean(runs: list[dict[str, list]]) -> dict[str, list]:
    """The step-by-step mean of several runs' series (as many steps, and OOD evaluations, as
    the shortest)."""
    out = {key: [sum(values) / len(values) for values in zip(*(run[key] for run in runs))]
           for key, _ in PANELS[:-1]}
    out["ood"] = [(points[0][0], sum(acc for _, acc in points) / len(points))
                  for points in zip(*(run["ood"] for run in runs))]
    return out


def draw(rows: dict[str, dict[str, dict[str, list[float]]]], out: str) -> None:
    """Write the image `out`: a row of panels per name of `rows` (a condition, or a run), in
    each a line per series of that row (a method). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(PANELS), figsize=(4 * len(PANELS), 3 * len(rows)),
                             squeeze=False)
    for line, (title, lines) in zip(axes, rows.items()):
        for ax, (key, label) in zip(line, PANELS):
            for name, values in lines.items():
                if key == "ood":  # a point per evaluation, not per step
                    ax.plot(*zip(*values[key]), marker="o", label=name)
                else:
                    ax.plot(range(1, len(values[key]) + 1), values[key], label=name)
            ax.set_title(f"{title}: {label}", fontsize=9)
            ax.set_xlabel("step")
            if key != "reward":
                ax.set_ylim(0, 1)
        line[0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out + ".tmp.png", dpi=100)  # then renamed: a crash never leaves half an image
    os.replace(out + ".tmp.png", out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="rl.py run folders")
    ap.add_argument("--out", default="curves.png")
    args = ap.parse_args(argv)
    try:
        draw({"runs": {run: series(run) for run in args.runs}}, args.out)
    except ImportError:
        sys.exit("error: plot.py needs matplotlib (pip install matplotlib)")
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
