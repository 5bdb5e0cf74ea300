"""The command lines of compare.py and bench.py: bad flags, stale run folders and bad models
end in one clear line, never a traceback or a silently wrong result. Nothing here trains."""
import json
import os
import subprocess
import sys

import pytest

import bench
import compare
import model
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


def finished_run(run) -> str:
    """Make run.out look like a finished run of the settings `run`, as rl.py and sft.py leave it."""
    os.makedirs(run.out, exist_ok=True)
    with open(os.path.join(run.out, "args.json"), "w") as f:
        json.dump(vars(run), f)
    with open(os.path.join(run.out, "eval.json"), "w") as f:
        json.dump({}, f)
    return run.out


def test_compare_methods_are_deduplicated_in_order():
    assert compare.parse_args(["--methods", "mentor", "sft", "mentor"]).methods == ["mentor", "sft"]


def test_compare_reuses_a_run_of_the_same_settings(tmp_path, no_training):
    args = compare.parse_args(["--out", str(tmp_path), "--device", "cpu"])
    warm = finished_run(compare.warm_args(0, rl.WARM_START, args))
    assert compare.run_warm(0, rl.WARM_START, args) == warm
    for method in ("sft", "mentor"):
        out = finished_run(compare.method_args(method, 0, warm, args))
        # Where a run is written and on which device do not change what it learned.
        assert compare.run_method(method, 0, warm, compare.parse_args(["--out", str(tmp_path), "--device", "cuda"])) == out


@pytest.mark.parametrize("method, flags, message", [
    ("mentor", ["--rl-steps", "5"], "was trained with steps=60, this run asks for 5; use another --out or delete it"),
    ("sft", ["--sft-steps", "5"], "was trained with steps=600, this run asks for 5"),
    ("strict", ["--data", "other"], "was trained with data=data, this run asks for other"),
])
def test_compare_refuses_a_run_of_other_settings(tmp_path, no_training, method, flags, message):
    warm = str(tmp_path / "warm-s0")
    finished_run(compare.method_args(method, 0, warm, compare.parse_args(["--out", str(tmp_path)])))
    with pytest.raises(model.ModelError, match=message):
        compare.run_method(method, 0, warm, compare.parse_args(["--out", str(tmp_path)] + flags))


def test_compare_refuses_an_rl_run_of_fewer_steps(tmp_path, no_training):
    # args.json as rl.py wrote it for compare.py's mentor run of seed 0, with the default 60 steps.
    warm, out = str(tmp_path / "warm-s0"), str(tmp_path / "mentor-s0")
    finished_run(rl.parse_args(["--data", "data", "--device", "cpu", "--seed", "0", "--out", out, "--init", warm,
                                "--reward", "mentor", "--steps", "60", "--eval-every", "0"]))
    assert compare.run_method("mentor", 0, warm, compare.parse_args(["--out", str(tmp_path)])) == out
    with pytest.raises(model.ModelError, match=f"^{out} was trained with steps=60, this run asks for 5; "):
        compare.run_method("mentor", 0, warm, compare.parse_args(["--out", str(tmp_path), "--rl-steps", "5"]))


def test_compare_refuses_a_warm_start_of_other_settings(tmp_path, no_training):
    args = compare.parse_args(["--out", str(tmp_path)])
    finished_run(compare.warm_args(0, rl.WARM_START + ["--lr", "0.01"], args))
    with pytest.raises(model.ModelError, match="warm-s0 was trained with lr=0.01, this run asks for 0.003"):
        compare.run_warm(0, rl.WARM_START, args)


def test_compare_refuses_a_finished_run_without_args(tmp_path, no_training):
    (tmp_path / "mentor-s0").mkdir()
    (tmp_path / "mentor-s0" / "eval.json").write_text("{}")
    with pytest.raises(model.ModelError, match="mentor-s0 has no readable args.json"):
        compare.run_method("mentor", 0, str(tmp_path / "warm-s0"), compare.parse_args(["--out", str(tmp_path)]))


def test_compare_main_stops_before_training_anything(tmp_path, no_training, monkeypatch):
    # The warm start is missing (it would train first); the stale run must stop the comparison before.
    old = compare.parse_args(["--out", str(tmp_path)])
    finished_run(compare.method_args("mentor", 0, str(tmp_path / "warm-s0"), old))
    monkeypatch.setattr(compare.teacher, "ensure_data", lambda data: None)
    monkeypatch.setattr(sys, "argv", ["compare.py", "--out", str(tmp_path), "--seeds", "1", "--methods", "mentor",
                                      "--rl-steps", "5"])
    with pytest.raises(SystemExit) as e:
        compare.main()
    assert str(e.value.code).startswith(f"error: {tmp_path / 'mentor-s0'} was trained with steps=60")


@pytest.mark.parametrize("flags", [["--repeats", "0"], ["--batch", "0"], ["--max-tokens", "0"], ["--warmup", "-1"],
                                   ["--threads", "-1"]])
def test_bench_rejects_bad_flags(flags, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(flags)
    assert e.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]  # argparse's usage, then one line of error
    assert ": error: " in last and flags[0] in last


def run_bench(*flags: str) -> subprocess.CompletedProcess:
    """`python bench.py FLAGS` as a user runs it, offline."""
    return subprocess.run([sys.executable, "bench.py", *flags], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)


def test_bench_reports_a_bad_model_in_one_line(tmp_path):
    result = run_bench("--model", str(tmp_path / "nope"), "--skip-generate")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]
