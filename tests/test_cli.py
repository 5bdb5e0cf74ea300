"""The command lines of compare.py and bench.py: bad flags, stale run folders and bad models
end in one clear line, never a traceback or a silently wrong result. Nothing here trains."""
import json
import os
import subprocess
import sys

import pytest

import bench
import compare
import files
import rl
import sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if anything would train: these tests only look at run folders."""
    def train(args):
        raise AssertionError(f"would train into {args.out}")
    monkeypatch.setattr(rl, "train", train)
    monkeypatch.setattr(sft, "train", train)
    monkeypatch.setattr(rl, "warm_accuracy", lambda warm: 0.9)  # a warm start that passes the gate


def finished_run(run) -> str:
    """Make run.out look like a finished run of the settings `run`, as rl.py and sft.py leave it."""
    os.makedirs(run.out, exist_ok=True)
    with open(os.path.join(run.out, "args.json"), "w") as f:
        json.dump(vars(run), f)
    with open(os.path.join(run.out, "eval.json"), "w") as f:
        json.dump({}, f)
    return run.out


def test_compare_methods_are_deduplicated_in_order():
    assert (compare.parse_args(["--methods", "mentor", "sft-all", "mentor"]).methods
            == ["mentor", "sft-all"])


def test_compare_reuses_a_run_of_the_same_settings(tmp_path, no_training):
    args = compare.parse_args(["--out", str(tmp_path), "--device", "cpu"])
    warm = finished_run(compare.warm_args("hidden", 0, args))
    assert compare.run_warm("hidden", 0, args) == warm
    for method in ("sft-all", "sft-matched", "mentor"):
        out = finished_run(compare.method_args("hidden", method, 0, warm, args))
        # Where a run is written and on which device do not change what it learned.
        cuda = compare.parse_args(["--out", str(tmp_path), "--device", "cuda"])
        assert compare.run_method("hidden", method, 0, warm, cuda) == out


@pytest.mark.parametrize("method, flags, message", [
    ("mentor", ["--rl-steps", "5"],
     "was trained with steps=40, this run asks for 5; use another --out or delete it"),
    ("sft-all", ["--sft-steps", "5"], "was trained with steps=300, this run asks for 5"),
    ("sft-matched", ["--rl-steps", "5"], "was trained with steps=40, this run asks for 5"),
])
def test_compare_refuses_a_run_of_other_settings(tmp_path, no_training, method, flags, message):
    warm = str(tmp_path / "warm-s0")
    finished_run(compare.method_args("hidden", method, 0, warm,
                                     compare.parse_args(["--out", str(tmp_path)])))
    with pytest.raises(files.DataError, match=message):
        compare.run_method("hidden", method, 0, warm,
                           compare.parse_args(["--out", str(tmp_path)] + flags))


def test_compare_refuses_an_rl_run_of_fewer_steps(tmp_path, no_training):
    # args.json as rl.py wrote it for compare.py's mentor run of seed 0, with the default 40 steps.
    warm, out = str(tmp_path / "warm-s0"), str(tmp_path / "hidden" / "mentor-s0")
    finished_run(rl.parse_args(["--condition", "hidden", "--device", "cpu", "--seed", "0",
                                "--out", out, "--init", warm, "--reward", "mentor", "--steps", "40",
                                "--eval-every", "0"]))
    assert compare.run_method("hidden", "mentor", 0, warm,
                              compare.parse_args(["--out", str(tmp_path)])) == out
    with pytest.raises(files.DataError,
                       match=f"^{out} was trained with steps=40, this run asks for 5; "):
        compare.run_method("hidden", "mentor", 0, warm,
                           compare.parse_args(["--out", str(tmp_path), "--rl-steps", "5"]))


def test_compare_refuses_a_warm_start_of_other_settings(tmp_path, no_training, monkeypatch):
    args = compare.parse_args(["--out", str(tmp_path)])
    finished_run(compare.warm_args("hidden", 0, args))
    args.warm_start = rl.WARM_START + ["--lr", "0.01"]
    with pytest.raises(files.DataError,
                       match="warm-s0 was trained with lr=0.003, this run asks for 0.01"):
        compare.run_warm("hidden", 0, args)


@pytest.mark.parametrize("solved, trained, message", [
    ({"warm-s0": 0.61}, ["warm-s0"], None),  # passes the first time
    ({"warm-s0": 0.37, "warm-s0-redraw": 0.86}, ["warm-s0", "warm-s0-redraw"], None),
    ({"warm-s0": 0.37, "warm-s0-redraw": 0.59}, ["warm-s0", "warm-s0-redraw"],
     "no warm start reaches 60%, with seed 0 or 1000; try another --seed"),
])
def test_a_warm_start_below_the_gate_is_drawn_again(tmp_path, monkeypatch, solved, trained,
                                                    message):
    runs = []
    monkeypatch.setattr(sft, "train", lambda run: runs.append((os.path.basename(run.out), run.seed))
                        or finished_run(run))
    monkeypatch.setattr(rl, "warm_accuracy", lambda run: solved[os.path.basename(run.out)])
    args = compare.parse_args(["--out", str(tmp_path)])
    if message:
        with pytest.raises(files.DataError, match=message):
            compare.run_warm("hidden", 0, args)
    else:
        assert compare.run_warm("hidden", 0, args) == str(tmp_path / "hidden" / trained[-1])
    assert runs == list(zip(trained, [0, 1000]))
    runs.clear()  # a second call finds the finished folders and trains nothing
    if not message:
        assert (compare.run_warm("hidden", 0, args) == str(tmp_path / "hidden" / trained[-1])
                and runs == [])


def test_compare_reports_the_runs_of_a_redrawn_warm_start(tmp_path, no_training, monkeypatch,
                                                          capsys):
    args = compare.parse_args(["--out", str(tmp_path)])
    first, redraw = rl.warm_draws(compare.warm_args("hidden", 0, args))
    split = {"accuracy": 0.5, "same_tools": 0.25, "by_family": {}}
    for run in (first, redraw, compare.method_args("hidden", "mentor", 0, redraw.out, args)):
        finished_run(run)
        files.write_json(os.path.join(run.out, "eval.json"), {"ID": split, "OOD": split})
    monkeypatch.setattr(rl, "warm_accuracy", lambda run: 0.86 if run.out == redraw.out else 0.37)
    monkeypatch.setattr(compare.teacher, "ensure_data", lambda data, condition: {})
    monkeypatch.setattr(compare, "curves", lambda runs, path: None)
    monkeypatch.setattr(sys, "argv", ["compare.py", "--out", str(tmp_path), "--seeds", "1",
                                      "--methods", "mentor", "--conditions", "hidden"])
    compare.main()  # the mentor run started from the redraw: reused, nothing trained
    assert "hidden        mentor" in capsys.readouterr().out


def test_the_report_pairs_each_method_with_sparse_seed_by_seed(tmp_path):
    def runs(method, ood):  # one finished run per seed, with these OOD accuracies
        folders = []
        for seed, acc in enumerate(ood):
            split = {"accuracy": acc, "same_tools": 0.5, "by_family": {"heights": acc}}
            folders.append(str(tmp_path / f"{method}-s{seed}"))
            files.write_json(os.path.join(folders[-1], "eval.json"), {"ID": split, "OOD": split})
        return folders

    # hidden's seeds: the warm starts differ (0.13 vs 0.32-0.36), each seed's methods less
    sparse, mentor = [0.13, 0.32, 0.357], [0.373, 0.497, 0.533]
    results, table = compare.report({"hidden": {"sparse": runs("sparse", sparse),
                                                "mentor": runs("mentor", mentor)}})
    assert results["hidden"]["mentor"]["OOD_minus_sparse"] == pytest.approx([0.243, 0.177, 0.176])
    assert results["hidden"]["sparse"]["OOD_minus_sparse"] == [0.0, 0.0, 0.0]
    line = next(line for line in table.splitlines() if line.startswith("hidden        mentor"))
    assert line.endswith("0.199 ± 0.038") and "0.468 ± 0.084" in line  # paired spread: 2x smaller
    # without a sparse run there is nothing to pair with
    results, table = compare.report({"hidden": {"mentor": runs("alone", mentor)}})
    assert "OOD_minus_sparse" not in results["hidden"]["mentor"]


def test_the_report_has_a_retention_column_where_a_condition_has_one(tmp_path):
    for condition, retain in (("hidden", None), ("forgetting", [0.7, 0.5])):
        for seed, kept in enumerate(retain or [None, None]):
            split = {"accuracy": 0.5, "same_tools": 0.5, "by_family": {"heights": 0.5}}
            evals = {"ID": split, "OOD": split}
            if kept is not None:
                evals["retain"] = {"accuracy": kept, "by_family": {"add_more": kept}}
            files.write_json(str(tmp_path / condition / f"sft-all-s{seed}" / "eval.json"), evals)
    results, table = compare.report({c: {"sft-all": [str(tmp_path / c / f"sft-all-s{s}")
                                                     for s in (0, 1)]}
                                      for c in ("hidden", "forgetting")})
    assert results["forgetting"]["sft-all"]["retain_accuracy"] == [0.7, 0.5]
    assert results["forgetting"]["sft-all"]["by_family"]["add_more"] == [0.7, 0.5]
    lines = table.splitlines()
    assert "retain acc" in lines[0]
    assert lines[1].startswith("hidden") and lines[1].rstrip().endswith(" -")
    assert lines[2].startswith("forgetting") and lines[2].rstrip().endswith("0.600 ± 0.141")


def test_a_run_from_before_a_flag_existed_is_reused_while_the_flag_is_off(tmp_path):
    args = compare.parse_args(["--out", str(tmp_path)])
    run = compare.method_args("forgetting", "sft-all", 0, str(tmp_path / "warm-s0"), args)
    finished_run(run)
    saved = json.load(open(os.path.join(run.out, "args.json")))
    del saved["replay"], saved["holdout"]  # as sft.py wrote it before these flags
    files.write_json(os.path.join(run.out, "args.json"), saved)
    assert files.finished_run(run)
    run.replay = 0.2
    with pytest.raises(files.DataError, match="trained with replay=unset, this run asks for 0.2"):
        files.finished_run(run)


def test_compare_replays_only_where_there_is_a_warm_split(tmp_path, no_training, monkeypatch):
    monkeypatch.setattr(compare.teacher, "ensure_data", lambda data, condition: {})
    monkeypatch.setattr(sys, "argv", ["compare.py", "--out", str(tmp_path), "--conditions",
                                      "hidden", "--methods", "sparse", "sft-replay"])
    with pytest.raises(SystemExit) as e:
        compare.main()
    assert e.value.code == ("error: sft-replay: the hidden condition has no warm split to replay "
                            "(forgetting has one)")
    args = compare.parse_args(["--out", str(tmp_path)])
    replay = compare.method_args("forgetting", "sft-replay", 0, "warm", args)
    plain = compare.method_args("forgetting", "sft-all", 0, "warm", args)
    assert replay.replay == 0.2 and plain.replay == 0
    assert {k: v for k, v in vars(replay).items() if k not in ("replay", "out")} == \
        {k: v for k, v in vars(plain).items() if k not in ("replay", "out")}


def test_compare_refuses_a_finished_run_without_args(tmp_path, no_training):
    (tmp_path / "hidden" / "mentor-s0").mkdir(parents=True)
    (tmp_path / "hidden" / "mentor-s0" / "eval.json").write_text("{}")
    with pytest.raises(files.DataError, match="mentor-s0 has no readable args.json"):
        compare.run_method("hidden", "mentor", 0, str(tmp_path / "warm-s0"),
                           compare.parse_args(["--out", str(tmp_path)]))


def test_compare_main_stops_before_training_anything(tmp_path, no_training, monkeypatch):
    # The warm start is missing (it would train first); the stale run must stop the comparison
    # before.
    old = compare.parse_args(["--out", str(tmp_path)])
    finished_run(compare.method_args("hidden", "mentor", 0, str(tmp_path / "hidden" / "warm-s0"),
                                     old))
    monkeypatch.setattr(compare.teacher, "ensure_data", lambda data, condition: {})
    monkeypatch.setattr(sys, "argv", ["compare.py", "--out", str(tmp_path), "--seeds", "1",
                                      "--methods", "mentor", "--conditions", "hidden",
                                      "--rl-steps", "5"])
    with pytest.raises(SystemExit) as e:
        compare.main()
    assert str(e.value.code).startswith(f"error: {tmp_path / 'hidden' / 'mentor-s0'} was trained"
                                        " with steps=40")


@pytest.mark.parametrize("flags", [["--repeats", "0"], ["--batch", "0"], ["--max-tokens", "0"],
                                   ["--warmup", "-1"], ["--threads", "-1"]])
def test_bench_rejects_bad_flags(flags, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(flags)
    assert e.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]  # argparse's usage, then one line of error
    assert ": error: " in last and flags[0] in last


def run_bench(*flags: str) -> subprocess.CompletedProcess:
    """`python bench.py FLAGS` as a user runs it, offline."""
    return subprocess.run([sys.executable, "bench.py", *flags], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)


def test_bench_reports_a_bad_model_in_one_line(tmp_path):
    result = run_bench("--model", str(tmp_path / "nope"), "--skip-generate")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]


class FakeRollout:
    """What reward.score_rollout reads of a model.Rollout."""
    def __init__(self, calls: list[str], answer: str):
        self.calls = [{"name": name, "arguments": {}, "error": None} for name in calls]
        self.final, self.finished = f"\\boxed{{{answer}}}", True


def test_gate_statistics_on_known_rollouts():
    def record(taught, habit):
        return {"id": "x", "answer": "6", "teacher": {"messages": [], "tools": taught},
                "habit": habit}
    # the outcome agrees
    records = [record(["divide", "floor"], {"tools": ["divide", "ceil"], "answer": "6"}),
               # it does not
               record(["subtract", "abs_value"], {"tools": ["subtract"], "answer": "-6"}),
               # no habit
               record(["add"], None)]
    # 1.1 / 0.8
    rollouts = [FakeRollout(["divide", "floor"], "6"), FakeRollout(["divide", "ceil"], "6"),
                FakeRollout(["subtract", "abs_value"], "6"),
                FakeRollout(["abs_value", "subtract"], "6"),
                # 1.1 / 0.8
                FakeRollout(["add"], "6"), FakeRollout([], "6")]
    stats = compare.gate_stats(records, rollouts, group=2)
    assert stats["habit_problems"] == 2
    assert stats["teacher_tools_share"] == 0.75  # 3 of the 4 samples on habit problems
    assert stats["outcome_agrees"] == 0.5
    assert stats["spread"]["mentor"] == pytest.approx(2 / 3) and stats["spread"]["sparse"] == 0.0
    # the order counts too: abs_value before subtract is no replica
    assert stats["spread"]["strict"] == 1.0
    assert not compare.gate_passes(stats)
    assert compare.gate_passes({**stats, "teacher_tools_share": 0.3, "outcome_agrees": 0.8})
    assert not compare.gate_passes({**stats, "teacher_tools_share": 0.3, "outcome_agrees": 0.9,
                                    "spread": {"mentor": 0.29, "sparse": 0.2}})


@pytest.mark.parametrize("workers", [1, 2])
def test_every_warm_start_and_method_runs_here_or_in_worker_processes(workers):
    # compare.py --jobs 2: spawned workers, one CPU thread each; a method starts from its pair's
    # warm start
    pairs = [("a", 0), ("b", 1), ("c", 2)]
    warms, runs = compare.run_all("{}{}".format, "{}.{}.{}<-{}".format, pairs, ["m", "n"], workers)
    assert warms == {("a", 0): "a0", ("b", 1): "b1", ("c", 2): "c2"}
    assert runs == {(c, m, s): f"{c}.{m}.{s}<-{c}{s}" for c, s in pairs for m in ("m", "n")}
