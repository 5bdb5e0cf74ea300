"""Teacher reference trajectories: `python teacher.py` writes data/{train,test_id,test_ood}.jsonl.

The default teacher is scripted and offline: it solves each problem with its own fixed
style (tasks.py's plan: sum_numbers for totals, power for squares), as real tool calls whose
outputs come from tools.py, and ends with \\boxed{answer}. Every trajectory is replayed
through the tools and must reach the gold answer before it is written.

`python teacher.py --model NAME_OR_PATH` uses any HF causal LM as the teacher instead: it
is rolled out with the same tools and only trajectories that replay to the right answer
are kept (rejection sampling).

One JSON record per line:
  {"id", "question", "answer", "split", "family", "teacher": {"messages": [...], "tools": [names]}}
The authors' released rows load too (JSONL, or parquet with pyarrow installed): `question`,
`reward_model.ground_truth` and `tool_calls_used` (the teacher's tool names).
"""
import argparse
import json
import os
import sys
import tempfile
from collections import Counter

from tqdm import tqdm

import tasks
import tools


class DataError(Exception):
    """A data file that cannot be used; the message names the file and line."""


# ------------------------------------------------------------------ the scripted teacher

def trajectory(problem: tasks.Problem, plan: list | None = None) -> list[dict]:
    """The chat messages of solving `problem` with `plan` (default: the teacher's): one
    assistant turn per plan turn (its calls in the OpenAI/HF `tool_calls` shape), the real tool
    outputs as tool messages, and a final assistant turn with \\boxed{the plan's answer}."""
    messages = tasks.prompt(problem.question)
    turns, answer = tasks.run_plan(plan or problem.plan)
    for turn in turns:
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in turn]})
        messages += [{"role": "tool", "name": c["name"], "content": c["result"]} for c in turn]
    messages.append({"role": "assistant", "content": f"\\boxed{{{answer}}}"})
    return messages


def tool_calls(messages: list[dict]) -> list[dict]:
    """The {"name", "arguments"} of every tool call in a trajectory, in order."""
    return [c["function"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]


def reference(record: dict) -> list:
    """The teacher's calls of a data record for scoring: {"name", "arguments"} from its
    messages, or bare tool names when the record carries names only (tool_calls_used).
    Raises ValueError for a record loaded without a teacher (load_records(need_teacher=False))."""
    if record["teacher"] is None:
        raise ValueError(f"record {record['id']} has no teacher reference; only the sparse reward can score it")
    return tool_calls(record["teacher"]["messages"]) or record["teacher"]["tools"]


def replay(messages: list[dict]) -> str | None:
    """Re-run every tool call of a trajectory; return its final \\boxed answer, or None if a
    call fails or a tool message differs from what the tool really returns."""
    outputs = [m["content"] for m in messages if m["role"] == "tool"]
    calls = tool_calls(messages)
    if len(outputs) != len(calls):
        return None
    for call, seen in zip(calls, outputs):
        if tools.call_tool({"name": call["name"], "arguments": call["arguments"]}) != seen:
            return None
    return tasks.extract_answer(messages[-1]["content"]) if messages[-1]["role"] == "assistant" else None


def record(problem: tasks.Problem, messages: list[dict]) -> dict:
    """The JSONL record of one problem and its teacher trajectory `messages`. Where the weak
    demonstrator wrote down another plan, its trajectory too ("demo", the warm start's data);
    where a habit applies, the habit's tools and answer ("habit", for the gate's statistics)."""
    r = {"id": problem.id, "question": problem.question, "answer": problem.answer,
         "split": problem.split, "family": problem.family,
         "teacher": {"messages": messages, "tools": [c["name"] for c in tool_calls(messages)]}}
    if problem.demo:
        demo = trajectory(problem, problem.demo)
        r["demo"] = {"messages": demo, "tools": [c["name"] for c in tool_calls(demo)]}
    if problem.habit:
        turns, answer = tasks.run_plan(problem.habit)
        r["habit"] = {"tools": [c["name"] for turn in turns for c in turn], "answer": answer}
    return r


def tiny_corpus(n_train: int = 4000, seed: int = 0) -> list[str]:
    """The text the tiny student's tokenizer learns from: the system prompt, the tool schemas,
    and the training problems of every built-in condition, as their trajectories (teacher's
    and demonstrator's) print them."""
    texts = [tasks.SYSTEM_PROMPT] + [json.dumps(s) for s in tools.schemas()]
    for condition in tasks.CONDITIONS:
        for problem in tasks.benchmark(condition, n_train=n_train, seed=seed)["train"]:
            for plan in (problem.plan, problem.demo):
                for m in trajectory(problem, plan)[1:] if plan else []:  # the system prompt is in already
                    texts.append(m.get("content") or "")
                    texts += [json.dumps(c["function"]) for c in m.get("tool_calls") or []]
    return texts


def ensure_tiny() -> None:
    """Build the built-in tiny student (model.TINY_PATH) unless it is there already."""
    import model as student  # imported here: the scripted teacher needs no torch model

    if not student.checkpoint_dir(student.TINY_PATH):
        print(f"building the tiny student at {student.TINY_PATH}")
        student.build_tiny(student.TINY_PATH, tiny_corpus())


# ------------------------------------------------------------------------- the LLM teacher

def llm_records(model_path: str, problems: list[tasks.Problem], samples: int, seed: int,
                device: str = "cpu", batch: int = 64) -> list[dict]:
    """Roll out an HF causal LM on `problems` with the tools, `samples` tries each; keep the
    first finished trajectory per problem that replays to the right answer (rejection
    sampling). Rolls out `batch` problems at a time, so memory does not grow with the data."""
    import model as student  # imported here: the scripted teacher needs no torch model

    policy, tokenizer = student.load(model_path, device)
    authors = not student.is_tiny(tokenizer)
    kept = []
    with tqdm(total=len(problems), desc="teacher", unit="problem") as bar:
        for start in range(0, len(problems), batch):
            chunk = problems[start:start + batch]
            prompts = [tasks.prompt(p.question, authors) for p in chunk]
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


# ------------------------------------------------------------------------------- files

def write_atomic(path: str, text: str) -> None:
    """Write a text file atomically: a temp file in the same folder, then a rename, so a
    crash never leaves a half-written file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    # mkstemp makes the file owner-only (0600); give it the mode open() would have.
    umask = os.umask(0)  # the only way to read the umask is to set it: put it straight back
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_jsonl(path: str, records: list[dict]) -> None:
    """Write records as JSONL, atomically."""
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_rows(path: str) -> list[tuple[int, object]]:
    """The rows of a JSONL file (with their line numbers; blank lines skipped), or of a
    .parquet file (pyarrow, optional). Raises DataError naming the file and line."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet
        except ImportError:
            raise DataError(f"{path}: reading .parquet files needs pyarrow (pip install pyarrow)") from None
        try:
            return list(enumerate(pyarrow.parquet.read_table(path).to_pylist(), 1))
        except pyarrow.ArrowException as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


def teacher_of(row: dict) -> dict | None:
    """The teacher reference of a row: `teacher` ({"messages", "tools"}), or the tool names
    of the authors' `tool_calls_used` (a list, or a JSON string of one) or `teacher_tools`;
    None when the row has none. Raises ValueError when one is there but malformed."""
    if "teacher" in row:
        teacher = row["teacher"]
        names = teacher.get("tools") if isinstance(teacher, dict) else None
        messages = teacher.get("messages", []) if isinstance(teacher, dict) else None
        if not isinstance(messages, list):
            raise ValueError("'teacher.messages' must be a list of chat messages")
    else:
        key = next((k for k in ("tool_calls_used", "teacher_tools") if k in row), None)
        if key is None:
            return None
        names, messages = row[key], []
        if isinstance(names, str):
            try:
                names = json.loads(names)
            except json.JSONDecodeError:
                raise ValueError(f"'{key}' is a string but not a JSON list of tool names") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("the teacher's tools ('teacher.tools', 'tool_calls_used' or 'teacher_tools') "
                         "must be a list of tool names")
    return {"messages": messages, "tools": names}


def load_records(path: str, need_teacher: bool = True) -> list[dict]:
    """Problems with their teacher reference from a JSONL (or .parquet) file.

    A row needs `question` and `answer` (or the authors' `reward_model.ground_truth`), and a
    teacher reference (see teacher_of) unless `need_teacher` is False (the sparse reward
    needs none); then the record's "teacher" is None. The built-in benchmark's "demo" and
    "habit" are kept (None when absent). The authors' `data_source` serves as
    the family when there is none; their `extra_info` (tool schemas and code) is never read, let alone run.
    Raises DataError naming the file and line, or listing the tool names no tool implements."""
    records, unknown = [], {}
    for lineno, row in read_rows(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: a record must be a JSON object")
        answer = row["answer"] if "answer" in row else (row.get("reward_model") or {}).get("ground_truth")
        if "question" not in row or not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            raise DataError(f"{where}: a record needs 'question' and 'answer' (or 'reward_model.ground_truth')")
        try:
            reference = teacher_of(row)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        if reference is None and need_teacher:
            raise DataError(f"{where}: no teacher reference ('teacher', 'tool_calls_used' or 'teacher_tools'); "
                            "only the sparse reward trains without one")
        for name in reference["tools"] if reference else []:
            if name not in tools.TOOLS:
                unknown.setdefault(name, lineno)
        try:
            demo = teacher_of({"teacher": row["demo"]}) if "demo" in row else None
        except ValueError as e:
            raise DataError(f"{where}: 'demo' {e}") from None
        records.append({"id": str(row.get("id", f"{os.path.basename(path)}-{lineno}")),
                        "question": str(row["question"]), "answer": str(answer),
                        "split": row.get("split", ""), "family": row.get("family", row.get("data_source", "")),
                        "teacher": reference, "demo": demo, "habit": row.get("habit")})
    if unknown:
        names = ", ".join(f"'{n}' (line {line})" for n, line in unknown.items())
        raise DataError(f"{path}: the teacher uses tools that tools.py does not have: {names}; "
                        f"known: {', '.join(tools.TOOLS)}")
    if not records:
        raise DataError(f"{path}: no records")
    return records


SPLITS = ("train", "test_id", "test_ood")


def check_folder(path: str) -> None:
    """Raise DataError if `path` exists but is not a folder (a missing one is created later)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"{path}: not a folder")


def ensure_data(data_dir: str, condition: str = "hidden", n_train: int = 4000, seed: int = 0) -> dict[str, str]:
    """Paths of the three splits in `data_dir` (SPLIT.jsonl, or SPLIT.parquet). When none of
    them exists, they are written: the built-in benchmark of `condition`, solved by the
    scripted teacher; when only some do, DataError names the missing ones (the user's own
    files are never overwritten)."""
    check_folder(data_dir)
    paths = {}
    for split in SPLITS:
        jsonl, parquet = (os.path.join(data_dir, f"{split}.{ext}") for ext in ("jsonl", "parquet"))
        paths[split] = parquet if os.path.exists(parquet) and not os.path.exists(jsonl) else jsonl
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if len(missing) == len(paths):
        write_scripted(data_dir, condition, n_train, seed)
    elif missing:
        raise DataError(f"{', '.join(missing)}: missing; give all three splits, or none for the built-in benchmark")
    return paths


def write_scripted(data_dir: str, condition: str, n_train: int, seed: int) -> dict[str, Counter]:
    """Solve the benchmark of `condition` with the scripted teacher, check every trajectory by
    replay, write the three files. Returns the count of problems per family, per split."""
    counts = {}
    for split, problems in tasks.benchmark(condition, n_train=n_train, seed=seed).items():
        records = []
        for p in problems:
            messages = trajectory(p)
            # The replay must give the plan's answer (the gold one, unless the teacher is wrong on purpose).
            if replay(messages) != tasks.run_plan(p.plan)[1]:
                raise AssertionError(f"teacher trajectory of {p.id} does not replay")
            records.append(record(p, messages))
        write_jsonl(os.path.join(data_dir, f"{split}.jsonl"), records)
        counts[split] = Counter(p.family for p in problems)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--condition", default="hidden", choices=tasks.CONDITIONS, help="which built-in benchmark")
    ap.add_argument("--out", default=None, help="folder for train.jsonl, test_id.jsonl, test_ood.jsonl "
                                                "(default: data/CONDITION)")
    ap.add_argument("--n-train", type=int, default=4000, help="training problems")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="an HF causal LM (name or path) to use as the teacher")
    ap.add_argument("--samples", type=int, default=4, help="LLM teacher: tries per problem")
    ap.add_argument("--batch", type=int, default=64, help="LLM teacher: problems per rollout call")
    ap.add_argument("--device", default=None, help="LLM teacher: torch device (default: cuda if available, else cpu)")
    args = ap.parse_args()
    for flag in ("n_train", "samples", "batch"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1")
    args.out = args.out or os.path.join("data", args.condition)

    errors: tuple[type[Exception], ...] = (DataError, OSError)  # OSError: e.g. a folder we may not write
    if args.model is not None:
        import torch

        import model as student  # torch only for the LLM teacher
        errors += (student.ModelError,)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_folder(args.out)
        if args.model is None:
            for split, counts in write_scripted(args.out, args.condition, args.n_train, args.seed).items():
                print(f"{args.out}/{split}.jsonl: {sum(counts.values())} problems  " +
                      "  ".join(f"{f}={n}" for f, n in sorted(counts.items())))
            return
        # All splits in one pass, so the model is loaded once.
        splits = tasks.benchmark(args.condition, n_train=args.n_train, seed=args.seed)
        kept = llm_records(args.model, [p for problems in splits.values() for p in problems], args.samples,
                           args.seed, device, args.batch)
        for split, problems in splits.items():
            records = [r for r in kept if r["split"] == split]
            write_jsonl(os.path.join(args.out, f"{split}.jsonl"), records)
            print(f"{args.out}/{split}.jsonl: kept {len(records)}/{len(problems)} "
                  f"(acceptance {len(records) / len(problems):.1%})")
    except errors as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
