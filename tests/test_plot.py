"""plot.py: the per-step series of GRPO runs, the mean of seeds, and the image (where
matplotlib is installed; without it, one line, and rl.py and compare.py go on without)."""
import json
import sys

import pytest

import compare
import plot


def fake_run(path, rewards, habit=True):
    path.mkdir(parents=True)
    rows = [{"step": 0, "ID_accuracy": 0.5}]  # rows without a reward (an evaluation) are not steps
    for step, r in enumerate(rewards):
        row = {"step": step + 1, "reward": r, "zero_var_groups": 0.25 * step, "correct": r / 2,
               "same_tools": 0.1}
        if habit:
            row["same_tools_habit"] = 0.2 * step
        rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_series_and_the_mean_of_seeds(tmp_path):
    a = plot.series(fake_run(tmp_path / "mentor-s0", [0.8, 0.86, 0.9]))
    assert a == {"reward": [0.8, 0.86, 0.9], "same_tools_habit": [0.0, 0.2, 0.4],
                 "spread": [1.0, 0.75, 0.5]}
    b = plot.series(fake_run(tmp_path / "mentor-s1", [0.6, 0.7], habit=False))
    assert b["same_tools_habit"] == [0.1, 0.1]  # no habit problems: the share over all problems
    # as many steps as the shortest run
    assert plot.mean([a, b])["reward"] == pytest.approx([0.7, 0.78])


def test_without_matplotlib_one_line(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path / "run", [0.5])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(SystemExit) as e:
        plot.main([run])
    assert str(e.value.code) == "error: plot.py needs matplotlib (pip install matplotlib)"
    with pytest.raises(ImportError):  # what rl.py catches to go on without curves
        plot.draw({"run": {"mentor": plot.series(run)}}, str(tmp_path / "c.png"))
    compare.curves({"hidden": {"mentor": [run]}}, str(tmp_path / "c.png"))
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_a_comparison_draws_its_grpo_methods(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = {"sparse": [fake_run(tmp_path / "sparse-s0", [0.5, 0.5])],
            "mentor": [fake_run(tmp_path / "mentor-s0", [0.5, 0.9]),
                       fake_run(tmp_path / "mentor-s1", [0.6, 0.8])],
            # no rollouts: left out
            "warm": [str(tmp_path / "warm-s0")], "sft-all": [str(tmp_path / "sft-all-s0")]}
    compare.curves({"hidden": runs}, str(tmp_path / "curves.png"))
    assert ((tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
            and "wrote" in capsys.readouterr().out)
