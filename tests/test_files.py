"""files.py: the record format (ours, the authors' rows, parquet), one-line errors that name
the file and line, atomic writes, and run folders (finished_run)."""
import json
import os
import stat
import sys

import pytest

import files
import tasks
import teacher


def test_load_records_round_trip(tmp_path):
    teacher.write_scripted(str(tmp_path), "none", 12, 0)
    records = files.load_records(str(tmp_path / "train.jsonl"))
    problems = tasks.benchmark("none", n_train=12, seed=0)["train"]
    assert [r["question"] for r in records] == [p.question for p in problems]
    assert [r["answer"] for r in records] == [p.answer for p in problems]
    assert [r["teacher"]["tools"] for r in records] == \
           [[name for turn in p.plan for name, _ in turn] for p in problems]
    assert all(teacher.replay(r["teacher"]["messages"]) == r["answer"] for r in records)


def test_load_records_authors_format(tmp_path):
    path = tmp_path / "authors.jsonl"
    rows = [{"question": "What is 2 + 3?", "reward_model": {"ground_truth": "5", "style": "rule"},
             "tool_calls_used": ["add"], "data_source": "nvidia/AceReason-Math",
             "extra_info": {"env": "import os; os.system('echo ran')", "tools": [{"name": "add"}]}},
            {"question": "What is 2 * 3 + 1?", "reward_model": {"ground_truth": 7},
             "tool_calls_used": '["multiply", "add"]', "data_source": "nvidia/AceReason-Math"},
            {"question": "What is 2 + 2?", "answer": 4, "teacher_tools": ["add"]}]
    path.write_text(json.dumps(rows[0]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[1:])
                    + "\n")
    records = files.load_records(str(path))
    assert [r["question"] for r in records] == [r["question"] for r in rows]
    assert [r["answer"] for r in records] == ["5", "7", "4"]
    assert [r["teacher"] for r in records] == [{"messages": [], "tools": ["add"]},
                                               {"messages": [], "tools": ["multiply", "add"]},
                                               {"messages": [], "tools": ["add"]}]
    assert records[0]["family"] == "nvidia/AceReason-Math"
    assert records[1]["id"] == "authors.jsonl-3"  # a generated id: file and line
    assert "extra_info" not in json.dumps(records)  # never kept, never run


def test_a_row_without_teacher_reference_is_an_error_unless_not_needed(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = json.dumps({"question": "q", "answer": "1", "tool_calls_used": ["add"]})
    path.write_text(good + "\n"
                    + json.dumps({"question": "q2", "reward_model": {"ground_truth": "2"}}) + "\n")
    with pytest.raises(files.DataError) as e:
        files.load_records(str(path))
    assert str(e.value).startswith(f"{path}:2: no teacher reference")
    records = files.load_records(str(path), need_teacher=False)
    assert records[1]["teacher"] is None and records[1]["answer"] == "2"


def test_tool_names_the_registry_does_not_know_are_one_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": "1",
                                          "tool_calls_used": names})
                              for i, names in enumerate([["add"], ["search", "add"], ["python"],
                                                         ["search"]])))
    with pytest.raises(files.DataError) as e:
        files.load_records(str(path))
    message = str(e.value)
    assert message.startswith(f"{path}: the teacher uses tools that tools.py does not have: "
                              "'search' (line 2), 'python' (line 3)")
    assert "known: add, subtract" in message and "\n" not in message


def test_parquet_rows_load_like_jsonl(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet
    rows = [{"question": "What is 2 + 3?", "reward_model": {"ground_truth": "5"},
             "tool_calls_used": '["add"]'}]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), str(tmp_path / "train.parquet"))
    records = files.load_records(str(tmp_path / "train.parquet"))
    assert records[0]["answer"] == "5" and records[0]["teacher"]["tools"] == ["add"]


def test_parquet_without_pyarrow_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(files.DataError, match="needs pyarrow"):
        files.load_records(str(tmp_path / "train.parquet"))


@pytest.mark.parametrize("bad_line, reason", [
    ("{not json", "not valid JSON"),
    ('{"question": "q"}', "needs 'question' and 'answer'"),
    ('["question", "answer"]', "must be a JSON object"),
    ('{"question": "q", "answer": "1", "teacher_tools": "add"}', "not a JSON list of tool names"),
    ('{"question": "q", "answer": "1", "teacher_tools": [1, 2]}', "must be a list of tool names"),
    ('{"question": "q", "answer": "1", "tool_calls_used": "{\\"add\\": 1}"}',
     "must be a list of tool names"),
    ('{"question": "q", "answer": [1], "tool_calls_used": ["add"]}',
     "needs 'question' and 'answer'"),
])
def test_load_records_malformed_line_names_file_and_line(tmp_path, bad_line, reason):
    path = tmp_path / "data.jsonl"
    good = json.dumps({"question": "q", "answer": "1", "teacher_tools": ["add"]})
    path.write_text(good + "\n" + good + "\n" + bad_line + "\n" + good + "\n")
    with pytest.raises(files.DataError) as e:
        files.load_records(str(path))
    assert str(e.value).startswith(f"{path}:3: ")
    assert reason in str(e.value)


def test_load_records_missing_and_empty_files(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(files.DataError, match="no such file") as e:
        files.load_records(str(missing))
    assert str(missing) in str(e.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(files.DataError, match="no records"):
        files.load_records(str(empty))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_write_atomic_gives_the_mode_of_a_normal_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        files.write_atomic(str(tmp_path / "atomic.json"), "{}")
        (tmp_path / "plain.json").write_text("{}")
        assert os.umask(umask) == umask  # write_atomic left the umask as it was
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "atomic.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode) == 0o666 & ~umask
