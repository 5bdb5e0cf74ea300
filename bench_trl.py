"""The peer benchmark: rl.py's GRPO step beside TRL's GRPOTrainer, same model, prompts and sizes.

    pip install trl==1.16        # this script only; nothing else in the project needs TRL
    python bench_trl.py          # the tiny default: 8 prompts x 8 samples, <= 100 tokens, 1 thread

Both train the same checkpoint on the same problems with the project's prompts and reward
(reward.make_reward_func): 8 prompts x 8 generations, at most 100 new tokens, temperature
1.0, KL coefficient 0.001 (TRL's beta), lr 1e-4, one optimizer update per step, on the CPU.
They alternate, round by round (--rounds): each round runs --warmup steps, then --steps
timed steps of each, so a machine whose speed drifts slows both alike. Prints the median
step time of each and their ratio per round and overall. rl.py's step is rl.grpo_step, as
bench.py times it (its settings: bench.step_args); TRL's is one optimizer step of
GRPOTrainer.train(): generation, reward, reference log-probs, loss, backward, AdamW.
"""
import argparse
import os
import sys
import tempfile
import time
from statistics import median

import torch

import bench
import files
import model as student
import reward
import rl
import teacher


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (sys.argv when `argv` is None); bad values exit through ap.error."""
    ap = argparse.ArgumentParser(description="rl.py's GRPO step beside TRL's GRPOTrainer.")
    ap.add_argument("--model", default=None, help="HF model folder (default: the tiny default)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--step-tokens", type=int, default=100, help="new tokens per rollout, at most")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each, every round")
    ap.add_argument("--steps", type=int, default=3, help="timed steps of each, every round")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    if (min(args.prompts, args.step_tokens, args.rounds, args.steps, args.threads) < 1
            or args.warmup < 0):
        ap.error("--prompts, --step-tokens, --rounds, --steps and --threads must be positive, "
                 "--warmup not negative")
    if args.group < 2:
        ap.error("--group must be at least 2 (GRPO compares samples within a group)")
    # bench.step_args reads the rest of bench.py's flags
    args.device, args.micro_batch, args.grad_ckpt = "cpu", None, False
    return args


def trl_steps(args, path: str, problems: list[dict], steps: int) -> list[float]:
    """The seconds of each of `steps` optimizer steps of TRL's GRPOTrainer on `problems`."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.start)

    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = [{"prompt": student.prompt(tokenizer, p["question"]), "answer": p["answer"],
             "tool_calls_used": p["teacher"]["tools"]} for p in problems]
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(output_dir=out, per_device_train_batch_size=args.prompts * args.group,
                            num_generations=args.group, max_completion_length=args.step_tokens,
                            beta=0.001, learning_rate=1e-4, temperature=1.0, use_cpu=True,
                            max_steps=steps, report_to="none", save_strategy="no",
                            logging_steps=steps, dataloader_num_workers=0)
        trainer = GRPOTrainer(model=path, args=config, processing_class=tokenizer,
                              reward_funcs=reward.make_reward_func(tokenizer),
                              train_dataset=Dataset.from_list(rows * steps), callbacks=[clock])
        trainer.train()
    return clock.times


def our_steps(args, path: str, problems: list[dict], steps: int) -> list[float]:
    """The seconds of each of `steps` calls of rl.grpo_step at the same sizes."""
    settings = bench.step_args(args)
    policy, tokenizer = student.load(path)
    ref, _ = student.load(path, frozen=True)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    return [rl.grpo_step(policy, ref, opt, tokenizer, problems, settings, step)["step_time"]
            for step in range(steps)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("error: TRL is not installed (pip install trl==1.16); nothing to compare with")
    torch.set_num_threads(args.threads)
    try:
        if args.model is None:
            student.ensure_tiny()
        path = student.checkpoint_dir(args.model or student.TINY_PATH) or args.model
        problems = files.load_records(
            teacher.ensure_data(rl.parse_args([]).data)["train"])[:args.prompts]
    except (files.DataError, student.ModelError) as e:
        sys.exit(f"error: {e}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"{path}: {args.prompts} prompts x {args.group} samples, <= {args.step_tokens} new "
          f"tokens, {torch.get_num_threads()} thread(s); median of {args.steps} steps after "
          f"{args.warmup}, per round")
    ratios = []
    for round_ in range(args.rounds):
        ours = median(our_steps(args, path, problems, args.warmup + args.steps)[args.warmup:])
        theirs = median(trl_steps(args, path, problems, args.warmup + args.steps)[args.warmup:])
        ratios.append(ours / theirs)
        print(f"  round {round_ + 1}: rl.grpo_step {ours:.2f} s, TRL GRPOTrainer {theirs:.2f} s, "
              f"ratio {ratios[-1]:.2f}x")
    print(f"rl.py's step takes {median(ratios):.2f}x the time of TRL's "
          f"(median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
