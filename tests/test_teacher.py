"""teacher.py: scripted trajectories, replay, JSONL files and the command line."""
import copy
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import tasks
import files
import teacher


@pytest.fixture(scope="module")
def bench():
    return tasks.benchmark("none", n_train=200, seed=0)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Both command-line runs, started together so their imports overlap."""
    out = tmp_path_factory.mktemp("cli")
    good = subprocess.Popen([sys.executable, "teacher.py", "--out", str(out), "--n-train", "50"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bad = subprocess.Popen([sys.executable, "teacher.py", "--out", str(out / "bad"),
                            "--n-train", "0"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for name, proc in (("good", good), ("bad", bad)):
        stdout, stderr = proc.communicate(timeout=120)
        results[name] = (proc.returncode, stdout, stderr)
    return out, results


def test_every_trajectory_replays_to_its_gold_answer(bench):
    for problems in bench.values():
        for p in problems:
            messages = teacher.trajectory(p)
            assert teacher.replay(messages) == p.answer, p.id


def test_trajectory_shape():
    p = tasks.Problem("x-0", "q?", "20", "train", "shirts",
                      [[("add", {"a": 2, "b": 3})], [("multiply", {"a": "#0", "b": 4})]])
    messages = teacher.trajectory(p)
    assert messages[:2] == tasks.prompt("q?")
    assert messages[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]}
    assert messages[3] == {"role": "tool", "name": "add", "content": "5"}
    assert messages[4]["tool_calls"][0]["function"] == {"name": "multiply",
                                                        "arguments": {"a": 5, "b": 4}}
    assert messages[5] == {"role": "tool", "name": "multiply", "content": "20"}
    assert messages[6] == {"role": "assistant", "content": "\\boxed{20}"}
    assert len(messages) == 7
    assert files.tool_calls(messages) == [{"name": "add", "arguments": {"a": 2, "b": 3}},
                                            {"name": "multiply", "arguments": {"a": 5, "b": 4}}]
    assert teacher.replay(messages) == "20"


def test_tampered_trajectories_do_not_replay(bench):
    p = next(p for p in bench["train"] if p.family == "shirts")
    messages = teacher.trajectory(p)
    assert teacher.replay(messages) == p.answer

    tampered = copy.deepcopy(messages)
    first_tool = next(m for m in tampered if m["role"] == "tool")
    first_tool["content"] = str(int(first_tool["content"]) + 1)  # a tool output off by one
    assert teacher.replay(tampered) is None

    tampered = copy.deepcopy(messages)
    tampered[2]["tool_calls"][0]["function"]["arguments"]["a"] += 1  # a changed argument
    assert teacher.replay(tampered) is None

    tampered = [m for m in copy.deepcopy(messages) if m["role"] != "tool" or m["name"] != "add"]
    assert teacher.replay(tampered) is None  # a tool output missing

    tampered = copy.deepcopy(messages)
    tampered[-1]["content"] = "\\boxed{123456789}"  # a wrong final answer replays to itself
    assert teacher.replay(tampered) == "123456789"
    assert not tasks.is_correct(teacher.replay(tampered), p.answer)

    assert teacher.replay(messages[:-1]) is None  # no final assistant turn


def test_write_scripted_is_reproducible(tmp_path):
    counts = teacher.write_scripted(str(tmp_path / "a"), "none", 30, 5)
    teacher.write_scripted(str(tmp_path / "b"), "none", 30, 5)
    names = ["test_id.jsonl", "test_ood.jsonl", "train.jsonl"]
    assert sorted(os.listdir(tmp_path / "a")) == names  # three files, no temp files left
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert sum(counts["train"].values()) == 30
    assert sum(counts["test_id"].values()) == 300 and sum(counts["test_ood"].values()) == 300
    assert counts["test_ood"] == {f: 60 for f in tasks.OOD_FAMILIES}
    lines = (tmp_path / "a" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 30
    first = json.loads(lines[0])
    assert set(first) == {"id", "question", "answer", "split", "family", "teacher"}
    assert first["id"] == "train-0" and first["split"] == "train"
    assert first["teacher"]["tools"] == [c["name"]
                                         for c in files.tool_calls(first["teacher"]["messages"])]
    assert teacher.replay(first["teacher"]["messages"]) == first["answer"]

    teacher.write_scripted(str(tmp_path / "c"), "none", 30, 6)
    assert ((tmp_path / "a" / "train.jsonl").read_bytes()
            != (tmp_path / "c" / "train.jsonl").read_bytes())


def test_ensure_data_writes_only_when_missing(tmp_path):
    paths = teacher.ensure_data(str(tmp_path), n_train=10, seed=0)
    assert paths == {s: str(tmp_path / f"{s}.jsonl") for s in teacher.SPLITS}
    assert all(os.path.isfile(p) for p in paths.values())
    before = {s: os.stat(p).st_mtime_ns for s, p in paths.items()}
    teacher.ensure_data(str(tmp_path), n_train=10, seed=0)
    assert {s: os.stat(p).st_mtime_ns for s, p in paths.items()} == before


def test_ensure_data_never_overwrites_a_partial_folder(tmp_path):
    own = json.dumps({"question": "What is 2 + 3?", "answer": "5", "teacher_tools": ["add"]}) + "\n"
    (tmp_path / "train.jsonl").write_text(own)
    with pytest.raises(files.DataError) as e:
        teacher.ensure_data(str(tmp_path), n_train=10, seed=0)
    message = str(e.value)
    assert "\n" not in message and str(tmp_path / "test_id.jsonl") in message
    assert str(tmp_path / "test_ood.jsonl") in message and "train.jsonl" not in message
    assert (tmp_path / "train.jsonl").read_text() == own
    assert sorted(os.listdir(tmp_path)) == ["train.jsonl"]


def test_ensure_data_on_a_file_is_a_data_error(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("not data\n")
    with pytest.raises(files.DataError, match="not a folder") as e:
        teacher.ensure_data(str(path), n_train=10, seed=0)
    assert str(path) in str(e.value)
    assert path.read_text() == "not data\n"


def test_llm_teacher_rolls_out_in_batches_and_keeps_only_what_replays(monkeypatch):
    import model

    problems = [tasks.Problem(f"train-{i}", f"What is 2 + 3, case {i}?", "5", "train",
                              "add_more", [])
                for i in range(5)]
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    # The rollout drops the invalid add{"a": 2} from tool_calls but keeps its reply: the
    # final answer is right, yet the replies no longer pair with the calls.
    unpaired = [{"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "add", "content": "error: missing argument 'b' for add"},
                {"role": "tool", "name": "add", "content": "5"},
                {"role": "assistant", "content": "\\boxed{5}"}]
    faithful = [{"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "add", "content": "5"},
                {"role": "assistant", "content": "\\boxed{5}"}]
    loads, sizes = [], []

    def fake_load(name, device):
        loads.append((name, device))
        return "policy", SimpleNamespace(chat_template=model.TINY_TEMPLATE)

    def fake_rollout(policy, tokenizer, prompts, tools, n, seed, temperature):
        sizes.append(len(prompts))
        return [SimpleNamespace(finished=True, messages=m)
                for _ in prompts for m in [unpaired, faithful][:n]]

    monkeypatch.setattr(model, "load", fake_load)
    monkeypatch.setattr(model, "rollout", fake_rollout)
    kept = teacher.llm_records("some/model", problems, samples=2, seed=0, device="cuda:1", batch=2)
    assert loads == [("some/model", "cuda:1")]
    assert sizes == [2, 2, 1]
    assert [r["id"] for r in kept] == [p.id for p in problems]
    assert all(r["teacher"]["messages"] == tasks.prompt(p.question) + faithful
               for r, p in zip(kept, problems))
    # with one try each, only the unpaired trajectory is offered: nothing is kept
    assert teacher.llm_records("some/model", problems, samples=1, seed=0, batch=64) == []


@pytest.mark.parametrize("argv, message", [
    (["--samples", "0"], "--samples must be at least 1"),
    (["--batch", "0"], "--batch must be at least 1"),
])
def test_command_line_refuses_counts_below_one(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["teacher.py", "--model", "some/model", *argv])
    with pytest.raises(SystemExit) as e:
        teacher.main()
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_command_line_llm_teacher_device_and_model_error(monkeypatch, tmp_path):
    import model
    import torch

    loads = []

    def failing_load(name, device):
        loads.append((name, device))
        raise model.ModelError(f"'{name}' is neither a folder nor a model the hub can serve here")

    monkeypatch.setattr(model, "load", failing_load)
    for flags, device in (([], "cuda" if torch.cuda.is_available() else "cpu"),
                          (["--device", "cpu"], "cpu")):
        monkeypatch.setattr(sys, "argv", ["teacher.py", "--model", "no/such/model", "--out",
                                          str(tmp_path / "out"), "--n-train", "1", *flags])
        with pytest.raises(SystemExit) as e:
            teacher.main()
        assert e.value.code == ("error: 'no/such/model' is neither a folder nor a model the hub "
                                "can serve here")
        assert loads.pop() == ("no/such/model", device)
    assert not (tmp_path / "out").exists()


def test_command_line_out_that_is_a_file_is_a_one_line_error(monkeypatch, tmp_path):
    path = tmp_path / "README.md"
    path.write_text("text\n")
    monkeypatch.setattr(sys, "argv", ["teacher.py", "--out", str(path), "--n-train", "1"])
    with pytest.raises(SystemExit) as e:
        teacher.main()
    assert e.value.code == f"error: {path}: not a folder"


def test_command_line_writes_the_data(cli):
    out, results = cli
    rc, stdout, stderr = results["good"]
    assert rc == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{out}/train.jsonl: 50 problems")
    assert lines[1].startswith(f"{out}/test_id.jsonl: 300 problems")
    assert lines[2].startswith(f"{out}/test_ood.jsonl: 300 problems")
    for family in tasks.HABIT_FAMILIES:  # the default condition: hidden habits
        assert f" {family}=25" in lines[0] and f" {family}=150" in lines[1]
    for family in tasks.HABIT_OOD:
        assert f" {family}=100" in lines[2]
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(records) == 50
    # where the habit applies, the record says what it does; where the demonstrator followed it, how
    habit = [r for r in records if "habit" in r]
    # hidden: right by luck
    assert habit and all(r["habit"]["answer"] == r["answer"] for r in habit)
    assert all(teacher.replay(r["demo"]["messages"]) == r["answer"] for r in records if "demo" in r)


def test_command_line_bad_flag_is_a_one_line_error(cli):
    out, results = cli
    rc, stdout, stderr = results["bad"]
    assert rc != 0
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--n-train must be at least 1" in errors[0]
    assert not (out / "bad").exists()
