"""Data files: the record format, loading it, and writing files atomically.

One JSON record per line (or a parquet row, with pyarrow installed):
  {"id", "question", "answer", "split", "family", "teacher": {"messages": [...], "tools": [names]}}
plus, in the built-in benchmark, the weak demonstrator's trajectory ("demo") and its habit
("habit"). The authors' released rows load too: `question`, `reward_model.ground_truth` and
`tool_calls_used` (the teacher's tool names). A bad file is a DataError whose message names
the file and line; results and data are written to a temp file and renamed, so a crash
never leaves half a file. And a run folder's bookkeeping: whether it holds a finished run of
the given settings (finished_run).
"""
import json
import os
import tempfile

import tools


class DataError(Exception):
    """A data file that cannot be used; the message names the file and line."""


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


def tool_calls(messages: list[dict]) -> list[dict]:
    """The {"name", "arguments"} of every tool call in a trajectory, in order."""
    return [c["function"] for m in messages if m["role"] == "assistant"
            for c in m.get("tool_calls") or []]


def reference(record: dict) -> list:
    """The teacher's calls of a data record for scoring: {"name", "arguments"} from its
    messages, or bare tool names when the record carries names only (tool_calls_used).
    Raises ValueError for a record loaded without a teacher (load_records(need_teacher=False))."""
    if record["teacher"] is None:
        raise ValueError(f"record {record['id']} has no teacher reference; "
                         "only the sparse reward can score it")
    return tool_calls(record["teacher"]["messages"]) or record["teacher"]["tools"]


def read_rows(path: str) -> list[tuple[int, object]]:
    """The rows of a JSONL file (with their line numbers; blank lines skipped), or of a
    .parquet file (pyarrow, optional). Raises DataError naming the file and line."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet
        except ImportError:
            raise DataError(f"{path}: reading .parquet files needs pyarrow "
                            "(pip install pyarrow)") from None
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
        raise ValueError("the teacher's tools ('teacher.tools', 'tool_calls_used' or "
                         "'teacher_tools') must be a list of tool names")
    return {"messages": messages, "tools": names}


def load_records(path: str, need_teacher: bool = True) -> list[dict]:
    """Problems with their teacher reference from a JSONL (or .parquet) file.

    A row needs `question` and `answer` (or the authors' `reward_model.ground_truth`), and a
    teacher reference (see teacher_of) unless `need_teacher` is False (the sparse reward
    needs none); then the record's "teacher" is None. The built-in benchmark's "demo" and
    "habit" are kept (None when absent). The authors' `data_source` serves as the family when
    there is none; their `extra_info` (tool schemas and code) is never read, let alone run.
    Raises DataError naming the file and line, or listing the tool names no tool implements."""
    records, unknown = [], {}
    for lineno, row in read_rows(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: a record must be a JSON object")
        answer = (row["answer"] if "answer" in row
                  else (row.get("reward_model") or {}).get("ground_truth"))
        if ("question" not in row or not isinstance(answer, (str, int, float))
                or isinstance(answer, bool)):
            raise DataError(f"{where}: a record needs 'question' and 'answer' "
                            "(or 'reward_model.ground_truth')")
        try:
            reference = teacher_of(row)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        if reference is None and need_teacher:
            raise DataError(f"{where}: no teacher reference ('teacher', 'tool_calls_used' or "
                            "'teacher_tools'); only the sparse reward trains without one")
        for name in reference["tools"] if reference else []:
            if name not in tools.TOOLS:
                unknown.setdefault(name, lineno)
        try:
            demo = teacher_of({"teacher": row["demo"]}) if "demo" in row else None
        except ValueError as e:
            raise DataError(f"{where}: 'demo' {e}") from None
        records.append({"id": str(row.get("id", f"{os.path.basename(path)}-{lineno}")),
                        "question": str(row["question"]), "answer": str(answer),
                        "split": row.get("split", ""),
                        "family": row.get("family", row.get("data_source", "")),
                        "teacher": reference, "demo": demo, "habit": row.get("habit")})
    if unknown:
        names = ", ".join(f"'{n}' (line {line})" for n, line in unknown.items())
        raise DataError(f"{path}: the teacher uses tools that tools.py does not have: {names}; "
                        f"known: {', '.join(tools.TOOLS)}")
    if not records:
        raise DataError(f"{path}: no records")
    return records


def check_folder(path: str) -> None:
    """Raise DataError if `path` exists but is not a folder (a missing one is created later)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"{path}: not a folder")


def write_json(path: str, obj) -> None:
    """Write JSON atomically (results, settings)."""
    write_atomic(path, json.dumps(obj, indent=1))


def habit_differs(record: dict) -> bool:
    """Whether the record's habit (built-in benchmark) uses other tools than its teacher."""
    return bool(record.get("habit") and record["teacher"]) and \
        set(record["habit"]["tools"]) != set(record["teacher"]["tools"])


# ------------------------------------------------------------------------- run folders

# Run settings that say where and how a run is written, run or logged, not what it learns:
# a finished run that differs only in these is reused.
IGNORED = {"out", "device", "compile", "grad_ckpt", "micro_batch", "resume", "save_every",
           "eval_every", "eval_limit"}


def finished_run(run) -> bool:
    """Whether run.out holds a finished run (its eval.json) of these very settings (`run`:
    a script's parsed flags, the argparse.Namespace it saves as args.json): False when it
    holds none. Raises DataError when it holds one trained with other settings, rather than
    report that run as this one or delete it."""
    if not os.path.isfile(os.path.join(run.out, "eval.json")):
        return False
    try:
        with open(os.path.join(run.out, "args.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise DataError(f"{run.out} has no readable args.json, so how it was trained is unknown; "
                                 "use another --out or delete it")
    wanted = json.loads(json.dumps(vars(run)))  # as args.json stores it
    # A flag newer than the run, left off (0, None, False), trains as the run did.
    changed = [key for key in wanted if key not in IGNORED
               and (saved[key] != wanted[key] if key in saved else wanted[key])]
    if changed:
        old = " and ".join(f"{key}={saved.get(key, 'unset')}" for key in changed)
        new = " and ".join(str(wanted[key]) for key in changed)
        raise DataError(f"{run.out} was trained with {old}, this run asks for {new}; "
                                 "use another --out or delete it")
    return True
