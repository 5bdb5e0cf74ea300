"""Benchmarks, each against what the hardware allows: `python bench.py` times what the
scripts run and sets their FLOPs against this machine's measured matmul throughput.

  matmul      the limit: one matmul of the model's shapes (its MLP's up projection over
              2,048 tokens), float32 on CPU, bf16 on CUDA
  decode      model.rollout against transformers' generate(), sampled tokens/s (--skip-generate
              leaves it out)
  GRPO step   rl.grpo_step, exactly what `python rl.py` runs each step, by phase; by default 8
              prompts x 8 samples, <= 100 new tokens and two turns each (one tool call), one
              optimizer update (as TRL's GRPOTrainer makes; bench_trl.py times that one)
  SFT step    sft.train_step on a batch of 32 teacher trajectories
  evaluation  greedy rollouts of 300 test problems (evaluate.rollouts)

FLOPs (model.forward_flops): 2 per weight a token meets, 4 x the attention width per key it
reads, the vocabulary projection only where logits are taken; a backward twice a forward. A
phase at 100% would run every FLOP at the matmul's rate. The tiny default is the model unless
--model; on CUDA, also MFU against --peak-tflops and the step's peak memory beside memory.py's
estimate. Each figure is the median of --repeats runs after --warmup.
"""
import argparse
import sys
from statistics import median

import torch
from transformers import AutoConfig

import evaluate
import files
import memory
import model as student
import rl
import sft
import teacher
import tools

QUESTION = "A box holds 113 pens. How many pens are in 18 boxes?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (sys.argv when `argv` is None); bad values exit through ap.error."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None,
                    help="HF model name or folder (default: the tiny default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64, help="decode: samples of the prompt per call")
    ap.add_argument("--max-tokens", type=int, default=128,
                    help="decode: new tokens per sample, at most")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed runs of each (decode alternates the two)")
    ap.add_argument("--skip-generate", action="store_true", help="leave out the decode comparison")
    ap.add_argument("--prompts", type=int, default=8, help="GRPO step: problems")
    ap.add_argument("--group", type=int, default=8, help="GRPO step: samples per problem")
    ap.add_argument("--step-tokens", type=int, default=100,
                    help="GRPO step: new tokens per rollout, at most")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="GRPO step: rollouts per forward/backward (default: rl.py's)")
    ap.add_argument("--sft-batch", type=int, default=32, help="SFT step: trajectories")
    ap.add_argument("--eval-problems", type=int, default=300, help="evaluation: test problems")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the policy's training passes, as rl.py")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing, as rl.py")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the GPU's dense bf16 peak, for MFU (989: H100 and H200 SXM)")
    # Tiny models gain little from more threads, and on a shared machine OpenMP threads that
    # wait for a busy core make every step many times slower; 0 keeps torch's default.
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    sizes = (args.batch, args.max_tokens, args.repeats, args.prompts, args.step_tokens,
             args.sft_batch, args.eval_problems, args.micro_batch or 1)
    if min(sizes) < 1 or args.peak_tflops <= 0:
        ap.error("--batch, --max-tokens, --repeats, --prompts, --step-tokens, --micro-batch, "
                 "--sft-batch, --eval-problems and --peak-tflops must be positive")
    if args.group < 2:
        ap.error("--group must be at least 2 (GRPO compares samples within a group)")
    if min(args.warmup, args.threads) < 0:
        ap.error("--warmup and --threads cannot be negative")
    return args


def timed(fn, device: str):
    """(seconds, result) of one call of fn()."""
    start = rl.clock(device)
    result = fn()
    return rl.clock(device) - start, result


def matmul_rate(policy, device: str, seconds: float = 0.5) -> float:
    """FLOP/s of one matmul of the model's shapes: its MLP's up projection over 2,048 tokens,
    in the dtype the forward passes compute in (float32 on CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    weight = policy.model.layers[0].mlp.up_proj.weight.detach().to(dtype)
    x = torch.randn(2048, weight.shape[1], device=weight.device, dtype=dtype)
    flops = 2 * x.shape[0] * weight.numel()
    torch.nn.functional.linear(x, weight)  # warm-up
    rates = []
    while sum(flops / r for r in rates) < seconds or len(rates) < 3:
        rates.append(flops / timed(lambda: torch.nn.functional.linear(x, weight), device)[0])
    return median(rates)


def report(name: str, seconds: float, flops: float, rate: float, args,
           share: float | None = None) -> str:
    """One line: seconds (and share of the whole), GFLOP, GFLOP/s, % of the matmul rate; MFU on
    CUDA."""
    line = f"  {name:14s} {seconds:7.3f} s" + (f" {share:6.1%}" if share is not None else " " * 7)
    if flops:
        line += (f"  {flops / 1e9:8.2f} GFLOP  {flops / seconds / 1e9:8.1f} GFLOP/s  "
                 f"{flops / seconds / rate:6.1%} of matmul")
        if args.device.startswith("cuda"):
            line += f"  MFU {flops / seconds / (args.peak_tflops * 1e12):.1%}"
    return line


def bench_decode(args, policy, tokenizer) -> None:
    """Sampled tokens per second: model.rollout against model.generate, side by side.

    The two alternate, call by call, and the ratio is the median over those pairs: on a
    shared machine the speed drifts by 20-30% within a minute, and timing all of one method
    before the other would put that drift into the ratio."""
    prompt = student.prompt(tokenizer, QUESTION)
    prompt_ids, _ = student.encode(tokenizer, prompt, tools.schemas())
    eos = tokenizer.eos_token_id

    def ours() -> int:
        runs = student.rollout(policy, tokenizer, [prompt], tools.schemas(), n=args.batch,
                               max_turns=1, max_tokens=args.max_tokens)
        return sum(sum(r.mask) for r in runs)

    @torch.inference_mode()
    def generate() -> int:
        ids = torch.tensor([prompt_ids] * args.batch, device=args.device)
        # bf16 autocast on CUDA, as the rollouts run
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda")):
            out = policy.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                  max_new_tokens=args.max_tokens, temperature=1.0, top_p=1.0,
                                  top_k=0, eos_token_id=eos,
                                  pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1]:]
        # Each row's tokens up to and including its first EOS; rows without EOS run to the end.
        is_eos = (out == eos).int()
        return int(torch.where(is_eos.any(1), is_eos.argmax(1) + 1, out.shape[1]).sum())

    def rate(fn) -> float:
        seconds, tokens = timed(fn, args.device)
        return tokens / seconds

    print(f"decode, model.rollout vs generate(): batch {args.batch}, up to {args.max_tokens} new "
          f"tokens, prompt {len(prompt_ids)} tokens, {args.repeats} alternating pairs")
    for _ in range(args.warmup):
        ours(), generate()
    pairs = [(rate(ours), rate(generate)) for _ in range(args.repeats)]
    for name, rates in [("model.rollout", sorted(o for o, _ in pairs)),
                        ("generate()", sorted(g for _, g in pairs))]:
        print(f"  {name:14s} {median(rates):8.0f} tokens/s (range {rates[0]:.0f}-{rates[-1]:.0f})")
    ratios = sorted(o / g for o, g in pairs)
    print(f"  ratio {median(ratios):.2f}x (median of pairs; "
          f"range {ratios[0]:.2f}-{ratios[-1]:.2f}x)")


def step_args(args) -> argparse.Namespace:
    """rl.py's settings for the benchmarked step: its profile, the sizes of the flags, one
    update."""
    flags = ["--prompts", str(args.prompts), "--group", str(args.group), "--max-tokens",
             str(args.step_tokens), "--max-turns", "2", "--minibatch", str(args.prompts),
             "--device", args.device]
    flags += ["--model", args.model] if args.model else []
    flags += ["--micro-batch", str(args.micro_batch)] if args.micro_batch else []
    return rl.parse_args(flags + (["--grad-ckpt"] if args.grad_ckpt else []))


def bench_step(args, rate: float) -> None:
    """rl.grpo_step at the benchmark's sizes, by phase; on CUDA with its peak memory."""
    settings = step_args(args)
    policy, tokenizer = student.load(args.model, args.device, compile=args.compile)
    ref, _ = student.load(args.model, args.device, frozen=True)
    if args.grad_ckpt:
        policy.activation_checkpointing_enable()
    opt = torch.optim.AdamW(policy.parameters(), lr=settings.lr, betas=(0.9, settings.beta2),
                            weight_decay=settings.weight_decay)
    problems = files.load_records(teacher.ensure_data(settings.data)["train"])[:args.prompts]
    cuda = args.device.startswith("cuda")

    def step(seed: int) -> dict:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        row = rl.grpo_step(policy, ref, opt, tokenizer, problems, settings, seed)
        row["peak memory"] = torch.cuda.max_memory_allocated() if cuda else 0
        return row

    for i in range(args.warmup):
        step(i)
    rows = sorted((step(args.warmup + i) for i in range(args.repeats)),
                  key=lambda r: r["step_time"])
    row = rows[len(rows) // 2]
    print(f"GRPO step (rl.grpo_step): {args.prompts} prompts x {args.group} samples, "
          f"<= {args.step_tokens} new tokens, micro-batch {settings.micro_batch}, "
          f"{row['response_tokens'] * len(problems) * args.group:.0f} sampled tokens; "
          f"the median of {args.repeats} steps")
    for phase in ("rollout", "reward", "ref", "old", "update"):
        print(report(phase, row[f"{phase}_time"], row.get(f"{phase}_flops", 0), rate, args,
                     row[f"{phase}_time"] / row["step_time"]))
    total = sum(row[f"{phase}_flops"] for phase in ("rollout", "ref", "old", "update"))
    print(report("step", row["step_time"], total, rate, args, 1.0))
    if cuda:
        terms = memory.estimate(
            AutoConfig.from_pretrained(student.checkpoint_dir(args.model or student.TINY_PATH)
                                       or args.model),
            settings, prompt_tokens(tokenizer, problems), "cuda")
        print(f"  peak memory {row['peak memory'] / memory.GiB:.1f} GiB allocated "
              f"(memory.estimate without the CUDA context: "
              f"{(terms['total'] - terms['cuda context']) / memory.GiB:.1f} GiB)")


def prompt_tokens(tokenizer, records: list[dict]) -> int:
    """The longest prompt of `records`, in tokens."""
    return max(len(student.encode(tokenizer, student.prompt(tokenizer, r["question"]),
                                  tools.schemas())[0])
               for r in records)


def bench_sft(args, rate: float) -> None:
    """sft.train_step on batches of --sft-batch teacher trajectories."""
    policy, tokenizer = student.load(args.model, args.device, compile=args.compile)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    records = files.load_records(teacher.ensure_data(rl.parse_args([]).data)["train"])
    examples = [student.encode(tokenizer, sft.conversation(tokenizer, r, r["teacher"]["messages"]),
                               tools.schemas())
                for r in records[:args.sft_batch * (args.warmup + args.repeats)]]
    chunks = [examples[i:i + args.sft_batch] for i in range(0, len(examples), args.sft_batch)]
    batches = [sft.batch(chunk, tokenizer.pad_token_id, args.device) for chunk in chunks]
    policy.train()
    times = [timed(lambda: sft.train_step(policy, opt, ids, mask), args.device)[0]
             for ids, mask in batches]
    seconds = median(times[args.warmup:])
    flops = median(3 * student.forward_flops(policy, torch.tensor([len(ids) for ids, _ in chunk]),
                                             mask.sum(1)).sum()
                   for chunk, (_, mask) in zip(chunks, batches))
    print(f"SFT step (sft.train_step): {args.sft_batch} teacher trajectories of "
          f"{sum(len(x) for x, _ in examples) / len(examples):.0f} tokens on average")
    print(report("step", seconds, flops, rate, args))


def bench_eval(args, rate: float) -> None:
    """Greedy rollouts of --eval-problems test problems, as evaluate.evaluate runs them."""
    policy, tokenizer = student.load(args.model, args.device)
    records = files.load_records(teacher.ensure_data(rl.parse_args([]).data)["test_id"],
                                 need_teacher=False)
    records = records[:args.eval_problems]
    runs = []
    for _ in range(args.warmup + args.repeats):
        runs.append(timed(lambda: evaluate.rollouts(policy, tokenizer, records), args.device))
    seconds, rollouts = sorted(runs[args.warmup:], key=lambda run: run[0])[args.repeats // 2]
    lengths = torch.tensor([len(r.ids) for r in rollouts])
    prompts = torch.tensor([r.prompt_len for r in rollouts])
    sampled = torch.tensor([sum(r.mask) for r in rollouts])
    flops = student.rollout_flops(policy, lengths, prompts, sampled).sum()
    print(f"evaluation (evaluate.rollouts): {len(records)} problems, greedy, "
          f"batches of {evaluate.BATCH}, {int(sampled.sum())} sampled tokens")
    print(report("rollouts", seconds, flops, rate, args))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        if args.model is None:
            student.ensure_tiny()
        policy, tokenizer = student.load(args.model, args.device)
        rate = matmul_rate(policy, args.device)
        print(f"{args.model or student.TINY_PATH} on {args.device}, "
              f"{torch.get_num_threads()} thread(s); matmul {rate / 1e9:.1f} GFLOP/s")
        if not args.skip_generate:
            bench_decode(args, policy, tokenizer)
        bench_step(args, rate)
        bench_sft(args, rate)
        bench_eval(args, rate)
    except (files.DataError, student.ModelError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
