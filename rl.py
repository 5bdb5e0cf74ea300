"""The hand-written GRPO loop: `python rl.py` is the project's main job.

    python rl.py                         # tiny default, offline: data, warm start, MENTOR GRPO
    python rl.py --reward sparse         # the same, with the outcome-only reward
    python rl.py --model Qwen/Qwen2.5-1.5B-Instruct   # one GPU, the authors' recipe

Each step, in five stages: (1) sample problems and roll each out G times with the tools;
(2) score every rollout against the answer and the teacher's tools (reward.py) and turn the
scores into group-relative advantages; (3) take the log-probs of the frozen reference and of
the policy before the update; (4) PPO updates on mini-batches of whole groups: clipped policy
loss + k3 KL to the reference - entropy bonus, AdamW; (5) log, evaluate, save.
"""
import argparse
import json
import os
import random
import sys
import time

import torch
from tqdm import tqdm

import evaluate
import files
import memory
import model as student
import plot
import reward
import sft
import tasks
import teacher
import tools

# ----------------------------------------------------------------------------- settings
# Every hyperparameter of a run, in the README recipe's order: (tiny, real), or one value for
# both. "tiny" is the built-in student, trained from scratch: larger steps, plain sampling.
# "real" is the authors' recipe (their verl run of Qwen2.5-7B-Instruct) where one GPU allows
# it; the README lists where it differs. A flag on the command line overrides its row.
SETTINGS = {
    #                 tiny       real
    "steps":         (60,        200),
    "prompts":       (16,        32),          # problems per step
    "group":         (8,         10),          # rollouts per problem (G)
    "minibatch":     8,                        # problems per update: prompts / minibatch a step
    "ppo_epochs":    1,
    "lr":            (1e-4,      1e-6),
    "beta2":         (0.99,      0.999),       # AdamW (beta1 0.9)
    "weight_decay":  (0.0,       0.01),
    "lr_schedule":   ("cosine",  "constant"),  # after the warm-up
    "warmup":        (10,        0),
    "clip_low":      0.2,
    "clip_high":     0.2,
    "dual_clip":     3.0,                      # bound on the loss of a negative advantage (c)
    "kl_coef":       0.001,
    "entropy_coef":  (0.0,       0.001),
    "temperature":   (1.0,       0.6),
    "top_k":         (0,         20),          # 0: every token
    "top_p":         (1.0,       0.99),
    "max_tokens":    (256,       2048),        # per rollout, after the prompt (authors: 8192)
    "max_turns":     5,
    "micro_batch":   (16,        4),           # rollouts per forward/backward (memory only)
    "eval_every":    (20,        50),
    "eval_limit":    (100,       200),         # problems per split in periodic evaluations
}
# sft.py flags of the tiny warm start: a short SFT on the weak demonstrator's trajectories,
# which plays the pretrained student (it knows the format and has habits to unlearn).
WARM_START = ["--traces", "demo", "--limit", "400", "--steps", "350", "--eval-every", "0"]
# A pretrained student already solves most problems of its kind: the warm start must solve
# this share of 100 training problems it never trained on (greedy), or it is drawn again
# (another order of its data). Measured on training problems, never on a test split.
WARM_GATE = 0.6
REDRAW = 1000  # the second draw's SFT seed: the run's seed + REDRAW


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (sys.argv when `argv` is None), SETTINGS filling what it leaves
    unset; bad values exit through ap.error with one line (check)."""
    ap = argparse.ArgumentParser(description="GRPO with the MENTOR reward (or a baseline reward).")
    # what to train, from where, on what
    ap.add_argument("--model", default=None,
                    help="HF model name or path (default: the built-in tiny student)")
    ap.add_argument("--init", default=None,
                    help="checkpoint to start from (default: --model, or the tiny warm start)")
    ap.add_argument("--reward", default="mentor", choices=reward.MODES)
    ap.add_argument("--condition", default="hidden", choices=tasks.CONDITIONS,
                    help="the built-in benchmark, written to data/CONDITION unless it is there")
    ap.add_argument("--data", default=None, help="folder with train.jsonl, test_id.jsonl, "
                                                 "test_ood.jsonl (default: data/CONDITION)")
    ap.add_argument("--out", default=None, help="run folder (default: runs/rl-REWARD)")
    # the hyperparameters: SETTINGS has their values and what they mean
    for key, value in SETTINGS.items():
        tiny, real = value if isinstance(value, tuple) else (value, value)
        flag, default = "--" + key.replace("_", "-"), f"default {tiny}" + (
            "" if tiny == real else f", with --model {real}")
        if isinstance(tiny, str):
            ap.add_argument(flag, choices=["cosine", "constant"], help=default)
        else:
            ap.add_argument(flag, type=type(tiny), help=default)
    ap.add_argument("--rollout-batch", type=int, default=None,
                    help="problems per rollout call (default: a step's; fewer saves KV memory)")
    # checkpoints, hardware
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--resume", action="store_true",
                    help="continue from the run folder's last checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the policy (CUDA)")
    ap.add_argument("--grad-ckpt", action="store_true",
                    help="gradient checkpointing (long sequences on a real model)")
    args = ap.parse_args(argv)
    for key, value in SETTINGS.items():
        if getattr(args, key) is None:
            real = args.model is not None
            setattr(args, key, value[real] if isinstance(value, tuple) else value)
    args.rollout_batch = args.rollout_batch or args.prompts
    check(ap, args)
    args.data = args.data or os.path.join("data", args.condition)
    args.out = args.out or f"runs/rl-{args.reward}"
    return args


def check(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through ap.error, with one line, on a value the run cannot use."""
    if args.group < 2:
        ap.error("--group must be at least 2 (GRPO compares samples within a group)")
    counts = ("steps", "prompts", "minibatch", "micro_batch", "rollout_batch", "ppo_epochs",
              "max_turns", "max_tokens", "save_every", "eval_limit")
    if min(getattr(args, k) for k in counts) < 1 or min(args.lr, args.temperature) <= 0:
        ap.error(", ".join("--" + k.replace("_", "-") for k in counts) + ", --lr and --temperature "
                 "must be positive")
    rates = ("warmup", "eval_every", "kl_coef", "entropy_coef", "clip_low", "clip_high", "top_k",
             "weight_decay")
    if min(getattr(args, k) for k in rates) < 0:
        ap.error(", ".join("--" + k.replace("_", "-") for k in rates) + " cannot be negative")
    if not 0 < args.top_p <= 1 or not 0 <= args.beta2 < 1 or args.dual_clip <= 1:
        ap.error("--top-p must be in (0, 1], --beta2 in [0, 1) and --dual-clip above 1")
    if args.prompts % args.minibatch:
        ap.error(f"--prompts ({args.prompts}) must be a multiple of --minibatch ({args.minibatch})")
    if error := teacher.data_error(args.data):
        ap.error(error)


# ------------------------------------------------------------------------------ the loss

def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(r - group mean) / (group std + eps), rewards laid out group by group, unbiased std.

    GRPO needs no value network: a rollout's baseline is the mean of the G rollouts of its
    own problem, and dividing by their spread puts easy and hard problems on one scale. A
    group whose rewards are all equal carries no signal and gets exactly 0 (not the rounding
    error of its mean divided by eps)."""
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
    return adv.masked_fill((r == r[:, :1]).all(1, keepdim=True), 0.0).view(-1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2,
                dual_clip: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO clipped surrogate with dual clip, per token. logp, old_logp: [B, T];
    advantages: [B], one per sequence (every token of a rollout shares its group-relative
    advantage). Returns (loss [B, T], clipped [B, T]: 1.0 where the ratio's clip was active).

    The clip keeps an update from moving a token's probability far from the policy that
    sampled it; the dual clip (verl's clip_ratio_c) also bounds the loss of a negative
    advantage by -c * A, so one token whose ratio exploded cannot dominate the batch."""
    ratio = torch.exp((logp - old_logp).clamp(-20, 20))
    adv = advantages[:, None]
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return loss, (clipped > unclipped).float()


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference), the "k3" estimator exp(d) - d - 1 with
    d = log ref - log policy: unbiased, always >= 0, and of low variance where the two
    policies are close (verl's low_var_kl). d is clamped to [-20, 20] before exp, which would
    overflow to inf past 88 (and 0 x inf is NaN in the backward, even where the mask is 0),
    and the result to [-10, 10], in verl's order."""
    d = (ref_logp - logp).clamp(-20, 20)
    return (torch.exp(d) - d - 1).clamp(-10, 10)


def token_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum()


# ------------------------------------------------------------------------- the helpers

def micro_batches(lengths: torch.Tensor, rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The batch rows `rows` in micro-batches of `size`, longest first: rows of similar length
    share a micro-batch, so little of each is padding (one long rollout no longer pads
    a whole mini-batch to its length)."""
    if not len(rows):
        return []
    return list(rows[lengths[rows].argsort(descending=True, stable=True)].split(size))


def trim(data: dict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ids, loss mask and prompt lengths of batch rows `rows`, cut to their own longest
    sequence."""
    width = int(data["lengths"][rows].max())
    return data["ids"][rows, :width], data["loss_mask"][rows, :width], data["prompts"][rows]


def batched_logprobs(policy, data: dict, minibatches: list[torch.Tensor], size: int,
                     temperature: float) -> torch.Tensor:
    """logprobs() of the batch rows of `minibatches`, without gradients, in the micro-batches
    (`size` rows) that the updates of those mini-batches use: [B, T] like the batch, 0 in the
    other rows. The same rows in the same micro-batches run the same kernels on the same
    shapes, so a model scores them exactly as the update's forward does."""
    out = torch.zeros_like(data["loss_mask"])
    with torch.no_grad():
        for rows in minibatches:
            for micro in micro_batches(data["lengths"], rows, size):
                ids, mask, prompts = trim(data, micro)
                logp = student.logprobs(policy, ids, mask, temperature, prompts=prompts)
                out[micro, :ids.shape[1]] = logp
    return out


def rollout_rows(args: argparse.Namespace) -> int:
    """Conversations decoded at once: a rollout call's, and an evaluation's (the same memory)."""
    return args.rollout_batch * args.group


def rollout_stats(scores: list[dict], records: list[dict], group: int) -> dict:
    """What a step's rollouts did (their scores against their `records`): the means of the
    score fields, the share of groups whose rewards all tie (they teach nothing), and the
    share of rollouts that use exactly the teacher's tools, overall and on the problems where
    a habit would pick other ones."""
    rewards = torch.tensor([s["reward"] for s in scores])
    fields = ("correct", "tool_match", "same_tools", "invalid_calls", "has_answer", "finished",
              "calls")
    calls = sum(s["calls"] for s in scores)
    out = {"reward": rewards.mean().item(), "reward_std": rewards.std().item(),
           **{k: sum(float(s[k]) for s in scores) / len(scores) for k in fields},
           "zero_var_groups": (rewards.view(-1, group).std(1) == 0).float().mean().item(),
           "invalid_call_rate": sum(s["invalid_calls"] for s in scores) / max(1, calls)}
    habit = [s for s, r in zip(scores, records) if files.habit_differs(r)]
    if habit:
        out["same_tools_habit"] = sum(s["same_tools"] for s in habit) / len(habit)
    return out


def warm_start(args: argparse.Namespace) -> str:
    """The checkpoint RL starts from: --init, --model, or (tiny default) a short SFT on the
    demonstrator's trajectories of this data, trained once per data folder and seed and
    reused while its settings are the same (files.finished_run)."""
    if args.init or args.model:
        return args.init or args.model
    name = os.path.basename(os.path.normpath(args.data)) + (f"-s{args.seed}" if args.seed else "")
    warm = sft.parse_args(WARM_START + ["--out", f"runs/warm-{name}", "--condition", args.condition,
                                       "--data", args.data, "--seed", str(args.seed),
                                       "--device", args.device])
    return make_warm_start(warm)


def warm_draws(warm: argparse.Namespace) -> list[argparse.Namespace]:
    """The warm start `warm` (sft.py's flags) and its second draw: the same SFT from scratch
    with the data in another order (seed + REDRAW), into `warm.out`-redraw."""
    return [warm, argparse.Namespace(**{**vars(warm), "seed": warm.seed + REDRAW,
                                        "out": warm.out + "-redraw"})]


def make_warm_start(warm: argparse.Namespace) -> str:
    """Train the warm start `warm` (sft.py's flags) unless it is already there, and hold it to
    WARM_GATE; one that misses it is drawn again (warm_draws). Returns the folder of the first
    draw that passes; raises files.DataError when neither does."""
    draws = warm_draws(warm)
    for run in draws:
        if not files.finished_run(run):
            print(f"rl: training the warm start {run.out} ({run.steps} SFT steps, seed {run.seed})")
            sft.train(run)
        solved = warm_accuracy(run)
        if solved >= WARM_GATE:
            return run.out
        print(f"rl: the warm start {run.out} solves {solved:.0%} of 100 training problems it "
              f"never saw, below {WARM_GATE:.0%}")
    raise files.DataError(f"{warm.out}: no warm start reaches {WARM_GATE:.0%}, with seed "
                          f"{warm.seed} or {draws[1].seed}; try another --seed")


def warm_accuracy(warm: argparse.Namespace) -> float:
    """Greedy accuracy of the trained warm start on the 100 training problems after the
    --limit it trained on."""
    train_set = files.load_records(teacher.ensure_data(warm.data, warm.condition)["train"])
    policy, tokenizer = student.load(warm.out, device=warm.device)
    return evaluate.evaluate(policy, tokenizer, train_set[warm.limit:warm.limit + 100])["accuracy"]


def starting_eval(init: str, policy, tokenizer, splits: dict, args: argparse.Namespace) -> dict:
    """The starting policy's test results: its run folder's eval.json when it has one on
    these very problems and limits (a warm start shared by several runs is evaluated once),
    else evaluated now."""
    path = os.path.join(init, "eval.json")
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        wanted = [args.max_turns, args.max_tokens]
        if all(saved.get(name, {}).get("data") == evaluate.fingerprint(recs)
               and saved[name].get("limits") == wanted for name, recs in splits.items()):
            return saved
    return evaluate_all(policy, tokenizer, splits, args)


def evaluate_all(policy, tokenizer, splits: dict, args: argparse.Namespace,
                 limit: int | None = None) -> dict:
    """evaluate.evaluate_splits at the run's turn and token budgets and rollout batch."""
    return evaluate.evaluate_splits(policy, tokenizer, splits, limit, args.max_turns,
                                    args.max_tokens, rollout_rows(args))


def saved_state(args: argparse.Namespace) -> dict | None:
    """--resume: the trainer state of the run folder's checkpoint (step, optimizer, random
    states, where it started, its starting evaluation); None without --resume. Raises
    ModelError when there is none, or when it was trained with another reward or start."""
    if not args.resume:
        return None
    ckpt = student.checkpoint_dir(args.out)
    if not ckpt or not os.path.isfile(os.path.join(ckpt, "trainer_state.pt")):
        raise student.ModelError(f"{args.out}: no checkpoint to resume from")
    state = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=False)
    start = args.init or args.model or state["init"]
    if state["reward"] != args.reward or start != state["init"]:
        raise student.ModelError(f"{args.out} was trained with --reward {state['reward']} from "
                                 f"{state['init']}; resume it with the same")
    return state


# ------------------------------------------------------------------------------ the step

def clock(device: str) -> float:
    """Seconds on a monotonic clock, once the device's queued work is done (CUDA runs ahead of
    Python: without the wait, a phase's time would show up in the next one)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def grpo_step(policy, ref, opt, tokenizer, problems: list[dict], args: argparse.Namespace,
              step: int) -> dict:
    """Stages 1-4 of one GRPO step on `problems`, as configured by `args` (rl.py's flags),
    `step` seeding the samples. Returns the step's log row: what the rollouts did
    (rollout_stats), the per-token means of the loss terms, and the FLOPs and seconds of each
    phase ("<phase>_flops", "<phase>_time" for rollout, reward, ref, old, update; step_time)."""
    G, T, device = args.group, args.temperature, args.device
    t0 = clock(device)

    # 1. Roll out G conversations per problem with the current policy.
    policy.eval()
    rollouts = []
    for i in range(0, len(problems), args.rollout_batch):
        prompts = [student.prompt(tokenizer, p["question"])
                   for p in problems[i:i + args.rollout_batch]]
        rollouts += student.rollout(policy, tokenizer, prompts, tools.schemas(), n=G,
                                    max_turns=args.max_turns, max_tokens=args.max_tokens,
                                    temperature=T, top_k=args.top_k, top_p=args.top_p,
                                    seed=args.seed * 1_000_003 + step * 1009 + i)
    t_rollout = clock(device)

    # 2. Score each rollout; its advantage is how much better it did than its group's mean.
    records = [p for p in problems for _ in range(G)]
    scores = [reward.score_rollout(r, p, args.reward) for r, p in zip(rollouts, records)]
    adv = grpo_advantages(torch.tensor([s["reward"] for s in scores]), G).to(device)
    data = {k: v.to(device) for k, v in student.collate(rollouts, tokenizer.pad_token_id).items()}
    mask = data["loss_mask"]  # sampled tokens: the prompt and tool results are read, not learned
    t_reward = clock(device)

    # 3. Log-probs of the reference, and of the policy before this step's updates (the "old"
    # policy of the PPO ratio), from the training forward, not the sampler (its fast decode
    # differs in the last bits). The rows of the first update take theirs from that update's
    # own forward, detached: the policy has not moved yet. The others need a no-grad pass now.
    # Both passes go micro-batch by micro-batch as the first epoch's updates will, so at the
    # first update the policy, still the reference, gets a KL of exactly 0.
    updates = [[(groups[:, None] * G + torch.arange(G)).flatten().to(device)
                for groups in torch.randperm(len(problems)).split(args.minibatch)]
               for _ in range(args.ppo_epochs)]
    ref_logp = batched_logprobs(ref, data, updates[0], args.micro_batch, T)
    t_ref = clock(device)
    policy.train()
    old_logp = batched_logprobs(policy, data, updates[0][1:], args.micro_batch, T)
    later = torch.ones(len(rollouts), dtype=torch.bool, device=device)
    later[updates[0][0]] = False
    t_old = clock(device)

    # 4. PPO updates: mini-batches of whole groups; each loss is a token mean over the whole
    # mini-batch (every sampled token counts once, so long rollouts weigh more, as in the
    # authors' token-mean), built from micro-batches whose gradients add up to exactly the
    # mini-batch's.
    sums = dict.fromkeys(("loss", "pg_loss", "kl", "entropy", "clip_frac", "logprob_gap"), 0.0)
    grad_norms, skipped = [], 0
    for epoch, minibatches in enumerate(updates):
        for index, rows in enumerate(minibatches):
            n_tokens = mask[rows].sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            for micro in micro_batches(data["lengths"], rows, args.micro_batch):
                ids, m, prompts = trim(data, micro)
                width = ids.shape[1]
                logp, entropy = student.logprobs(policy, ids, m, T, with_entropy=True,
                                                 prompts=prompts)
                if epoch == index == 0:
                    old_logp[micro, :width] = logp.detach()
                old = old_logp[micro, :width]
                pg, clipped = policy_loss(logp, old, adv[micro], args.clip_low, args.clip_high,
                                          args.dual_clip)
                kl = kl_penalty(logp, ref_logp[micro, :width])
                bonus = entropy if args.entropy_coef else entropy.detach()  # no backward through 0
                loss = token_sum(pg + args.kl_coef * kl - args.entropy_coef * bonus, m) / n_tokens
                loss.backward()
                gap = (old - data["old_logprobs"][micro, :width]).abs()  # trainer vs sampler
                for key, value in [("loss", loss * n_tokens), ("pg_loss", pg), ("kl", kl),
                                   ("entropy", entropy), ("clip_frac", clipped),
                                   ("logprob_gap", gap)]:
                    sums[key] += (value if key == "loss" else token_sum(value, m)).item()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            if not torch.isfinite(grad_norm):  # a NaN or inf: skip rather than wreck the weights
                tqdm.write(f"step {step + 1}: non-finite gradient, update skipped")
                skipped += 1
                continue
            opt.step()
            grad_norms.append(grad_norm.item())
    t_update = clock(device)

    # The FLOPs of each phase (bench.py sets them against the hardware's): every pass, the
    # rollouts' and the training ones, reads each prompt once for its G samples.
    scored = mask.sum(1)
    flops = student.rollout_flops(policy, data["lengths"], data["prompts"], scored, G)
    passes = {"rollout": flops.sum(), "ref": flops.sum(), "old": flops[later.cpu()].sum(),
              "update": 3 * flops.sum() * args.ppo_epochs}  # a backward costs twice a forward
    sampled = scored.sum().item()
    return {**rollout_stats(scores, records, G), "response_tokens": sampled / len(rollouts),
            **{key: total / (sampled * args.ppo_epochs) for key, total in sums.items()},
            "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
            "skipped_updates": skipped, "tokens_per_s": sampled / (t_rollout - t0),
            **{f"{name}_flops": value.item() for name, value in passes.items()},
            "rollout_time": t_rollout - t0, "reward_time": t_reward - t_rollout,
            "ref_time": t_ref - t_reward, "old_time": t_old - t_ref,
            "update_time": t_update - t_old, "step_time": t_update - t0}


# ------------------------------------------------------------------------------ the loop

def train(args: argparse.Namespace) -> dict:
    """Run GRPO as configured; returns {"before": eval, "after": eval} on the test splits."""
    draw = random.Random(args.seed)  # the problems of each step (sft.py --matched draws the same)
    torch.manual_seed(args.seed)
    # Data: the training problems (with their teacher reference) and the test splits.
    paths = teacher.ensure_data(args.data, args.condition)
    train_set = files.load_records(paths["train"], need_teacher=args.reward != "sparse")
    splits = teacher.test_splits(paths)
    if len(train_set) < args.prompts:
        raise files.DataError(f"{paths['train']}: {len(train_set)} problems, "
                              f"fewer than --prompts {args.prompts}")

    # The policy, the frozen reference (the starting point, the KL's anchor) and the optimizer.
    state = saved_state(args)
    init = state["init"] if state else warm_start(args)
    questions = [p["question"] for p in train_set + sum(splits.values(), [])]
    memory.check(init, args, questions)  # or exit, naming the flags that would fit
    policy, tokenizer = student.load(args.out if state else init, args.device, compile=args.compile)
    ref, _ = student.load(init, device=args.device, frozen=True)
    if args.grad_ckpt:
        policy.activation_checkpointing_enable()  # transformers 5 name of gradient checkpointing
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, betas=(0.9, args.beta2),
                            weight_decay=args.weight_decay)

    # A resume restores the step, the optimizer and both random states, and drops the log rows
    # of steps after the checkpoint (they run again), so it continues as if never stopped.
    start, before = 0, None
    metrics = os.path.join(args.out, "metrics.jsonl")
    if state:
        start, before = state["step"], state["before"]
        opt.load_state_dict(state["optimizer"])
        draw.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        if os.path.isfile(metrics):
            with open(metrics) as f:
                rows = [line for line in f
                        if line.endswith("\n") and json.loads(line)["step"] <= start]
            files.write_atomic(metrics, "".join(rows))
    os.makedirs(args.out, exist_ok=True)
    # the folder it started from, resolved (the tiny warm start's): where plot.py finds step 0
    files.write_json(os.path.join(args.out, "args.json"), {**vars(args), "init": init})
    log = open(metrics, "a" if state else "w")
    before = before or starting_eval(init, policy, tokenizer, splits, args)

    bar = tqdm(range(start, args.steps), desc=f"rl {args.reward}", initial=start, total=args.steps)
    for step in bar:
        lr = sft.lr_at(step, args.lr, args.warmup, args.steps, args.lr_schedule)
        for group in opt.param_groups:
            group["lr"] = lr
        problems = draw.sample(train_set, args.prompts)
        row = {"step": step + 1, **grpo_step(policy, ref, opt, tokenizer, problems, args, step),
               "lr": lr}

        # 5. Log what happened; evaluate and save now and then.
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            for name, result in evaluate_all(policy, tokenizer, splits, args,
                                             args.eval_limit).items():
                row[f"{name}_accuracy"] = result["accuracy"]
        log.write(json.dumps(row) + "\n")
        log.flush()
        bar.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row['correct']:.2f}",
                        kl=f"{row['kl']:.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            student.save(args.out, policy, tokenizer, state={
                "step": step + 1, "optimizer": opt.state_dict(), "python_rng": draw.getstate(),
                "torch_rng": torch.get_rng_state(), "init": init, "reward": args.reward,
                "before": before})

    after = evaluate_all(policy, tokenizer, splits, args)
    files.write_json(os.path.join(args.out, "eval.json"), after)
    log.close()
    try:  # the run's curves, where matplotlib is installed
        plot.draw({args.out: {args.reward: plot.series(args.out)}},
                  os.path.join(args.out, "curves.png"))
    except ImportError:
        pass
    print(evaluate.table({f"before ({init})": before, f"after ({args.out})": after}))
    for name in after:
        print(f"{name} accuracy: {before[name]['accuracy']:.1%} -> {after[name]['accuracy']:.1%}")
    return {"before": before, "after": after}


def main(argv: list[str] | None = None) -> None:
    """The command line: train, or exit with one line saying what is wrong with the input."""
    args = parse_args(argv)
    try:
        train(args)
    except (files.DataError, student.ModelError, OSError) as e:  # OSError: e.g. --out names a file
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
