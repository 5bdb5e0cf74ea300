"""What a run of rl.py needs in memory, estimated from the model's config and the run's flags.

The peak is what lives through the whole run plus the largest of what a step's three phases
add: the rollouts, the training passes, the optimizer step. Each term, in bytes (P parameters,
h hidden size, i MLP size, L layers, V vocabulary, kv the width of a layer's keys, T = prompt +
max_tokens, B the micro-batch; bf16 is 2 bytes, float32 4; "a" is the dtype of a projection's
output: bf16 under CUDA autocast, float32 on CPU):

  through the run:
    weights          the policy's float32 master weights: 4 P
    gradients        float32, one per weight, kept from one update to the next: 4 P
    adamw            AdamW's two float32 moments: 8 P
    reference        the frozen starting policy: float32 on CPU (4 P); on CUDA its linear layers in
                     bf16, the embeddings float32: 2 P + 2 V h
    cuda context     (CUDA) the CUDA context and torch's kernels, which the allocator does not
                     count: 1 GiB
  rollouts (rows: every prompt x group of a rollout call; an evaluation decodes as many problems):
    decoder weights  the decoder's copy of the weights it multiplies by, made once per rollout: on
                     CUDA every projection and the output layer in bf16, 2 (L (h (q + 2 kv) + q
                     + 2 kv + q h + 3 h i) + V h); elsewhere only the q, k, v and gate, up
                     projections, which it packs into two matrices: 4 L (h (q + 2 kv) + q + 2 kv
                     + 2 h i)
    kv cache         rows x positions x L x kv x 2 a, keys and values in the projections' dtype;
                     positions is T for one turn, and prompt + 2 max_tokens when a later turn may
                     come (its buffers hold the longest conversation so far plus the largest
                     budget left)
    kv copy          one more kv cache: picking rows (a prompt's samples, dropping finished rows)
                     builds the new buffers while the old ones still exist; the conversations that
                     leave the batch keep their keys and values for the next turn, at most one more
    prefill          one layer's forward over an evaluation's prompts at once (later turns forward
                     only the new tokens), 20 h + 3 a i bytes a token, the layer's keys and values
                     repeated to every query head (4 a q; engine._attend) and the attention mask, a
                     bool and an additive a per key (the fused kernels materialise no scores)
    sampling         rows x V x 16 with top-k: the float32 logits, their copy over the temperature,
                     the log-probs (top-k and top-p then work on k candidates); without top-k, x 40:
                     the probabilities, the float64 CDF and, with top-p, the sorted copy and order
  training (one micro-batch of the longest rollouts, B x T tokens):
    autocast copies  (CUDA) the bf16 copy of every weight, kept by the backward: 2 P
    activations      what the backward keeps per token and layer: float32 residuals and norms
                     (16 h), the norms' outputs (8 h; 10 h of bf16 casts under autocast), queries,
                     keys and values repeated to every head and the attention output (4 a h), the
                     MLP (4 a i); for L + 1 layers (the backward's own working set), or with
                     --grad-ckpt the layers' float32 inputs (4 h each) and two layers
    logprob chunk    the logits of the scored tokens (B x max_tokens), at most LOGPROB_CHUNK, x 18
                     bytes: about four float32 copies at the peak of their backward (logits,
                     softmax, two gradients), plus the bf16 projection
    vocab gradients  V x h x 12: the output projection's gradient waits in a buffer for the next
                     chunk's or the embedding's, and their sum is a third tensor
  optimizer step:
    adamw step       CUDA's foreach AdamW makes one temporary the size of all weights (4 P); on CPU
                     it goes weight by weight, two temporaries of the largest (V x h x 8)

Not counted: the caching allocator's fragmentation on CUDA, Python objects and the batch's
small [rows, T] tensors.
"""
import argparse
import os

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

import model as student
import tools

GiB = 2 ** 30
# what the estimate reads: a Qwen2/Llama-style decoder
CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "vocab_size", "tie_word_embeddings")
FITTING_FLAGS = "--grad-ckpt, --micro-batch, --rollout-batch, --max-tokens"


def param_count(config: PretrainedConfig) -> int:
    """Parameters of a Qwen2/Llama-style causal LM from its config: embeddings (and an
    untied output projection), attention with q/k/v biases, the gated MLP and the norms."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = h * q + q + 2 * (h * kv + kv) + q * h + 3 * h * i + 2 * h
    embeddings = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    return embeddings + layers * per_layer + h


def estimate(config: PretrainedConfig, args: argparse.Namespace, prompt_tokens: int,
             device_type: str) -> dict[str, int]:
    """Peak memory in bytes of rl.py with flags `args` (rollout_batch, group, max_tokens,
    max_turns, micro_batch, grad_ckpt, top_k) on a device of type `device_type` ("cuda" or "cpu"),
    for a model of `config` and prompts of up to `prompt_tokens` tokens. Returns every term of
    the module docstring, then the phases "rollouts" and "training", and the "total"."""
    cuda = device_type == "cuda"
    a = 2 if cuda else 4
    P, h, i, L, V = (param_count(config), config.hidden_size, config.intermediate_size,
                     config.num_hidden_layers, config.vocab_size)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    q, kv = heads * head_dim, config.num_key_value_heads * head_dim
    T = prompt_tokens + args.max_tokens
    later_turns = args.max_turns > 1
    rows = args.rollout_batch * args.group  # an evaluation decodes as many problems at once
    positions = prompt_tokens + 2 * args.max_tokens if later_turns else T
    kv_cache = rows * positions * L * kv * 2 * a
    # one layer's forward over an evaluation's prompts at once
    prefill = rows * prompt_tokens * (20 * h + 3 * a * i + 4 * a * q + (1 + a) * prompt_tokens)

    # per layer: q, k, v (weights, biases), gate, up
    packed = h * (q + 2 * kv) + q + 2 * kv + 2 * h * i
    decoder = 2 * (L * (packed + q * h + h * i) + V * h) if cuda else 4 * L * packed

    B = args.micro_batch
    layer = 16 * h + (10 if cuda else 8) * h + 4 * a * q + 4 * a * i + 4 * heads + 8
    rest = 12 * h  # the last norm, the final hidden states
    saved = 4 * h * L + 2 * layer if args.grad_ckpt else (L + 1) * layer
    copies = 2 * P if cuda else 0
    terms = {
        "weights": 4 * P, "gradients": 4 * P, "adamw": 8 * P,
        "reference": 2 * P + 2 * V * h if cuda else 4 * P,
        "cuda context": GiB if cuda else 0,
        "autocast copies": copies, "decoder weights": decoder,
        "kv cache": kv_cache, "kv copy": kv_cache, "prefill": prefill,
        "sampling": rows * V * (16 if args.top_k else 40),
        "activations": B * T * (saved + rest),
        "logprob chunk": min(student.LOGPROB_CHUNK, B * args.max_tokens * V) * 18,
        "vocab gradients": V * h * 12,
        "adamw step": 4 * P if cuda else 8 * V * h,
    }
    terms["rollouts"] = decoder + kv_cache + max(terms["kv copy"], prefill, terms["sampling"])
    terms["training"] = (copies + terms["activations"] + terms["logprob chunk"]
                         + terms["vocab gradients"])
    lasting = sum(terms[k] for k in ("weights", "gradients", "adamw", "reference", "cuda context"))
    terms["total"] = lasting + max(terms["rollouts"], terms["training"], terms["adamw step"])
    return terms


def summary(terms: dict[str, int], largest: int = 4) -> str:
    """One line: the total and the `largest` terms, in GiB."""
    parts = sorted(((v, k) for k, v in terms.items() if k not in ("rollouts", "training", "total")),
                   reverse=True)
    return (f"{terms['total'] / GiB:.1f} GiB (" +
            ", ".join(f"{k} {v / GiB:.1f}" for v, k in parts[:largest]) + ")")


def fitting_flags(config: PretrainedConfig, args: argparse.Namespace, prompt_tokens: int,
                  device_type: str, room: int) -> tuple[list[str], int]:
    """The flags that bring the estimate under `room` bytes, and the estimate with them.

    Changes are tried in the order they cost the least: --grad-ckpt (recomputes activations),
    halving --micro-batch (more, smaller passes), halving --rollout-batch (smaller decode
    batches), halving --max-tokens (changes the experiment); each round takes the first that
    lowers the total. Returns ([], total) when nothing lowers it further (the fixed part alone
    is too big)."""
    current = argparse.Namespace(**vars(args))
    total = estimate(config, current, prompt_tokens, device_type)["total"]
    keys = ("grad_ckpt", "micro_batch", "rollout_batch", "max_tokens")
    while total > room:
        for key in keys:
            value = True if key == "grad_ckpt" else getattr(current, key) // 2
            if not value or value == getattr(current, key):
                continue
            trial = argparse.Namespace(**{**vars(current), key: value})
            new = estimate(config, trial, prompt_tokens, device_type)["total"]
            if new < total:
                current, total = trial, new
                break
        else:
            return [], total
    flags = [f"--{key.replace('_', '-')}"
             + ("" if key == "grad_ckpt" else f" {getattr(current, key)}")
             for key in keys if getattr(current, key) != getattr(args, key)]
    return flags, total


def device_memory(device: str) -> int | None:
    """Bytes of memory of `device`: the GPU's total memory on CUDA, the machine's RAM on CPU;
    None where it cannot be read (a device name that load() will refuse, or another platform)."""
    try:
        device = torch.device(device)
    except RuntimeError:
        return None
    if device.type == "cuda":
        return (torch.cuda.get_device_properties(device).total_memory
                if torch.cuda.is_available() else None)
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def check(init: str, args: argparse.Namespace, questions: list[str]) -> None:
    """Print rl.py's memory estimate for the model at `init` (a run folder, a folder or a hub
    name: only its config and tokenizer are read) and prompts of `questions`; raise ModelError
    with one line, naming the flags that would fit, when it exceeds the device's memory. A
    model whose config or tokenizer cannot be read is left to load(), which says why, and one
    that is not a Qwen2/Llama-style decoder (CONFIG_FIELDS) gets no estimate."""
    path = student.checkpoint_dir(init) or init
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception:  # missing or foreign files raise many kinds of error; load() reports them
        return
    if not all(hasattr(config, name) for name in CONFIG_FIELDS):
        return
    # The template around a question is the same for all, so only the longest questions can make
    # the longest prompt; rendering takes milliseconds a prompt, so only they are rendered. The
    # template's text can merge with a question's first or last token: a token or two either way.
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    prompt_tokens = max(len(student.encode(tokenizer, student.prompt(tokenizer, q),
                                           tools.schemas())[0])
                        for q, n in zip(questions, lengths) if n >= max(lengths) - 2)
    device_type = "cuda" if str(args.device).startswith("cuda") else "cpu"
    terms = estimate(config, args, prompt_tokens, device_type)
    print(f"memory: about {summary(terms)}; prompts up to {prompt_tokens} tokens")
    room = device_memory(args.device)
    if room is None or terms["total"] <= room:
        return
    flags, total = fitting_flags(config, args, prompt_tokens, device_type, room)
    advice = (f"{' '.join(flags)} would bring it to about {total / GiB:.1f} GiB" if flags else
              f"none of {FITTING_FLAGS} brings it under that: use a smaller model")
    raise student.ModelError(f"this run needs about {summary(terms, 2)} of memory, more than the "
                             f"{room / GiB:.1f} GiB of {args.device}; {advice}")
