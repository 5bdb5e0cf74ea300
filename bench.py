"""Benchmarks: `python bench.py` times rollout sampling against transformers' generate,
and one GRPO step of rl.py at a fixed setting.

Both sample single-turn completions of the same prompt, batch 64, with the same model (the
tiny default unless --model) and the same limits, timed in alternating calls after a
warm-up. Throughput counts sampled tokens only: up to and including each row's EOS (what
generate computes after a row's EOS is padding, not samples).

The GRPO step is rl.py's at 8 prompts x 8 samples and up to 100 new tokens per rollout
(one tool turn at most, so every trainer compares on the same work): rollout, reward,
reference log-probs and the update (policy log-probs, loss, backward, AdamW), each timed;
the fastest of the repeats is shown.
"""
import argparse
import sys
import time
from statistics import median

import torch

import files
import model as student
import reward
import rl
import tasks
import teacher
import tools

QUESTION = "A box holds 113 pens. How many pens are in 18 boxes?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (sys.argv when `argv` is None); bad values exit through ap.error."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="HF model name or folder (default: the tiny default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64, help="samples of the prompt per call")
    ap.add_argument("--max-tokens", type=int, default=128, help="new tokens per sample, at most")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7, help="timed calls of each (the rollout bench alternates them)")
    ap.add_argument("--skip-generate", action="store_true", help="only time the GRPO step")
    # Tiny models gain nothing from more threads, and on a shared machine OpenMP threads that
    # wait for a busy core make every step many times slower; 0 keeps torch's default.
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if min(args.batch, args.max_tokens, args.repeats) < 1:
        ap.error("--batch, --max-tokens and --repeats must be positive")
    if min(args.warmup, args.threads) < 0:
        ap.error("--warmup and --threads cannot be negative")
    return args


def sync(device: str) -> None:
    """Wait for the GPU's queued work, so a timer reads what it did (nothing on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rate(fn, device: str) -> float:
    """Tokens per second of one call of fn(), which returns the tokens it sampled."""
    sync(device)
    start = time.perf_counter()
    tokens = fn()
    sync(device)
    return tokens / (time.perf_counter() - start)


def bench_rollout(args) -> None:
    """Sampled tokens per second: model.rollout against model.generate, side by side.

    The two alternate, call by call, and the ratio is the median over those pairs: on a
    shared machine the speed drifts by 20-30% within a minute, and timing all of one method
    before the other would put that drift into the ratio."""
    policy, tokenizer = student.load(args.model, args.device)
    prompt = tasks.prompt(QUESTION, not student.is_tiny(tokenizer))
    prompt_ids, _ = student.encode(tokenizer, prompt, tools.schemas())
    eos = tokenizer.eos_token_id

    def ours() -> int:
        runs = student.rollout(policy, tokenizer, [prompt], tools.schemas(), n=args.batch, max_turns=1,
                               max_tokens=args.max_tokens)
        return sum(sum(r.mask) for r in runs)

    @torch.inference_mode()
    def generate() -> int:
        ids = torch.tensor([prompt_ids] * args.batch, device=args.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda")):  # as rollout
            out = policy.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                  max_new_tokens=args.max_tokens, temperature=1.0, top_p=1.0, top_k=0,
                                  eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1]:]
        # Each row's tokens up to and including its first EOS; rows without EOS run to the end.
        is_eos = (out == eos).int()
        return int(torch.where(is_eos.any(1), is_eos.argmax(1) + 1, out.shape[1]).sum())

    print(f"rollout vs generate: batch {args.batch}, up to {args.max_tokens} new tokens, "
          f"prompt {len(prompt_ids)} tokens, {args.device}, {torch.get_num_threads()} thread(s), "
          f"{args.repeats} alternating pairs")
    for _ in range(args.warmup):
        ours(), generate()
    pairs = [(rate(ours, args.device), rate(generate, args.device)) for _ in range(args.repeats)]
    for name, rates in [("model.rollout", sorted(o for o, _ in pairs)), ("model.generate", sorted(g for _, g in pairs))]:
        print(f"  {name:15s} {median(rates):8.0f} tokens/s (median; range {rates[0]:.0f}-{rates[-1]:.0f})")
    ratios = sorted(o / g for o, g in pairs)
    print(f"  ratio {median(ratios):.2f}x (median of pairs; range {ratios[0]:.2f}-{ratios[-1]:.2f}x)")


def bench_step(args) -> None:
    """One GRPO step of rl.py (8 prompts x 8 samples, <= 100 new tokens), timed by phase."""
    policy, tokenizer = student.load(args.model, args.device)
    ref, _ = student.load(args.model, args.device)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    data = rl.parse_args([]).data  # rl.py's default data (the built-in benchmark)
    problems = files.load_records(teacher.ensure_data(data)["train"])[:8]
    prompts = [tasks.prompt(p["question"], not student.is_tiny(tokenizer)) for p in problems]

    def step(seed: int) -> dict[str, float]:
        times, t = {}, time.perf_counter()
        policy.eval()
        with torch.no_grad():
            rollouts = student.rollout(policy, tokenizer, prompts, tools.schemas(), n=8, max_turns=2,
                                       max_tokens=100, seed=seed)
        sync(args.device)
        times["rollout"], t = time.perf_counter() - t, time.perf_counter()
        rewards = torch.tensor([reward.score_rollout(r, p)["reward"]
                                for r, p in zip(rollouts, [p for p in problems for _ in range(8)])])
        adv = rl.grpo_advantages(rewards, 8).to(args.device)
        data = {k: v.to(args.device) for k, v in student.collate(rollouts, tokenizer.pad_token_id).items()}
        times["reward"], t = time.perf_counter() - t, time.perf_counter()
        ref_logp = rl.batched_logprobs(ref, data, torch.arange(64, device=args.device), 64, 1.0)
        sync(args.device)
        times["ref logprobs"], t = time.perf_counter() - t, time.perf_counter()
        policy.train()
        logp = student.logprobs(policy, data["ids"], data["attention_mask"])
        mask = data["loss_mask"]
        per_token = rl.policy_loss(logp, logp.detach(), adv)[0] + 0.001 * rl.kl_penalty(logp, ref_logp)
        loss = rl.token_sum(per_token, mask) / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(args.device)
        times["update"] = time.perf_counter() - t
        times["sampled tokens"] = sum(sum(r.mask) for r in rollouts)
        return times

    for i in range(args.warmup):
        step(i)
    runs = [step(args.warmup + i) for i in range(args.repeats)]
    best = min(runs, key=lambda r: sum(v for k, v in r.items() if k != "sampled tokens"))
    total = sum(v for k, v in best.items() if k != "sampled tokens")
    print(f"GRPO step: 8 prompts x 8 samples, <= 100 new tokens, {args.device}, {torch.get_num_threads()} thread(s)")
    for name, seconds in best.items():
        if name != "sampled tokens":
            print(f"  {name:15s} {seconds:6.2f} s  {seconds / total:5.1%}")
    print(f"  {'step':15s} {total:6.2f} s  ({best['sampled tokens']} sampled tokens)")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        if args.model is None:
            teacher.ensure_tiny()
        if not args.skip_generate:
            bench_rollout(args)
        bench_step(args)
    except (files.DataError, student.ModelError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
