"""Benchmarks: `python bench.py` times rollout sampling against transformers' generate,
and one GRPO step of rl.py.

Both sample single-turn completions of the same prompt, batch 64, with the same model (the
tiny default unless --model) and the same limits, timed in alternating calls after a
warm-up. Throughput counts sampled tokens only: up to and including each row's EOS (what
generate computes after a row's EOS is padding, not samples).

The GRPO step is rl.py's, by default at 8 prompts x 8 samples and up to 100 new tokens per
rollout (one tool turn at most, so every trainer compares on the same work): rollout, reward,
reference log-probs and the update (policy log-probs in micro-batches, loss, backward, AdamW),
each timed; the fastest of the repeats is shown. On CUDA it also shows the step's peak memory
(max_memory_allocated, beside memory.estimate for the same settings) and the model FLOPs
utilization: ~2 x params FLOPs per token of a forward (sampled tokens in the rollout), ~6 x
params per token of the update (forward and backward; recomputation is not counted), over the
measured time and --peak-tflops (989: the dense bf16 peak of an H100 or H200 SXM).
"""
import argparse
import sys
import time
from statistics import median

import torch
from transformers import AutoConfig

import files
import memory
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
    ap.add_argument("--prompts", type=int, default=8, help="problems of the GRPO step")
    ap.add_argument("--group", type=int, default=8, help="samples per problem of the GRPO step")
    ap.add_argument("--step-tokens", type=int, default=100, help="new tokens per rollout of the GRPO step, at most")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="rollouts per forward/backward of the GRPO step (default: all at once)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the policy's training passes, as rl.py")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing, as rl.py")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the GPU's dense bf16 peak, for MFU (989: H100 and H200 SXM)")
    # Tiny models gain nothing from more threads, and on a shared machine OpenMP threads that
    # wait for a busy core make every step many times slower; 0 keeps torch's default.
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    args.micro_batch = args.micro_batch or args.prompts * args.group
    sizes = (args.batch, args.max_tokens, args.repeats, args.prompts, args.step_tokens, args.micro_batch)
    if min(sizes) < 1 or args.peak_tflops <= 0:
        ap.error("--batch, --max-tokens, --repeats, --prompts, --step-tokens, --micro-batch and --peak-tflops "
                 "must be positive")
    if args.group < 2:
        ap.error("--group must be at least 2 (GRPO compares samples within a group)")
    if min(args.warmup, args.threads) < 0:
        ap.error("--warmup and --threads cannot be negative")
    return args


def sync(device: str) -> None:
    """Wait for the GPU's queued work, so a timer reads what it did (nothing on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_params(policy) -> int:
    """Parameters that take part in a forward's matmuls: all but an untied input embedding
    (a lookup, no FLOPs); a tied one is the output projection too."""
    embedding = policy.get_input_embeddings().weight
    tied = embedding is policy.get_output_embeddings().weight
    return sum(p.numel() for p in policy.parameters()) - (0 if tied else embedding.numel())


def mfu(flops: float, seconds: float, args) -> str:
    """`flops` done in `seconds` as a share of the GPU's peak (--peak-tflops)."""
    return f"MFU {flops / seconds / (args.peak_tflops * 1e12):.1%}"


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
    cuda = args.device.startswith("cuda")
    for name, rates in [("model.rollout", sorted(o for o, _ in pairs)), ("model.generate", sorted(g for _, g in pairs))]:
        # A forward per sampled token: ~2 FLOPs per parameter.
        flops = f"; {mfu(2 * matmul_params(policy) * median(rates), 1.0, args)}" if cuda else ""
        print(f"  {name:15s} {median(rates):8.0f} tokens/s (median; range {rates[0]:.0f}-{rates[-1]:.0f}{flops})")
    ratios = sorted(o / g for o, g in pairs)
    print(f"  ratio {median(ratios):.2f}x (median of pairs; range {ratios[0]:.2f}-{ratios[-1]:.2f}x)")


def bench_step(args) -> None:
    """One GRPO step of rl.py (--prompts x --group rollouts, <= --step-tokens new tokens),
    timed by phase; on CUDA with its peak memory and MFU."""
    policy, tokenizer = student.load(args.model, args.device, compile=args.compile)
    ref, _ = student.load(args.model, args.device, frozen=True)
    if args.grad_ckpt:
        policy.activation_checkpointing_enable()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    data = rl.parse_args([]).data  # rl.py's default data (the built-in benchmark)
    problems = files.load_records(teacher.ensure_data(data)["train"])[:args.prompts]
    prompts = [tasks.prompt(p["question"], not student.is_tiny(tokenizer)) for p in problems]
    G, cuda = args.group, args.device.startswith("cuda")

    def step(seed: int) -> dict[str, float]:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times, t = {}, time.perf_counter()
        policy.eval()
        with torch.no_grad():
            rollouts = student.rollout(policy, tokenizer, prompts, tools.schemas(), n=G, max_turns=2,
                                       max_tokens=args.step_tokens, seed=seed)
        sync(args.device)
        times["rollout"], t = time.perf_counter() - t, time.perf_counter()
        rewards = torch.tensor([reward.score_rollout(r, p)["reward"]
                                for r, p in zip(rollouts, [p for p in problems for _ in range(G)])])
        adv = rl.grpo_advantages(rewards, G).to(args.device)
        data = {k: v.to(args.device) for k, v in student.collate(rollouts, tokenizer.pad_token_id).items()}
        times["reward"], t = time.perf_counter() - t, time.perf_counter()
        every = torch.arange(len(rollouts), device=args.device)
        ref_logp = rl.batched_logprobs(ref, data, every, args.micro_batch, 1.0)
        sync(args.device)
        times["ref logprobs"], t = time.perf_counter() - t, time.perf_counter()
        policy.train()
        mask = data["loss_mask"]
        opt.zero_grad()
        for micro in every.split(args.micro_batch):  # gradients add up to the whole batch's, as in rl.py
            ids, attention = rl.trim(data, micro)
            logp = student.logprobs(policy, ids, attention)
            per_token = rl.policy_loss(logp, logp.detach(), adv[micro])[0] + 0.001 * rl.kl_penalty(
                logp, ref_logp[micro, :ids.shape[1]])
            (rl.token_sum(per_token, mask[micro, :ids.shape[1]]) / mask.sum()).backward()
        opt.step()
        sync(args.device)
        times["update"] = time.perf_counter() - t
        times["sampled tokens"] = sum(sum(r.mask) for r in rollouts)
        times["tokens"] = data["attention_mask"].sum().item()
        times["peak memory"] = torch.cuda.max_memory_allocated() if cuda else 0
        return times

    for i in range(args.warmup):
        step(i)
    runs = [step(args.warmup + i) for i in range(args.repeats)]
    phases = ("rollout", "reward", "ref logprobs", "update")
    best = min(runs, key=lambda r: sum(r[k] for k in phases))
    total = sum(best[k] for k in phases)
    # Model FLOPs of each phase: a forward per sampled token, a forward per token of the
    # reference pass, a forward and a backward per token of the update.
    P = matmul_params(policy)
    flops = {"rollout": 2 * P * best["sampled tokens"], "reward": 0, "ref logprobs": 2 * P * best["tokens"],
             "update": 6 * P * best["tokens"]}
    print(f"GRPO step: {args.prompts} prompts x {G} samples, <= {args.step_tokens} new tokens, micro-batch "
          f"{args.micro_batch}, {args.device}, {torch.get_num_threads()} thread(s)")
    for name in phases:
        extra = f"  {mfu(flops[name], best[name], args)}" if cuda and flops[name] else ""
        print(f"  {name:15s} {best[name]:6.2f} s  {best[name] / total:5.1%}{extra}")
    print(f"  {'step':15s} {total:6.2f} s  ({best['sampled tokens']} sampled tokens, "
          f"{best['sampled tokens'] / best['rollout']:.0f} tokens/s in the rollout)")
    if cuda:
        terms = step_estimate(args, tokenizer, prompts)
        print(f"  {mfu(sum(flops.values()), total, args)} of {args.peak_tflops:g} TFLOP/s; peak memory "
              f"{best['peak memory'] / memory.GiB:.1f} GiB allocated (memory.estimate without the CUDA context: "
              f"{(terms['total'] - terms['cuda context']) / memory.GiB:.1f} GiB)")


def step_estimate(args, tokenizer, prompts: list[list[dict]]) -> dict[str, int]:
    """memory.estimate of rl.py with the GRPO step's settings (one rollout call of every
    prompt, two turns) for the model benchmarked."""
    name = args.model or student.TINY_PATH
    flags = argparse.Namespace(rollout_batch=args.prompts, group=args.group, max_tokens=args.step_tokens, max_turns=2,
                               micro_batch=args.micro_batch, grad_ckpt=args.grad_ckpt)
    prompt_tokens = max(len(student.encode(tokenizer, p, tools.schemas())[0]) for p in prompts)
    config = AutoConfig.from_pretrained(student.checkpoint_dir(name) or name)
    return memory.estimate(config, flags, prompt_tokens, "cuda")


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
