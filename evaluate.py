"""What the student can do: greedy (and pass@k) rollouts on the ID and OOD test sets.

    python evaluate.py runs/sft [runs/rl ...] [--data FILE.jsonl] [--k 4]

Per split: accuracy, finished rate, format-valid rate, tool calls per problem, invalid-call
rate, tool-name F1 against the teacher, and the Jensen-Shannon divergence between the
student's and the teacher's tool-usage distributions (the paper's similarity measure).
Results go to runs/NAME/eval.json (with a few full trajectories, student beside teacher),
which rl.py reuses as its starting point's figures; an evaluation on other data, fewer
problems or other limits goes to its own eval-*.json. A table compares the runs.
"""
import argparse
import hashlib
import json
import math
import os
import sys
from collections import Counter

import torch

import files
import model as student
import reward
import tasks
import teacher
import tools


def jsd(p: Counter, q: Counter) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two count distributions."""
    if not p or not q:
        return 0.0 if not p and not q else 1.0
    P = {k: v / sum(p.values()) for k, v in p.items()}
    Q = {k: v / sum(q.values()) for k, v in q.items()}
    M = {k: (P.get(k, 0) + Q.get(k, 0)) / 2 for k in P.keys() | Q.keys()}
    kl = lambda A: sum(a * math.log2(a / M[k]) for k, a in A.items() if a > 0)
    return (kl(P) + kl(Q)) / 2


def fingerprint(records: list[dict]) -> str:
    """A short hash of the problems (ids, questions, answers): tells whether saved results
    are about these very problems."""
    text = json.dumps([(r["id"], r["question"], r["answer"]) for r in records])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# problems per rollout call: the tiny student decodes ~20% faster at 128 rows than at 64
BATCH = 128


def rollouts(policy, tokenizer, records: list[dict], k: int = 1, max_turns: int = 5,
             max_tokens: int = 256, batch_size: int = BATCH, seed: int | None = None) -> list:
    """Greedy rollouts of `records` (k = 1), or `k` samples of each (seeded, the k of a problem
    adjacent), `batch_size` problems per rollout call. Returns the model.Rollouts."""
    out = []
    for i in range(0, len(records), batch_size):
        prompts = [student.prompt(tokenizer, r["question"]) for r in records[i:i + batch_size]]
        out += student.rollout(policy, tokenizer, prompts, tools.schemas(), n=k,
                               max_turns=max_turns, max_tokens=max_tokens, greedy=k == 1,
                               seed=None if k == 1 else seed + i)
    return out


def evaluate(policy, tokenizer, records: list[dict], k: int = 1, max_turns: int = 5,
             max_tokens: int = 256, batch_size: int = BATCH, keep: int = 3, seed: int = 0) -> dict:
    """Greedy rollouts on `records` (and `k` samples each for pass@k when k > 1).

    A problem counts as solved when the conversation finished (EOS, no pending call) with the
    right \\boxed{} answer, as the reward counts it. Returns the split's metrics as a dict of
    floats, plus "data" (the problems' fingerprint), "limits" ([max_turns, max_tokens]) and
    "examples": `keep` whole conversations, the student's beside the teacher's."""
    greedy = rollouts(policy, tokenizer, records, 1, max_turns, max_tokens, batch_size)
    # The outcome alone (mode "sparse"): correctness needs no teacher reference.
    scores = [reward.score_rollout(ro, r, mode="sparse") for ro, r in zip(greedy, records)]
    n, n_calls = len(records), sum(s["calls"] for s in scores)
    solved = [s["correct"] and s["finished"] for s in scores]
    metrics = {
        "problems": n,
        "data": fingerprint(records),
        "accuracy": sum(solved) / n,
        "finished": sum(s["finished"] for s in scores) / n,
        "format_valid": sum(s["finished"] and s["has_answer"] and s["invalid_calls"] == 0
                            for s in scores) / n,
        "calls_per_problem": n_calls / n,
        "invalid_call_rate": sum(s["invalid_calls"] for s in scores) / max(n_calls, 1),
        "limits": [max_turns, max_tokens],
    }
    # Similarity to the teacher, on the problems that have a teacher reference.
    taught = [(ro, r["teacher"]["tools"]) for ro, r in zip(greedy, records) if r["teacher"]]
    if taught:
        names = [([c["name"] for c in ro.calls if c["name"] in tools.TOOLS], t) for ro, t in taught]
        metrics["tool_f1"] = sum(reward.set_f1(set(s), set(t)) for s, t in names) / len(names)
        metrics["same_tools"] = sum(set(s) == set(t) for s, t in names) / len(names)
        metrics["tool_jsd"] = jsd(Counter(x for s, _ in names for x in s),
                                  Counter(x for _, t in names for x in t))
    families = sorted({r["family"] for r in records})
    metrics["by_family"] = {f: sum(ok for ok, r in zip(solved, records) if r["family"] == f) /
                               sum(r["family"] == f for r in records) for f in families}
    if k > 1:
        sampled = rollouts(policy, tokenizer, records, k, max_turns, max_tokens, batch_size, seed)
        solved_any = [any(s["correct"] and s["finished"] for s in
                          (reward.score_rollout(ro, r, mode="sparse")
                           for ro in sampled[i * k:(i + 1) * k]))
                      for i, r in enumerate(records)]
        metrics[f"pass@{k}"] = sum(solved_any) / n
    metrics["examples"] = [{"question": r["question"], "answer": r["answer"], "solved": ok,
                            "student": ro.messages,
                            "teacher": r["teacher"] and (r["teacher"]["messages"]
                                                         or r["teacher"]["tools"])}
                           for ro, r, ok in list(zip(greedy, records, solved))[:keep]]
    return metrics


def evaluate_splits(policy, tokenizer, splits: dict[str, list[dict]], limit: int | None,
                    max_turns: int = 5, max_tokens: int = 256,
                    batch_size: int = BATCH) -> dict[str, dict]:
    """Greedy accuracy and friends on each test split (the first `limit` problems)."""
    policy.eval()
    with torch.no_grad():
        out = {name: evaluate(policy, tokenizer, recs[:limit], max_turns=max_turns,
                              max_tokens=max_tokens, batch_size=batch_size)
               for name, recs in splits.items()}
    policy.train()
    return out


COLUMNS = [("accuracy", "acc"), ("finished", "finished"), ("format_valid", "format"),
           ("calls_per_problem", "calls"), ("invalid_call_rate", "invalid"), ("tool_f1", "tool F1"),
           ("same_tools", "same set"), ("tool_jsd", "JSD")]


def table(results: dict[str, dict[str, dict]]) -> str:
    """A text table: one row per (run, split), the metrics of COLUMNS (and pass@k if present)."""
    extra = sorted({m for splits in results.values() for s in splits.values() for m in s
                    if m.startswith("pass@")})
    cols = COLUMNS + [(m, m) for m in extra]
    width = max([len(r) for r in results] + [3])
    lines = [f"{'run':<{width}}  {'split':<9}" + "".join(f"{title:>10}" for _, title in cols)]
    for run, splits in results.items():
        for split, m in splits.items():
            lines.append(f"{run:<{width}}  {split:<9}" + "".join(
                f"{m[key]:>10.3f}" if key in m else f"{'-':>10}" for key, _ in cols))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (sys.argv when `argv` is None); bad values exit through ap.error.
    Adds `result_file`, the name the results get in each run folder."""
    ap = argparse.ArgumentParser(description="Evaluate checkpoints on the ID and OOD test sets.")
    ap.add_argument("runs", nargs="+", help="run folders (runs/NAME) or HF checkpoints")
    ap.add_argument("--condition", default="hidden", choices=tasks.CONDITIONS,
                    help="the built-in benchmark")
    ap.add_argument("--data", nargs="+", default=None,
                    help="JSONL files to evaluate on (default: the test splits of "
                         "data/CONDITION)")
    ap.add_argument("--k", type=int, default=1,
                    help="also report pass@k from k samples per problem")
    ap.add_argument("--limit", type=int, default=None,
                    help="evaluate on the first N problems of each split")
    ap.add_argument("--max-turns", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if min(args.k, args.max_turns, args.max_tokens, 1 if args.limit is None else args.limit) < 1:
        ap.error("--k, --limit, --max-turns and --max-tokens must be positive")
    args.names = [os.path.splitext(os.path.basename(p))[0] for p in args.data or []]
    if len(set(args.names)) < len(args.names):
        ap.error("--data: the files need distinct names (a split is named after its file)")
    # The standard evaluation (both test sets, whole, default limits) is eval.json, which
    # rl.py reuses; any other gets a name of its own, so it never replaces that one.
    tags = args.names or ([] if args.condition == ap.get_default("condition") else [args.condition])
    tags += [f"first{args.limit}"] if args.limit else []
    if (args.max_turns, args.max_tokens) != (ap.get_default("max_turns"),
                                             ap.get_default("max_tokens")):
        tags.append(f"turns{args.max_turns}-tokens{args.max_tokens}")
    args.result_file = "-".join(["eval"] + tags) + ".json"
    return args


def main(argv: list[str] | None = None) -> None:
    """The command line: evaluate, or exit with one line saying what is wrong with the input."""
    args = parse_args(argv)
    try:
        if args.data is None:
            paths = teacher.ensure_data(os.path.join("data", args.condition), args.condition)
            splits = teacher.test_splits(paths)
        else:
            splits = {name: files.load_records(path, need_teacher=False)
                      for name, path in zip(args.names, args.data)}
        splits = {name: recs[:args.limit] for name, recs in splits.items()}
        results = {}
        for run in args.runs:
            policy, tokenizer = student.load(run, device=args.device)
            results[run] = {name: evaluate(policy, tokenizer, recs, k=args.k,
                                           max_turns=args.max_turns, max_tokens=args.max_tokens)
                            for name, recs in splits.items()}
            if os.path.isdir(run):
                files.write_json(os.path.join(run, args.result_file), results[run])
    except (files.DataError, student.ModelError, OSError) as e:
        sys.exit(f"error: {e}")
    print(table(results))


if __name__ == "__main__":
    main()
