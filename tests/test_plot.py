"""plot.py: the per-step series of GRPO runs, the mean of seeds, and the image (where
matplotlib is installed; without it, one line, and rl.py and compare.py go on without)."""
import json
import sys

import pytest

import compare
import plot


def write_eval(folder, ood):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps({"ID": {"accuracy": 0.9},
                                                  "OOD": {"accuracy": ood}}))


def fake_run(path, rewards, habit=True, start=None, ood=None):
    """A GRPO run folder as rl.py leaves it: `start` its starting folder, `ood` the OOD accuracy
    of its periodic evaluation after step 2 and of its end (none when None)."""
    path.mkdir(parents=True)
    (path / "args.json").write_text(json.dumps({"init": start and str(start)}))
    rows = []
    for step, r in enumerate(rewards):
        row = {"step": step + 1, "reward": r, "zero_var_groups": 0.25 * step, "correct": r / 2,
               "same_tools": 0.1}
        if habit:
            row["same_tools_habit"] = 0.2 * step
        rows.append(row)
        if ood and step + 1 == 2:
            row["OOD_accuracy"] = ood[0]
    if ood:
        write_eval(path, ood[1])
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_series_and_the_mean_of_seeds(tmp_path):
    write_eval(tmp_path / "warm", 0.127)
    a = plot.series(fake_run(tmp_path / "mentor-s0", [0.8, 0.86, 0.9], start=tmp_path / "warm",
                             ood=(0.3, 0.387)))
    assert a == {"reward": [0.8, 0.86, 0.9], "same_tools_habit": [0.0, 0.2, 0.4],
                 "spread": [1.0, 0.75, 0.5], "ood": [(0, 0.127), (2, 0.3), (3, 0.387)]}
    b = plot.series(fake_run(tmp_path / "mentor-s1", [0.6, 0.7], habit=False,
                             start=tmp_path / "warm", ood=(0.2, 0.14)))
    assert b["same_tools_habit"] == [0.1, 0.1]  # no habit problems: the share over all problems
    assert b["ood"] == [(0, 0.127), (2, 0.2), (2, 0.14)]
    # as many steps, and evaluations, as the shortest run
    both = plot.mean([a, b])
    assert both["reward"] == pytest.approx([0.7, 0.78])
    assert [s for s, _ in both["ood"]] == [0, 2, 3]
    assert [acc for _, acc in both["ood"]] == pytest.approx([0.127, 0.25, 0.2635])
    # a run without evaluations (still going, or started from a model with no eval.json)
    assert plot.series(fake_run(tmp_path / "bare", [0.5]))["ood"] == []


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
