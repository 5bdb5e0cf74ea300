"""The hand-written GRPO loop: `python rl.py` is the project's main job.

    python rl.py                                 # tiny default, offline: data, warm start, MENTOR GRPO
    python rl.py --reward sparse                 # the same, with the outcome-only reward
    python rl.py --model Qwen/Qwen2.5-0.5B-Instruct   # one GPU, a real model

Each step: sample problems -> roll each out G times with the tools -> score every rollout
against the answer and the teacher's tool calls (reward.py) -> group-normalised advantages
-> clipped policy loss + kl_coef * KL to the frozen starting policy -> AdamW step.
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
import model as student
import reward
import tasks
import sft
import teacher
import tools

# Defaults that depend on the model size, in one place. The tiny student is trained from
# scratch, so it takes much larger steps than a pretrained model (the authors use 1e-6).
PROFILES = {
    "tiny": dict(steps=60, prompts=16, lr=1e-4, max_tokens=160, eval_every=20, eval_limit=100),
    "real": dict(steps=200, prompts=8, lr=1e-6, max_tokens=1024, eval_every=50, eval_limit=200),
}
WARM_START = ["--limit", "400", "--steps", "350", "--eval-every", "0"]  # sft.py flags of the tiny warm start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="GRPO with the MENTOR reward (or a baseline reward).")
    ap.add_argument("--model", default=None, help="HF model name or path (default: the built-in tiny student)")
    ap.add_argument("--init", default=None, help="checkpoint to start from (default: --model, or the tiny warm start)")
    ap.add_argument("--reward", default="mentor", choices=reward.MODES)
    ap.add_argument("--data", default="data")
    ap.add_argument("--out", default=None, help="run folder (default: runs/rl-REWARD)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--prompts", type=int, default=None, help="problems per step")
    ap.add_argument("--group", type=int, default=8, help="rollouts per problem (G)")
    ap.add_argument("--ppo-epochs", type=int, default=1)
    ap.add_argument("--minibatch", type=int, default=64, help="rollouts per optimizer step")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup", type=int, default=10,
                    help="steps of linear lr warm-up (Adam's first steps move every weight by ~lr), "
                         "then cosine decay to 10%% of --lr")
    ap.add_argument("--kl-coef", type=float, default=0.001)
    ap.add_argument("--clip-low", type=float, default=0.2)
    ap.add_argument("--clip-high", type=float, default=0.2)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-turns", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=None, help="token budget per rollout after the prompt")
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--eval-limit", type=int, default=None, help="problems per split in periodic evaluations")
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the policy (CUDA)")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (long sequences on a real model)")
    args = ap.parse_args(argv)
    for key, value in PROFILES["tiny" if args.model is None else "real"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.group < 2:
        ap.error("--group must be at least 2 (GRPO compares samples within a group)")
    if min(args.steps, args.prompts, args.minibatch, args.ppo_epochs, args.max_turns, args.max_tokens, args.save_every,
           args.eval_limit) < 1 or args.lr <= 0 or args.temperature <= 0:
        ap.error("--steps, --prompts, --minibatch, --ppo-epochs, --max-turns, --max-tokens, --save-every, "
                 "--eval-limit, --lr and --temperature must be positive")
    if min(args.warmup, args.eval_every, args.kl_coef, args.clip_low, args.clip_high) < 0:
        ap.error("--warmup, --eval-every, --kl-coef, --clip-low and --clip-high cannot be negative")
    args.out = args.out or f"runs/rl-{args.reward}"
    return args


# ------------------------------------------------------------------------------ the loss

def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(r - group mean) / (group std + eps), rewards laid out group by group, unbiased std.

    A group whose rewards are all equal carries no signal and gets exactly 0: its float32
    mean can be off by an ulp, and that error divided by (0 + eps) would push the whole
    group up or down (by -0.056 for eight rewards of 0.8)."""
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
    return adv.masked_fill((r == r[:, :1]).all(1, keepdim=True), 0.0).view(-1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO clipped surrogate. logp, old_logp, mask: [B, T]; advantages: [B], one per sequence.
    Returns (loss averaged over all unmasked tokens of the batch, fraction of those tokens clipped)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped, clipped = ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    n = mask.sum().clamp(min=1)
    loss = -(torch.minimum(unclipped, clipped) * mask).sum() / n
    clip_frac = ((clipped < unclipped).float() * mask).sum() / n
    return loss, clip_frac


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference), the low-variance "k3" estimator, clamped to [-10, 10]."""
    d = ref_logp - logp
    return (torch.exp(d) - d - 1).clamp(-10, 10)


# ------------------------------------------------------------------------------ the loop

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def batched_logprobs(policy, data: dict, size: int) -> torch.Tensor:
    """logprobs() of the whole batch, `size` rows at a time, without gradients."""
    with torch.no_grad():
        return torch.cat([student.logprobs(policy, data["ids"][i:i + size], data["attention_mask"][i:i + size])
                          for i in range(0, len(data["ids"]), size)])


def warm_start(args: argparse.Namespace) -> str:
    """The checkpoint RL starts from: --init, --model, or (tiny default) a short SFT on a
    small subset, so the student knows the format but has room to improve."""
    if args.init or args.model:
        return args.init or args.model
    warm = sft.parse_args(WARM_START + ["--out", "runs/warm", "--data", args.data, "--device", args.device])
    if not student.checkpoint_dir(warm.out):
        print(f"rl: no warm start yet; training one ({' '.join(WARM_START)})")
        sft.train(warm)
    return warm.out


def starting_eval(init: str, policy, tokenizer, splits: dict) -> dict:
    """The starting policy's test results: its run folder's eval.json when it has one on
    these very problems (a warm start shared by several runs is evaluated once), else evaluated now."""
    path = os.path.join(init, "eval.json")
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if all(saved.get(name, {}).get("data") == evaluate.fingerprint(recs) for name, recs in splits.items()):
            return saved
    return sft.evaluate_splits(policy, tokenizer, splits, None)


def train(args: argparse.Namespace) -> dict:
    """Run GRPO as configured; returns {"before": eval, "after": eval} on the test splits."""
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    paths = teacher.ensure_data(args.data)
    train_set = teacher.load_records(paths["train"], need_teacher=args.reward != "sparse")
    splits = {name: teacher.load_records(paths[split], need_teacher=False)
              for name, split in (("ID", "test_id"), ("OOD", "test_ood"))}
    if len(train_set) < args.prompts:
        raise teacher.DataError(f"{paths['train']}: {len(train_set)} problems, fewer than --prompts {args.prompts}")
    state = None
    if args.resume:
        ckpt = student.checkpoint_dir(args.out)
        if not ckpt or not os.path.isfile(os.path.join(ckpt, "trainer_state.pt")):
            raise student.ModelError(f"{args.out}: no checkpoint to resume from")
        state = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=False)
        if state["reward"] != args.reward or (args.init or args.model or state["init"]) != state["init"]:
            raise student.ModelError(f"{args.out} was trained with --reward {state['reward']} from {state['init']}; "
                                     "resume it with the same")
    init = state["init"] if state else warm_start(args)
    policy, tokenizer = student.load(args.out if args.resume else init, device=args.device, compile=args.compile)
    ref, _ = student.load(init, device=args.device)  # the frozen starting policy, also after a resume
    ref.requires_grad_(False).eval()
    if args.grad_ckpt:
        policy.activation_checkpointing_enable()  # transformers 5 name of gradient checkpointing
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = 0
    if state:
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])  # the mini-batch shuffles, as in an uninterrupted run
    os.makedirs(args.out, exist_ok=True)
    evaluate.write_json(os.path.join(args.out, "args.json"), vars(args))
    metrics = os.path.join(args.out, "metrics.jsonl")
    if state and os.path.isfile(metrics):  # steps logged after the checkpoint will run again: drop their rows
        with open(metrics) as f:
            rows = [line for line in f if line.endswith("\n") and json.loads(line)["step"] <= start]
        teacher.write_atomic(metrics, "".join(rows))
    log = open(metrics, "a" if state else "w")
    before = state["before"] if state else starting_eval(init, policy, tokenizer, splits)
    G, pad = args.group, tokenizer.pad_token_id

    bar = tqdm(range(start, args.steps), desc=f"rl {args.reward}", initial=start, total=args.steps)
    for step in bar:
        t0 = time.time()
        for group in opt.param_groups:  # warm-up, then a cosine decay so late steps drift less
            group["lr"] = sft.lr_at(step, args)
        # 1. Roll out G conversations per problem with the current policy.
        problems = random.sample(train_set, args.prompts)
        policy.eval()
        with torch.no_grad():  # rollout and logprobs run under bf16 autocast on CUDA themselves
            rollouts = student.rollout(policy, tokenizer, [tasks.prompt(p["question"]) for p in problems],
                                       tools.schemas(), n=G, max_turns=args.max_turns, max_tokens=args.max_tokens,
                                       temperature=args.temperature, seed=args.seed * 1_000_003 + step)
        t_roll = time.time()
        # 2. Score each rollout against its problem's answer and teacher trajectory.
        scores = [reward.score_rollout(r, p, args.reward)
                  for r, p in zip(rollouts, [p for p in problems for _ in range(G)])]
        rewards = torch.tensor([s["reward"] for s in scores])
        adv = grpo_advantages(rewards, G)
        data = {k: v.to(args.device) for k, v in student.collate(rollouts, pad).items()}
        ref_logp = batched_logprobs(ref, data, args.minibatch)
        # 3. Clipped policy-gradient updates on mini-batches, KL to the reference as a loss term.
        policy.train()
        adv = adv.to(args.device)
        stats = {"loss": [], "kl": [], "entropy": [], "clip_frac": [], "grad_norm": []}
        for epoch in range(args.ppo_epochs):
            for idx in torch.randperm(len(rollouts)).split(args.minibatch):
                idx = idx.to(args.device)
                mask = data["loss_mask"][idx]
                logp, entropy = student.logprobs(policy, data["ids"][idx], data["attention_mask"][idx], with_entropy=True)
                pg, clip_frac = policy_loss(logp.float(), data["old_logprobs"][idx], adv[idx], mask,
                                            args.clip_low, args.clip_high)
                kl = masked_mean(kl_penalty(logp.float(), ref_logp[idx].float()), mask)
                loss = pg + args.kl_coef * kl
                if not torch.isfinite(loss):
                    tqdm.write(f"step {step + 1}: non-finite loss ({loss.item()}), update skipped")
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                if not torch.isfinite(grad_norm):
                    tqdm.write(f"step {step + 1}: non-finite gradient, update skipped")
                    continue
                opt.step()
                for key, value in [("loss", loss), ("kl", kl), ("entropy", masked_mean(entropy.float(), mask)),
                                   ("clip_frac", clip_frac), ("grad_norm", grad_norm)]:
                    stats[key].append(value.item())

        # 4. Log what happened; evaluate and save now and then.
        sampled = sum(sum(r.mask) for r in rollouts)
        spread = rewards.view(-1, G)
        row = {"step": step + 1, "reward": rewards.mean().item(), "reward_std": rewards.std().item(),
               **{k: sum(float(s[k]) for s in scores) / len(scores)
                  for k in ("correct", "tool_match", "invalid_calls", "has_answer", "finished", "calls")},
               "zero_var_groups": (spread.std(1) == 0).float().mean().item(),
               "invalid_call_rate": sum(s["invalid_calls"] for s in scores) / max(1, sum(s["calls"] for s in scores)),
               "truncated": 1 - sum(r.finished for r in rollouts) / len(rollouts),
               "response_tokens": sampled / len(rollouts),
               **{k: (sum(v) / len(v) if v else float("nan")) for k, v in stats.items()},
               "lr": opt.param_groups[0]["lr"], "rollout_time": t_roll - t0, "step_time": time.time() - t0, "tokens_per_s": sampled / (t_roll - t0)}
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            for name, m in sft.evaluate_splits(policy, tokenizer, splits, args.eval_limit).items():
                row[f"{name}_accuracy"] = m["accuracy"]
        log.write(json.dumps(row) + "\n")
        log.flush()
        bar.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row['correct']:.2f}", kl=f"{row['kl']:.4f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            student.save(args.out, policy, tokenizer, state={
                "step": step + 1, "optimizer": opt.state_dict(), "python_rng": random.getstate(),
                "torch_rng": torch.get_rng_state(), "init": init, "reward": args.reward, "before": before})

    after = sft.evaluate_splits(policy, tokenizer, splits, None)
    evaluate.write_json(os.path.join(args.out, "eval.json"), after)
    log.close()
    print(evaluate.table({f"before ({init})": before, f"after ({args.out})": after}))
    for name in after:
        print(f"{name} accuracy: {before[name]['accuracy']:.1%} -> {after[name]['accuracy']:.1%}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    args = parse_args()
    try:
        train(args)
    except (teacher.DataError, student.ModelError, OSError) as e:  # OSError: e.g. --out names a file
        sys.exit(f"error: {e}")
