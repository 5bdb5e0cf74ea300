"""Teacher reference trajectories: `python teacher.py` writes data/{train,test_id,test_ood}.jsonl.

The default teacher is scripted and offline: it solves each problem with its own fixed
style (tasks.py's plan: sum_numbers for totals, power for squares), as real tool calls whose
outputs come from tools.py, and ends with \\boxed{answer}. Every trajectory is replayed
through the tools and must reach the gold answer before it is written.

`python teacher.py --model NAME_OR_PATH` uses any HF causal LM as the teacher instead: it
is rolled out with the same tools and only trajectories that replay to the right answer
are kept (rejection sampling).

The record format and its loading (the authors' released rows too) are in files.py.
"""
import argparse
import os
import sys
from collections import Counter

from tqdm import tqdm

import files
import tasks
import tools


# ------------------------------------------------------------------ the scripted teacher

def trajectory(problem: tasks.Problem, plan: list | None = None) -> list[dict]:
    """The chat messages of solving `problem` with `plan` (default: the teacher's): one
    assistant turn per plan turn (its calls in the OpenAI/HF `tool_calls` shape), the real tool
    outputs as tool messages, and a final assistant turn with \\boxed{the plan's answer}."""
    messages = tasks.prompt(problem.question)
    turns, answer = tasks.run_plan(plan or problem.plan)
    for turn in turns:
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in turn]})
        messages += [{"role": "tool", "name": c["name"], "content": c["result"]} for c in turn]
    messages.append({"role": "assistant", "content": f"\\boxed{{{answer}}}"})
    return messages


def replay(messages: list[dict]) -> str | None:
    """Re-run every tool call of a trajectory; return its final \\boxed answer, or None if a
    call fails or a tool message differs from what the tool really returns."""
    outputs = [m["content"] for m in messages if m["role"] == "tool"]
    calls = files.tool_calls(messages)
    if len(outputs) != len(calls):
        return None
    for call, seen in zip(calls, outputs):
        if tools.call_tool({"name": call["name"], "arguments": call["arguments"]}) != seen:
            return None
    return (tasks.extract_answer(messages[-1]["content"]) if messages[-1]["role"] == "assistant"
            else None)


def record(problem: tasks.Problem, messages: list[dict]) -> dict:
    """The JSONL record of one problem and its teacher trajectory `messages`. Where the weak
    demonstrator wrote down another plan, its trajectory too ("demo", the warm start's data);
    where a habit applies, the habit's tools and answer ("habit", for the gate's statistics)."""
    r = {"id": problem.id, "question": problem.question, "answer": problem.answer,
         "split": problem.split, "family": problem.family,
         "teacher": {"messages": messages,
                     "tools": [c["name"] for c in files.tool_calls(messages)]}}
    if problem.demo:
        demo = trajectory(problem, problem.demo)
        r["demo"] = {"messages": demo, "tools": [c["name"] for c in files.tool_calls(demo)]}
    if problem.habit:
        turns, answer = tasks.run_plan(problem.habit)
        r["habit"] = {"tools": [c["name"] for turn in turns for c in turn], "answer": answer}
    return r


# ------------------------------------------------------------------------- the LLM teacher

def llm_records(model_path: str, problems: list[tasks.Problem], samples: int, seed: int,
                device: str = "cpu", batch: int = 64) -> list[dict]:
    """Roll out an HF causal LM on `problems` with the tools, `samples` tries each; keep the
    first finished trajectory per problem that replays to the right answer (rejection
    sampling). Rolls out `batch` problems at a time, so memory does not grow with the data."""
    import model as student  # imported here: the scripted teacher needs no torch model

    policy, tokenizer = student.load(model_path, device)
    kept = []
    with tqdm(total=len(problems), desc="teacher", unit="problem") as bar:
        for start in range(0, len(problems), batch):
            chunk = problems[start:start + batch]
            prompts = [student.prompt(tokenizer, p.question) for p in chunk]
            rollouts = student.rollout(policy, tokenizer, prompts, tools.schemas(), n=samples,
                                       seed=seed + start, temperature=0.7)
            for i, problem in enumerate(chunk):
                for r in rollouts[i * samples:(i + 1) * samples]:
                    messages = prompts[i] + r.messages
                    # Replay, not just the final answer: the answer must follow from the
                    # valid calls alone (an invalid call's error reply is no step to imitate).
                    if r.finished and tasks.is_correct(replay(messages), problem.answer):
                        kept.append(record(problem, messages))
                        break
            bar.update(len(chunk))
    return kept


# ------------------------------------------------------------------ the built-in data

SPLITS = ("train", "test_id", "test_ood")
# Only where the warm start has skills the teacher never shows ("forgetting"): the warm
# start's problems of those skills, and their test.
OPTIONAL = ("warm", "test_retain")
TESTS = {"ID": "test_id", "OOD": "test_ood", "retain": "test_retain"}  # name -> split


def split_paths(data_dir: str) -> dict[str, str]:
    """The file of each split in `data_dir` (each of OPTIONAL only where it is there):
    SPLIT.jsonl, or SPLIT.parquet where only that exists."""
    paths = {}
    for split in SPLITS + OPTIONAL:
        jsonl, parquet = (os.path.join(data_dir, f"{split}.{ext}") for ext in ("jsonl", "parquet"))
        path = parquet if os.path.exists(parquet) and not os.path.exists(jsonl) else jsonl
        if split in SPLITS or os.path.isfile(path):
            paths[split] = path
    return paths


def missing_splits(paths: dict[str, str]) -> list[str]:
    """The files of split_paths that are not there."""
    return [path for path in paths.values() if not os.path.isfile(path)]


def test_splits(paths: dict[str, str]) -> dict[str, list[dict]]:
    """The test splits of ensure_data's `paths` by name (ID, OOD, and retain where there is
    one), their records loaded without need of a teacher reference."""
    return {name: files.load_records(paths[split], need_teacher=False)
            for name, split in TESTS.items() if split in paths}


def ensure_data(data_dir: str, condition: str = "hidden", n_train: int = 4000,
                seed: int = 0) -> dict[str, str]:
    """Paths of the splits in `data_dir` (split_paths). When none of the three exists, they
    are written, with the condition's OPTIONAL ones: the built-in benchmark of `condition`,
    solved by the scripted teacher (scripts call this on data/CONDITION only: a folder the user
    names must hold the splits already); when only some do, files.DataError names the missing
    ones (the user's own files are never overwritten)."""
    files.check_folder(data_dir)
    paths = split_paths(data_dir)
    missing = missing_splits(paths)
    if len(missing) == len(paths):
        write_scripted(data_dir, condition, n_train, seed)
    elif missing:
        raise files.DataError(f"{', '.join(missing)}: missing; give all three splits, "
                              "or none for the built-in benchmark")
    return split_paths(data_dir)


def data_error(data_dir: str | None) -> str | None:
    """What is wrong with a --data folder the user named, in one line; None when it holds
    the three splits, or when none was named (the built-in data/CONDITION). Nothing is written
    to a named folder: a typo must not train on a new copy of the built-in benchmark."""
    missing = missing_splits(split_paths(data_dir)) if data_dir is not None else []
    if missing:
        return (f"--data {data_dir}: no {', '.join(os.path.basename(m) for m in missing)} there; "
                "it takes a folder with all three splits (without --data the built-in benchmark "
                "is written to data/CONDITION; python teacher.py --out DIR writes it elsewhere)")
    return None


def write_scripted(data_dir: str, condition: str, n_train: int, seed: int) -> dict[str, Counter]:
    """Solve the benchmark of `condition` with the scripted teacher, check every trajectory by
    replay, write a file per split. Returns the count of problems per family, per split."""
    counts = {}
    for split, problems in tasks.benchmark(condition, n_train=n_train, seed=seed).items():
        records = []
        for p in problems:
            messages = trajectory(p)
            # The replay must give the plan's answer (the gold one, unless the teacher is wrong on
            # purpose).
            if replay(messages) != tasks.run_plan(p.plan)[1]:
                raise AssertionError(f"teacher trajectory of {p.id} does not replay")
            records.append(record(p, messages))
        files.write_jsonl(os.path.join(data_dir, f"{split}.jsonl"), records)
        counts[split] = Counter(p.family for p in problems)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--condition", default="hidden", choices=tasks.CONDITIONS,
                    help="which built-in benchmark")
    ap.add_argument("--out", default=None,
                    help="folder for train.jsonl, test_id.jsonl, test_ood.jsonl "
                         "(default: data/CONDITION)")
    ap.add_argument("--n-train", type=int, default=4000, help="training problems")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None,
                    help="an HF causal LM (name or path) to use as the teacher")
    ap.add_argument("--samples", type=int, default=4, help="LLM teacher: tries per problem")
    ap.add_argument("--batch", type=int, default=64, help="LLM teacher: problems per rollout call")
    ap.add_argument("--device", default=None,
                    help="LLM teacher: torch device (default: cuda if available, else cpu)")
    args = ap.parse_args()
    for flag in ("n_train", "samples", "batch"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1")
    args.out = args.out or os.path.join("data", args.condition)

    # OSError: e.g. a folder we may not write
    errors: tuple[type[Exception], ...] = (files.DataError, OSError)
    if args.model is not None:
        import torch

        import model as student  # torch only for the LLM teacher
        errors += (student.ModelError,)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        files.check_folder(args.out)
        if args.model is None:
            for split, counts in write_scripted(args.out, args.condition, args.n_train,
                                                args.seed).items():
                print(f"{args.out}/{split}.jsonl: {sum(counts.values())} problems  " +
                      "  ".join(f"{f}={n}" for f, n in sorted(counts.items())))
            return
        # All splits in one pass, so the model is loaded once.
        splits = tasks.benchmark(args.condition, n_train=args.n_train, seed=args.seed)
        kept = llm_records(args.model, [p for problems in splits.values() for p in problems],
                           args.samples, args.seed, device, args.batch)
        for split, problems in splits.items():
            records = [r for r in kept if r["split"] == split]
            files.write_jsonl(os.path.join(args.out, f"{split}.jsonl"), records)
            print(f"{args.out}/{split}.jsonl: kept {len(records)}/{len(problems)} "
                  f"(acceptance {len(records) / len(problems):.1%})")
    except errors as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
