"""sft.py, rl.py and evaluate.py end to end on the tiny default, in a temporary folder with
a small benchmark (200 training problems, 8 per test split)."""
import json
import math
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import evaluate
import files
import model
import rl
import sft
import tasks
import teacher
import tools


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with data/ (small splits) and runs/tiny; the tests run inside it."""
    path = tmp_path_factory.mktemp("work")
    for split, problems in tasks.benchmark("hidden", n_train=200, n_test=8).items():
        files.write_jsonl(str(path / "data" / "hidden" / f"{split}.jsonl"),
                            [teacher.record(p, teacher.trajectory(p)) for p in problems])
    old = os.getcwd()
    os.chdir(path)
    model.ensure_tiny()  # builds runs/tiny
    yield path
    os.chdir(old)


@pytest.fixture(scope="module")
def warm(workdir):
    """A short SFT run: the warm start of the RL tests."""
    sft.train(sft.parse_args(["--limit", "64", "--steps", "40", "--batch-size", "16",
                              "--eval-every", "0", "--out", "runs/warm"]))
    return "runs/warm"


def read_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_sft_lowers_the_loss_and_writes_a_run(warm):
    log = read_log(os.path.join(warm, "metrics.jsonl"))
    losses = [row["loss"] for row in log if "loss" in row]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert os.path.isfile(os.path.join(warm, "checkpoint", "model.safetensors"))
    assert json.load(open(os.path.join(warm, "args.json")))["limit"] == 64
    result = json.load(open(os.path.join(warm, "eval.json")))
    assert set(result) == {"ID", "OOD"} and result["ID"]["problems"] == 8


def test_sft_trains_only_the_assistant_tokens(warm):
    policy, tok = model.load(warm)
    record = files.load_records("data/hidden/train.jsonl")[0]
    ids, mask = sft.batch([model.encode(tok, record["teacher"]["messages"], tools.schemas())],
                          tok.pad_token_id, "cpu")
    trained = tok.decode(ids[0][mask[0] == 1])
    assert "<tool_call>" in trained and "\\boxed{" + record["answer"] + "}" in trained
    assert record["question"] not in trained and tasks.SYSTEM_PROMPT not in trained
    # the tool's output is in the sequence but not in the loss
    tool_out = next(m["content"] for m in record["teacher"]["messages"] if m["role"] == "tool")
    untrained = tok.decode(ids[0][mask[0] == 0])
    assert tool_out in untrained


def test_masked_tokens_get_no_gradient():
    logp = torch.randn(2, 5, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.float)
    ref = torch.randn(2, 5)
    pg, _ = rl.policy_loss(logp, logp.detach() - 0.1, torch.tensor([1.0, -2.0]))
    rl.token_sum(pg + 0.5 * rl.kl_penalty(logp, ref), mask).backward()
    assert (logp.grad[mask == 0] == 0).all()
    assert (logp.grad[mask == 1] != 0).all()


def toy_grpo(warm: str, seed: int, steps: int = 16, lr: float = 1e-3) -> list[float]:
    """The smallest complete GRPO: rl.py's advantages, clipped loss and KL on the tiny student's
    rollouts, with a toy reward (1 when a short answer names the divide tool: about a fifth of
    the warm student's answers do). Returns the mean reward of each step."""
    torch.manual_seed(seed)
    policy, tok = model.load(warm)
    ref, _ = model.load(warm)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    prompts = [tasks.prompt("Say a number.")] * 4
    G = 8

    history = []
    for step in range(steps):
        with torch.no_grad():
            rollouts = model.rollout(policy, tok, prompts, None, n=G, max_turns=1, max_tokens=12,
                                     seed=seed * 1000 + step)
        rewards = torch.tensor([float("divide" in r.text) for r in rollouts])
        history.append(rewards.mean().item())
        data = model.collate(rollouts, tok.pad_token_id)
        mask = data["loss_mask"]
        ref_logp = rl.batched_logprobs(ref, data, [torch.arange(len(rollouts))], 64, 1.0)
        logp = model.logprobs(policy, data["ids"], mask)
        pg, _ = rl.policy_loss(logp, logp.detach(), rl.grpo_advantages(rewards, G))
        loss = rl.token_sum(pg + 0.001 * rl.kl_penalty(logp, ref_logp), mask) / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return history


def test_grpo_steps_raise_the_mean_reward_on_a_toy_problem(warm):
    """16 steps raise the toy reward clearly: over 10 seeds and torch's default, AVX2 and
    AVX-512 kernels the last four steps' mean beat the first four's by 0.29 at the least
    (tests/seeds.py)."""
    history = toy_grpo(warm, seed=0)
    assert sum(history[-4:]) / 4 > sum(history[:4]) / 4 + 0.15


RL_FLAGS = ["--init", "runs/warm", "--prompts", "2", "--group", "4", "--max-tokens", "96",
            "--minibatch", "1", "--eval-every", "0", "--save-every", "1", "--out", "runs/rl"]


def test_rl_runs_logs_saves_and_resumes_as_if_never_stopped(warm):
    rl.train(rl.parse_args(RL_FLAGS + ["--steps", "2"]))
    first = read_log("runs/rl/metrics.jsonl")
    assert [row["step"] for row in first] == [1, 2]
    for key in ("reward", "reward_std", "correct", "tool_match", "zero_var_groups", "calls",
                "invalid_call_rate", "kl", "entropy", "clip_frac", "grad_norm", "logprob_gap",
                "response_tokens", "finished", "step_time", "tokens_per_s"):
        assert key in first[0]
    assert 0 <= first[0]["zero_var_groups"] <= 1 and first[0]["response_tokens"] > 0
    args = rl.parse_args(RL_FLAGS + ["--steps", "2"])
    # warm-up
    assert [row["lr"] for row in first] == pytest.approx([args.lr / 10, args.lr * 2 / 10])
    args = rl.parse_args(RL_FLAGS + ["--steps", "30"])
    lrs = [sft.lr_at(step, args.lr, args.warmup, args.steps, args.lr_schedule)
           for step in range(30)]
    # then decay
    assert lrs[9] == pytest.approx(args.lr) and args.lr * 0.1 < lrs[-1] < args.lr * 0.11
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))
    state = torch.load("runs/rl/checkpoint/trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and state["init"] == "runs/warm" and state["optimizer"]["state"]
    weights = {k: v.clone() for k, v in model.load("runs/rl")[0].state_dict().items()}

    # checkpointing trains too
    rl.train(rl.parse_args(RL_FLAGS + ["--steps", "3", "--resume", "--grad-ckpt"]))
    assert [row["step"] for row in read_log("runs/rl/metrics.jsonl")] == [1, 2, 3]
    assert torch.load("runs/rl/checkpoint/trainer_state.pt", weights_only=False)["step"] == 3
    after = model.load("runs/rl")[0].state_dict()
    # step 3 trained from step 2's weights
    assert any(not torch.equal(weights[k], after[k]) for k in weights)
    # the same 3 steps in one go
    rl.train(rl.parse_args(RL_FLAGS + ["--steps", "3", "--out", "runs/rl-once"]))
    once = model.load("runs/rl-once")[0].state_dict()
    assert all(torch.allclose(once[k], after[k], atol=1e-6) for k in once)
    # a resume trains what it started with
    with pytest.raises(model.ModelError, match="--reward mentor"):
        rl.train(rl.parse_args(RL_FLAGS + ["--steps", "4", "--resume", "--reward", "sparse"]))
    with open("runs/rl/metrics.jsonl", "a") as f:  # a crash after logging step 4, before saving it
        f.write(json.dumps({"step": 4}) + "\n" + '{"step": 5, "rew')
    rl.train(rl.parse_args(RL_FLAGS + ["--steps", "3", "--resume"]))
    assert [row["step"] for row in read_log("runs/rl/metrics.jsonl")] == [1, 2, 3]
    # the reference is still the warm start, not the resumed weights
    assert json.load(open("runs/rl/eval.json"))["ID"]["problems"] == 8


def test_non_finite_loss_skips_the_update(warm, monkeypatch, capsys):
    def nan_loss(logp, *args):
        return logp * float("nan"), torch.zeros_like(logp)
    monkeypatch.setattr(rl, "policy_loss", nan_loss)
    rl.train(rl.parse_args(RL_FLAGS + ["--steps", "1", "--out", "runs/nan"]))
    before, after = model.load("runs/warm")[0].state_dict(), model.load("runs/nan")[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    out = capsys.readouterr()
    assert "non-finite gradient, update skipped" in out.out + out.err
    assert read_log("runs/nan/metrics.jsonl")[0]["skipped_updates"] == 2  # both mini-batches


def test_jsd_of_tool_usage():
    assert evaluate.jsd(Counter(add=2), Counter(add=5)) == 0.0
    assert evaluate.jsd(Counter(add=1), Counter(multiply=1)) == pytest.approx(1.0)
    # P = (1/2, 1/2), Q = (1, 0): M = (3/4, 1/4); JSD = (KL(P||M) + KL(Q||M)) / 2
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    expected = (kl_p + kl_q) / 2
    assert evaluate.jsd(Counter(add=1, power=1), Counter(add=3)) == pytest.approx(expected)
    assert (evaluate.jsd(Counter(), Counter()) == 0.0
            and evaluate.jsd(Counter(), Counter(add=1)) == 1.0)


def test_evaluate_reports_every_metric_with_examples(warm):
    policy, tok = model.load(warm)
    records = files.load_records("data/hidden/test_id.jsonl")
    m = evaluate.evaluate(policy, tok, records, k=2, max_tokens=96)
    for key in ("accuracy", "finished", "format_valid", "calls_per_problem", "invalid_call_rate",
                "tool_f1", "tool_jsd", "pass@2"):
        assert 0 <= m[key] <= (5 if key == "calls_per_problem" else 1)
    assert m["pass@2"] >= 0 and m["problems"] == 8 and len(m["examples"]) == 3
    # whole conversations: the student's turns and tool replies, the teacher's
    example = m["examples"][0]
    assert example["teacher"] == records[0]["teacher"]["messages"]
    assert example["student"][0]["role"] == "assistant" and isinstance(example["solved"], bool)
    assert m["data"] == evaluate.fingerprint(records) != evaluate.fingerprint(records[1:])
    assert "ID" in evaluate.table({"run": {"ID": m}})


@pytest.mark.parametrize("script, argv", [
    (rl, ["--group", "1"]), (rl, ["--reward", "dense"]), (rl, ["--save-every", "0"]),
    (rl, ["--temperature", "0"]), (rl, ["--eval-limit", "0"]), (rl, ["--warmup", "-1"]),
    (sft, ["--eval-limit", "0"]), (sft, ["--eval-every", "-1"]), (sft, ["--limit", "0"]),
    (sft, ["--replay", "1"]), (sft, ["--replay", "-0.1"]), (sft, ["--holdout", "-1"]),
    (rl, ["--data", "no/such/dir"]), (sft, ["--data", "no/such/dir"]),
    (evaluate, ["runs/sft", "--limit", "0"]), (evaluate, ["runs/sft", "--max-turns", "0"]),
    (evaluate, ["runs/sft", "--data", "a/test.jsonl", "b/test.jsonl"]),
])
def test_bad_flags_are_refused_in_one_line(script, argv, capsys):
    with pytest.raises(SystemExit) as exit:
        script.parse_args(argv)
    assert (exit.value.code == 2
            and next(a for a in argv if a.startswith("--")) in capsys.readouterr().err)


@pytest.mark.parametrize("script", [rl, sft])
def test_a_data_folder_without_the_splits_is_refused_and_nothing_is_written(script, tmp_path,
                                                                            capsys):
    """A typo'd or foreign --data folder: one error line, no built-in benchmark written there
    (it would train on it, silently, or fill a folder that is not the project's)."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    for folder in (tmp_path / "typo", tmp_path / "mine"):
        with pytest.raises(SystemExit) as exit:
            script.parse_args(["--data", str(folder)])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert (exit.value.code == 2
                and f"--data {folder}: no train.jsonl, test_id.jsonl, test_ood.jsonl" in err)
    assert not (tmp_path / "typo").exists() and os.listdir(tmp_path / "mine") == ["notes.txt"]


def run_cli(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("script, argv, message", [
    (rl, ["--resume", "--out", "runs/none", "--init", "runs/warm"], "no checkpoint to resume from"),
    (sft, ["--model", "no/such/model"], "no/such/model"),
    (evaluate, ["runs/none"], "runs/none"),
    (evaluate, ["runs/warm", "--data", "missing.jsonl"], "missing.jsonl: no such file"),
    (sft, ["--steps", "1", "--out", "data/hidden/train.jsonl"], "data/hidden/train.jsonl"),
    (sft, ["--replay", "0.2", "--steps", "1"], "no warm split to replay"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(warm, script, argv, message):
    with pytest.raises(SystemExit) as e:
        script.main(argv)
    assert (str(e.value.code).startswith("error: ") and message in e.value.code
            and "\n" not in e.value.code)


def test_the_command_line_itself_exits_with_one_line(warm):
    result = run_cli(os.path.join(ROOT, "rl.py"), "--resume", "--out", "runs/none", "--init",
                     "runs/warm", cwd=os.getcwd())
    assert result.returncode == 1
    assert (result.stderr.strip().splitlines()[-1]
            == "error: runs/none: no checkpoint to resume from")
    assert "Traceback" not in result.stderr


def test_llm_teacher_keeps_only_trajectories_that_reach_the_answer(warm):
    problems = tasks.benchmark(n_train=6, n_test=1, seed=5)["train"]
    kept = teacher.llm_records(warm, problems, samples=2, seed=0)
    assert len(kept) <= len(problems)
    for record in kept:
        assert tasks.is_correct(tasks.extract_answer(record["teacher"]["messages"][-1]["content"]),
                                record["answer"])
        # real tool outputs
        assert tasks.is_correct(teacher.replay(record["teacher"]["messages"]), record["answer"])
        assert (record["teacher"]["tools"]
                == [c["name"] for c in files.tool_calls(record["teacher"]["messages"])])
    # a model that cannot solve anything yields nothing, not wrong trajectories
    assert teacher.llm_records("runs/tiny", problems[:2], samples=1, seed=0) == []


@pytest.fixture(scope="module")
def forgetting(workdir):
    """The forgetting condition, small: hidden's splits, a warm split and test_retain."""
    for split, problems in tasks.benchmark("forgetting", n_train=200, n_test=8).items():
        files.write_jsonl(str(workdir / "data" / "forgetting" / f"{split}.jsonl"),
                          [teacher.record(p, teacher.trajectory(p)) for p in problems])
    return teacher.ensure_data("data/forgetting", "forgetting")


def test_sft_replays_the_warm_split_and_scores_a_held_out_validation_split(forgetting, warm,
                                                                          monkeypatch, capsys):
    batches, real = [], sft.train_step
    monkeypatch.setattr(sft, "train_step", lambda policy, opt, ids, mask:
                        batches.append(ids) or real(policy, opt, ids, mask))
    sft.train(sft.parse_args(["--condition", "forgetting", "--model", warm, "--steps", "3",
                              "--batch-size", "10", "--replay", "0.2", "--holdout", "20",
                              "--eval-every", "0", "--out", "runs/replay"]))
    _, tok = model.load(warm)
    records = {split: files.load_records(forgetting[split]) for split in ("train", "warm")}
    source = lambda row: next(split for split, recs in records.items()  # noqa: E731
                              for r in recs if r["question"] in tok.decode(row))
    for ids in batches:  # 8 of each 10 from the teacher's problems, 2 replayed
        assert [source(row) for row in ids] == ["train"] * 8 + ["warm"] * 2
    held_out = {r["question"] for r in records["train"][-20:]}
    assert not any(q in tok.decode(row) for ids in batches for row in ids for q in held_out)
    result = json.load(open("runs/replay/eval.json"))
    assert set(result) == {"ID", "OOD", "retain", "val"} and result["val"]["problems"] == 20
    assert set(result["retain"]["by_family"]) <= set(tasks.ID_FAMILIES)
    # the warm start learns the warm split besides its --limit of training problems
    class Counted(Exception):
        pass

    monkeypatch.setattr(sft, "train_step", lambda *args: (_ for _ in ()).throw(Counted()))
    with pytest.raises(Counted):
        sft.train(sft.parse_args(["--condition", "forgetting", "--traces", "demo", "--limit",
                                  "30", "--out", "runs/warm-forgetting"]))
    assert f"sft: {30 + len(records['warm'])} trajectories" in capsys.readouterr().out


def test_the_warm_start_gate_solves_training_problems_the_warm_start_never_saw(warm, monkeypatch):
    seen, real = [], evaluate.evaluate
    monkeypatch.setattr(evaluate, "evaluate", lambda policy, tokenizer, records:
                        seen.append((records, real(policy, tokenizer, records))) or seen[-1][1])
    # the fixture's: it trained on the first 64
    run = sft.parse_args(["--limit", "64", "--out", warm])
    solved = rl.warm_accuracy(run)
    assert ([records for records, _ in seen]
            == [files.load_records("data/hidden/train.jsonl")[64:164]])
    assert solved == seen[0][1]["accuracy"] and seen[0][1]["problems"] == 100


def test_compare_runs_every_method_over_seeds_and_reuses_finished_runs(warm, monkeypatch, capsys):
    import compare

    monkeypatch.setattr(rl, "WARM_START", ["--traces", "demo", "--limit", "32", "--steps", "4",
                                           "--eval-every", "0"])
    monkeypatch.setattr(rl, "WARM_GATE", 0.0)  # four steps solve nothing: no gate here
    # a barely trained student talks long: small steps and budgets
    for key, value in dict(prompts=4, group=2, minibatch=2, max_tokens=64).items():
        monkeypatch.setitem(rl.SETTINGS, key, value)
    argv = ["compare.py", "--conditions", "hidden", "--seeds", "2", "--rl-steps", "1",
            "--sft-steps", "2", "--out", "runs/cmp", "--methods", "sft-matched", "mentor"]
    monkeypatch.setattr(sys, "argv", argv)
    compare.main()
    out = capsys.readouterr().out
    for method in ("warm", "sft-matched", "mentor"):
        assert any(line.startswith(f"hidden        {method} ") and "±" in line
                   for line in out.splitlines()), method
    results = json.load(open("runs/cmp/results.json"))
    assert results["seeds"] == 2 and len(results["hidden"]["mentor"]["OOD_accuracy"]) == 2
    assert all(0 <= a <= 1 for a in results["hidden"]["sft-matched"]["ID_accuracy"])
    assert set(results["hidden"]["mentor"]["by_family"]) == {"packing", "heights", *tasks.HABIT_OOD}
    # the matched SFT saw the very problems the GRPO run of its seed drew, as many
    sft_args = json.load(open("runs/cmp/hidden/sft-matched-s1/args.json"))
    rl_args = json.load(open("runs/cmp/hidden/mentor-s1/args.json"))
    assert sft_args["matched"] and sft_args["seed"] == rl_args["seed"] == 1
    assert (sft_args["steps"], sft_args["batch_size"]) == (rl_args["steps"], rl_args["prompts"])
    # a second call trains nothing again: every run folder already has its eval.json
    stamp = os.path.getmtime("runs/cmp/hidden/mentor-s1/eval.json")
    compare.main()
    assert os.path.getmtime("runs/cmp/hidden/mentor-s1/eval.json") == stamp


def test_the_starting_evaluation_is_reused_only_for_the_same_problems_and_limits(tmp_path,
                                                                                 monkeypatch):
    problems = [{"id": str(i), "question": f"What is {i} + 1?", "answer": str(i + 1)}
                for i in range(4)]
    splits = {"ID": problems[:2], "OOD": problems[2:]}
    saved = {name: {"data": evaluate.fingerprint(recs), "limits": [5, 256], "accuracy": 0.5}
             for name, recs in splits.items()}
    files.write_json(str(tmp_path / "eval.json"), saved)
    monkeypatch.setattr(evaluate, "evaluate_splits", lambda *args: "evaluated now")
    args = rl.parse_args(["--max-tokens", "256"])
    assert rl.starting_eval(str(tmp_path), None, None, splits, args) == saved
    swapped = {"ID": splits["OOD"], "OOD": splits["ID"]}  # same sizes, other problems
    assert rl.starting_eval(str(tmp_path), None, None, swapped, args) == "evaluated now"
    assert rl.starting_eval(str(tmp_path), None, None, splits,
                            rl.parse_args(["--max-tokens", "64"])) == "evaluated now"


def test_micro_batches_change_memory_not_the_update(warm):
    logs, weights = [], []
    for micro in ("8", "1"):
        out = f"runs/micro{micro}"
        # an entropy bonus: a gradient well above rounding even where every group's rewards tie
        rl.train(rl.parse_args(RL_FLAGS + ["--steps", "2", "--micro-batch", micro, "--out", out,
                                           "--entropy-coef", "0.05"]))
        logs.append(read_log(f"{out}/metrics.jsonl"))
        weights.append(model.load(out)[0].state_dict())
    for a, b in zip(*logs):  # the gradient's norm (before clipping) sees any change of scale
        assert a["grad_norm"] > 1e-3 and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7)
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[0])


@pytest.mark.parametrize("minibatch", ["2", "1"])
def test_old_logprobs_are_the_training_forward_before_the_first_update(warm, monkeypatch,
                                                                       minibatch):
    seen = []

    def recording(logp, old, *args):
        seen.append((logp.detach().clone(), old.clone()))
        return policy_loss(logp, old, *args)
    policy_loss = rl.policy_loss
    monkeypatch.setattr(rl, "policy_loss", recording)
    # an entropy bonus moves the policy even where every group's rewards tie
    rl.train(rl.parse_args(RL_FLAGS + ["--steps", "1", "--minibatch", minibatch,
                                       "--out", f"runs/old{minibatch}", "--entropy-coef", "0.05",
                                       "--lr", "0.01", "--warmup", "0"]))
    if minibatch == "2":  # one update a step: the ratio's old side is the update's own forward
        assert len(seen) == 1 and torch.equal(*seen[0])
    else:  # two updates: a no-grad pass before the first; the second sees the policy move
        assert len(seen) == 2
        assert torch.allclose(*seen[0], atol=1e-5)
        assert not torch.allclose(*seen[1], atol=1e-5)


def test_the_first_update_has_a_kl_of_exactly_zero(warm, monkeypatch):
    """The reference pass runs the updates' own micro-batches (a GPU's kernels may round
    otherwise on other shapes), so the policy, still the reference, scores the first update's
    rows the same to the last bit; the second update sees it move."""
    kls, groups = [], []

    def recording(logp, ref_logp):
        kl = kl_penalty(logp, ref_logp)
        kls.append(kl.detach())
        return kl
    kl_penalty, trim = rl.kl_penalty, rl.trim
    monkeypatch.setattr(rl, "kl_penalty", recording)
    monkeypatch.setattr(rl, "trim", lambda data, rows: groups.append(rows.tolist())
                        or trim(data, rows))
    rl.train(rl.parse_args(RL_FLAGS + ["--steps", "1", "--micro-batch", "2", "--out", "runs/kl0",
                                       "--entropy-coef", "0.05", "--lr", "0.01", "--warmup", "0"]))
    # two updates (one problem each) of two micro-batches (four rollouts); the reference pass,
    # the old-log-prob pass of the second update's rows, then the updates, in the same groups
    assert len(groups) == 4 + 2 + 4 and groups[:4] == groups[6:] and groups[4:6] == groups[2:4]
    assert len(kls) == 4
    assert all(torch.equal(kl, torch.zeros_like(kl)) for kl in kls[:2])
    assert max(kl.max().item() for kl in kls[2:]) > 0


def test_evaluations_use_the_runs_token_budget(warm, monkeypatch):
    budgets = []

    def recording(policy, tokenizer, records, **kwargs):
        budgets.append((kwargs["max_turns"], kwargs["max_tokens"]))
        return evaluate_one(policy, tokenizer, records[:1], **kwargs)
    evaluate_one = evaluate.evaluate
    monkeypatch.setattr(evaluate, "evaluate", recording)
    rl.train(rl.parse_args(RL_FLAGS + ["--steps", "2", "--eval-every", "1", "--max-tokens", "40",
                                       "--max-turns", "3", "--out", "runs/budget"]))
    # before (the warm start's eval.json has other limits), after step 1, after the last step;
    # two splits each
    assert budgets == [(3, 40)] * 6


def test_only_the_standard_evaluation_writes_eval_json():
    assert evaluate.parse_args(["runs/x"]).result_file == "eval.json"
    assert evaluate.parse_args(["runs/x", "--limit", "5"]).result_file == "eval-first5.json"
    assert evaluate.parse_args(["runs/x", "--data", "my/hard.jsonl",
                                "--max-turns", "2"]).result_file == (
        "eval-hard-turns2-tokens256.json")
