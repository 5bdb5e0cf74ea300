"""Supervised fine-tuning on the teacher's trajectories.

    python sft.py                      # the paper's SFT baseline: all teacher data
    python sft.py --limit 400 --steps 350 --out runs/warm   # rl.py's warm start (weak on purpose)

The loss is the next-token cross-entropy on the assistant's tokens only: not on the prompt,
not on tool responses (the student should learn to call tools, not to predict their output).
Writes runs/NAME/: the HF checkpoint, args.json, metrics.jsonl, eval.json.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
from tqdm import tqdm

import evaluate
import files
import model as student
import tasks
import teacher
import tools

# Every hyperparameter of a run, (tiny, real) side by side: the tiny built-in student learns from
# scratch and wants a large learning rate; a pretrained model only needs a gentle nudge.
SETTINGS = {
    #                tiny    real
    "steps":        (450,   500),
    "batch_size":   (32,    8),
    "lr":           (3e-3,  1e-5),
    "warmup":       (40,    20),   # linear, then a cosine decay to 10%
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Supervised fine-tuning on teacher trajectories.")
    ap.add_argument("--model", default=None,
                    help="HF model name or path (default: the built-in tiny student)")
    ap.add_argument("--condition", default="hidden", choices=tasks.CONDITIONS,
                    help="the built-in benchmark, written to data/CONDITION unless it is there")
    ap.add_argument("--data", default=None,
                    help="folder with train.jsonl, test_id.jsonl, test_ood.jsonl "
                         "(default: data/CONDITION)")
    ap.add_argument("--out", default="runs/sft", help="run folder")
    ap.add_argument("--traces", choices=["teacher", "demo"], default="teacher",
                    help="learn the teacher's trajectories, or the weak demonstrator's where a "
                         "record has them (the warm start that plays a pretrained student)")
    ap.add_argument("--limit", type=int, default=None,
                    help="train on the first N examples only (warm start)")
    ap.add_argument("--matched", action="store_true",
                    help="draw each step's batch as rl.py draws its problems "
                         "(same seed: the same problems)")
    ap.add_argument("--replay", type=float, default=0.0,
                    help="share of each batch drawn from the warm split, the warm start's "
                         "skills the teacher never shows (the forgetting condition's)")
    ap.add_argument("--holdout", type=int, default=0,
                    help="keep the last N training problems out of training and score them "
                         "(val): pick --steps and --lr on these, never on a test split")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup", type=int, default=None,
                    help="linear warm-up steps, then cosine decay to 10%%")
    ap.add_argument("--eval-every", type=int, default=200,
                    help="steps between evaluations (0: only at the end)")
    ap.add_argument("--eval-limit", type=int, default=100,
                    help="problems per split in periodic evaluations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    args = ap.parse_args(argv)
    for key, (tiny, real) in SETTINGS.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.model is None else real)
    if min(args.steps, args.batch_size, args.eval_limit,
           1 if args.limit is None else args.limit) < 1 or args.lr <= 0:
        ap.error("--steps, --batch-size, --eval-limit, --limit and --lr must be positive")
    if error := teacher.data_error(args.data):
        ap.error(error)
    args.data = args.data or os.path.join("data", args.condition)
    if min(args.warmup, args.eval_every, args.holdout) < 0:
        ap.error("--warmup, --eval-every and --holdout cannot be negative")
    if not 0 <= args.replay < 1:
        ap.error("--replay is a share of the batch: at least 0, below 1")
    return args


def lr_at(step: int, peak: float, warmup: int, steps: int, schedule: str = "cosine") -> float:
    """The learning rate of `step` (0-based): a linear warm-up over `warmup` steps, then
    constant, or a cosine decay to 10% of `peak` at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch(examples: list[tuple[list[int], list[int]]], pad_id: int,
          device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (ids, loss mask) pairs into tensors: ids and loss mask [B, T]."""
    T = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), T)
    for i, (x, m) in enumerate(examples):
        ids[i, :len(x)], mask[i, :len(m)] = torch.tensor(x), torch.tensor(m, dtype=torch.float)
    return ids.to(device), mask.to(device)


def train_step(policy, opt: torch.optim.Optimizer, ids: torch.Tensor,
               mask: torch.Tensor) -> tuple[float, float]:
    """One optimizer step of next-token cross-entropy on the tokens `mask` marks in the
    right-padded batch `ids`, the gradient's norm clipped to 1. Returns (loss, grad norm)."""
    logp = student.logprobs(policy, ids, mask)  # bf16 autocast on CUDA inside
    loss = -(logp * mask).sum() / mask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()
    return loss.item(), grad_norm.item()


def conversation(tokenizer, record: dict, messages: list[dict]) -> list[dict]:
    """A trajectory of `record` (its `messages`) behind the student's own prompt
    (student.prompt), so SFT trains on the very prompt that rollouts and evaluations start from."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return student.prompt(tokenizer, record["question"]) + messages[first:]


def trace(record: dict, demo: bool) -> list[dict] | None:
    """The messages SFT learns from a record: the demonstrator's where `demo` and it wrote
    one (the warm start's data), else the teacher's."""
    return (record["demo"] if demo and record["demo"] else record["teacher"])["messages"]


def train(args: argparse.Namespace) -> dict[str, dict]:
    """Run SFT as configured by `args`; returns the final evaluation per split."""
    torch.manual_seed(args.seed)
    paths = teacher.ensure_data(args.data, args.condition)
    records = files.load_records(paths["train"])
    splits = teacher.test_splits(paths)
    if args.holdout:
        records, splits["val"] = records[:-args.holdout], records[-args.holdout:]
    records = records[:args.limit]
    if args.replay and "warm" not in paths:
        raise files.DataError(f"{args.data}: no warm split to replay (the forgetting condition "
                              "has one)")
    # The warm split: skills the warm start learns and the teacher never shows (--replay keeps
    # them in SFT's batches).
    warm = files.load_records(paths["warm"]) if "warm" in paths else []
    if args.traces == "demo":
        records += warm
    traces = [trace(r, args.traces == "demo") for r in records]
    if not all(traces):
        raise files.DataError(f"{paths['train']}: records without trajectories (messages) "
                              "to learn from")
    if args.model is None:
        student.ensure_tiny()
    policy, tokenizer = student.load(args.model, device=args.device, compile=args.compile)
    encode = lambda r, t: student.encode(tokenizer, conversation(tokenizer, r, t),  # noqa: E731
                                         tools.schemas())
    examples = [encode(r, t) for r, t in zip(records, traces)]
    replays = [encode(r, trace(r, demo=True)) for r in warm if args.replay]
    n_replay = round(args.replay * args.batch_size)
    os.makedirs(args.out, exist_ok=True)
    files.write_json(os.path.join(args.out, "args.json"), vars(args))
    log = open(os.path.join(args.out, "metrics.jsonl"), "w")
    print(f"sft: {len(examples)} trajectories, "
          f"{sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M parameters, "
          f"{args.steps} steps of {args.batch_size}")

    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    draw = random.Random(args.seed)  # --matched: rl.py's draw of problems
    policy.train()
    bar = tqdm(range(args.steps), desc="sft")
    for step in bar:
        t0 = time.time()
        lr = lr_at(step, args.lr, args.warmup, args.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        size = args.batch_size - n_replay
        if args.matched:
            picks = draw.sample(range(len(examples)), size)
        else:
            picks = torch.randint(len(examples), (size,), generator=gen).tolist()
        chosen = [examples[i] for i in picks]
        if n_replay:  # drawn after the picks, so --replay 0 leaves every run as it was
            chosen += [replays[i] for i in torch.randint(len(replays), (n_replay,),
                                                         generator=gen).tolist()]
        loss, grad_norm = train_step(policy, opt, *batch(chosen, tokenizer.pad_token_id,
                                                         args.device))
        row = {"step": step + 1, "loss": loss, "grad_norm": grad_norm, "lr": lr,
               "step_time": time.time() - t0}
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            for name, m in evaluate.evaluate_splits(policy, tokenizer, splits,
                                                    args.eval_limit).items():
                row[f"{name}_accuracy"] = m["accuracy"]
        log.write(json.dumps(row) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{row['loss']:.3f}",
                        **{k: f"{v:.2f}" for k, v in row.items() if k.endswith("accuracy")})

    student.save(args.out, policy, tokenizer)
    final = evaluate.evaluate_splits(policy, tokenizer, splits, None)
    files.write_json(os.path.join(args.out, "eval.json"), final)
    log.write(json.dumps({"step": args.steps,
                          **{f"{n}_accuracy": m["accuracy"] for n, m in final.items()}}) + "\n")
    log.close()
    print(evaluate.table({args.out: final}))
    return final


def main(argv: list[str] | None = None) -> None:
    """The command line: train, or exit with one line saying what is wrong with the input."""
    args = parse_args(argv)
    try:
        train(args)
    except (files.DataError, student.ModelError, OSError) as e:  # OSError: e.g. --out names a file
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
