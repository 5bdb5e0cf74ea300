"""How the training tests' assertions hold across seeds and CPU kernels: a measurement, not a test.

    python tests/seeds.py [--seeds 12]

torch's AVX-512, AVX2 and default kernels round differently, so a seeded training run lands
elsewhere on another machine; a training test may assert only what holds on all of them. For
each kernel set this CPU has, in a fresh process (ATEN_CPU_CAPABILITY), over --seeds seeds:

  sft   test_train.py's warm fixture (SFT, 40 steps): mean loss of the last 5 steps over the
        first 5; the test asks < 0.6
  toy   test_train.py's toy GRPO from that warm start: mean reward of the last 4 steps minus
        the first 4; the test asks > 0.15
  fit   test_model.py's emit_loss (300 steps, with the Qwen2.5 and the Qwen3 template): the
        last loss; fit() asks < 0.02

Prints each figure per seed and its worst case per kernel set, and whether every test bar holds.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BARS = {"sft": ("<", 0.6), "toy": (">", 0.15), "fit": ("<", 0.02), "fit_qwen3": ("<", 0.02)}


def kernels() -> list[str]:
    """The ATEN_CPU_CAPABILITY values this CPU can run."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return (["default"] + (["avx2"] if " avx2" in flags else [])
            + (["avx512"] if " avx512f" in flags else []))


def worker(seeds: int) -> dict[str, list[float]]:
    """The figures of every seed, in this process (its kernels)."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import torch

    torch.set_num_threads(1)
    import files
    import model
    import sft
    import tasks
    import teacher
    import test_model
    import test_train

    out = {name: [] for name in BARS}
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        # as the fixture
        for split, problems in tasks.benchmark("hidden", n_train=200, n_test=8).items():
            files.write_jsonl(f"data/hidden/{split}.jsonl",
                              [teacher.record(p, teacher.trajectory(p)) for p in problems])
        model.ensure_tiny()
        template, qwen3 = open(test_model.TEMPLATE).read(), open(test_model.QWEN3).read()
        for seed in range(seeds):
            warm = f"runs/warm{seed}"
            sft.train(sft.parse_args(["--limit", "64", "--steps", "40", "--batch-size", "16",
                                      "--eval-every", "0", "--out", warm, "--seed", str(seed)]))
            losses = [row["loss"] for row in test_train.read_log(f"{warm}/metrics.jsonl")
                      if "loss" in row]
            out["sft"].append(sum(losses[-5:]) / sum(losses[:5]))
            history = test_train.toy_grpo(warm, seed=seed)
            out["toy"].append(sum(history[-4:]) / 4 - sum(history[:4]) / 4)
            for name, tpl, think in (("fit", template, False), ("fit_qwen3", qwen3, True)):
                path = test_model.qwen_like(os.path.join(work, f"{name}{seed}"), tpl, think=think,
                                            seed=seed)
                out[name].append(test_model.emit_loss(*model.load(path), 300))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.seeds)))
        return
    holds = True
    for kernel in kernels():
        env = {**os.environ, "ATEN_CPU_CAPABILITY": kernel, "HF_HUB_OFFLINE": "1"}
        run = subprocess.run([sys.executable, __file__, "--worker", "--seeds", str(args.seeds)],
                             env=env, capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"error: the {kernel} worker failed:\n{run.stderr[-2000:]}")
        figures = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"ATEN_CPU_CAPABILITY={kernel}")
        for name, values in figures.items():
            side, bar = BARS[name]
            worst = max(values) if side == "<" else min(values)
            ok = all(v < bar if side == "<" else v > bar for v in values)
            holds &= ok
            print(f"  {name:10s} worst {worst:.4f} "
                  f"(bar {side} {bar}, {'holds' if ok else 'FAILS'})  "
                  + " ".join(f"{v:.3f}" for v in values))
    print("every bar holds on every seed and kernel set" if holds else "some bar fails")


if __name__ == "__main__":
    main()
