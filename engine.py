"""The fast decode path of rollouts: a lean forward for Qwen2 models.

model.rollout samples each turn through a decoder (model.Decoder: prefill, step, keep_rows).
model.py's own decoder runs the model's transformers forward with its KV cache; LeanDecoder
here computes the same logits with less framework work per token. model.py takes it
automatically for the models where it is exact (lean_ok), and its own decoder for the rest.

Why a lean forward: rollouts should run well ahead of generate() (bench.py), and on a small
model much of a decode step is framework overhead, not FLOPs: transformers' Qwen2 forward
builds masks, recomputes the rotary table, updates Cache objects and dispatches the
attention interface at every token (tiny default, batch 1, one CPU thread: ~3.5 ms per
decode step through transformers, ~2.2 ms here). LeanDecoder runs the model's own modules
and weights with none of that: one additive mask per decode step, a rotary table computed
once per turn, KV buffers written in place. At batch 64 the matmuls and the reads of the KV
cache take most of a step, so the gain there is smaller.

`python engine.py [--model PATH]` checks LeanDecoder against transformers' own generate()
(the model's forward with its KV cache, what rollouts would otherwise run): the same greedy
tokens, log-probs within a tolerance, and the tokens/s of each. model.py imports this file,
so this file imports nothing of model.py.
"""
import argparse
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM


def lean_ok(model) -> bool:
    """Whether LeanDecoder computes exactly what `model`'s own forward does: a Qwen2 causal
    LM with full attention in every layer (no sliding window), a rotary embedding that does
    not depend on the sequence length (dynamic and longrope RoPE recompute their frequencies
    at every call) and no attention dropout in effect."""
    if not isinstance(model, Qwen2ForCausalLM) or model.config.model_type != "qwen2":
        return False
    config, rope_type = model.config, model.model.rotary_emb.rope_type
    return ("sliding_attention" not in config.layer_types and "dynamic" not in rope_type
            and rope_type != "longrope" and not (model.training and config.attention_dropout > 0))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x [B, heads, T, head_dim] with cos/sin [B, 1, T, head_dim] (transformers' layout:
    the two halves of head_dim are the two coordinates of each rotated pair)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm module `norm` applied to x as one fused op (its eps and weight)."""
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
            scale: float) -> torch.Tensor:
    """Attention of queries q [B, heads, T, head_dim] over keys and values [B, kv_heads, L, head_dim]
    (grouped-query: query head h reads KV head h // (heads / kv_heads)). For a prefill (T > 1)
    `mask` is boolean [B, 1, T, L], True where a query sees a key; for a decode step it is the
    additive bias [B * kv_heads, 1, L] of _decode_bias. Returns [B, heads, T, head_dim]."""
    if q.shape[2] > 1:  # a prefill: SDPA's fused kernels
        return torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale,
                                                                enable_gqa=q.shape[1] > keys.shape[1])
    # A decode step: two batched matmuls, the query heads that share a KV head stacked as rows,
    # scale and mask folded into the first. On CPU this takes ~40% less time than SDPA's flash
    # kernel, which is slow for a single query, and ~25% less than masked_fill and a scale.
    batch, heads, _, dim = q.shape
    scores = torch.baddbmm(mask, q.reshape(-1, heads // keys.shape[1], dim), keys.flatten(0, 1).transpose(1, 2),
                           alpha=scale)
    return (scores.softmax(-1) @ values.flatten(0, 1)).view(batch, heads, 1, dim)


def _decode_bias(seen: torch.Tensor, kv_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask of a decode step, once for all layers: 0 where `seen`
    [B, L] is True, -inf elsewhere, one row per (batch row, KV head): [B * kv_heads, 1, L]."""
    bias = torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill_(~seen, float("-inf"))
    return bias.repeat_interleave(kv_heads, dim=0)[:, None]


class LeanDecoder:
    """model.Decoder for a Qwen2 model where lean_ok holds: the same logits as its transformers
    forward, from its own modules and weights.

    Everything a turn needs is sized for the whole turn (`capacity`: prompt + token budget),
    so nothing grows by torch.cat, which would copy the whole cache at every token: per-layer
    key and value buffers [B, kv_heads, capacity, head_dim], `valid` [B, capacity] marking the
    positions that hold real tokens (False on left padding), and the rotary cos/sin
    [capacity, head_dim] of every position the turn can reach."""

    def __init__(self, model: Qwen2ForCausalLM, capacity: int):
        self.model, self.capacity = model, capacity
        # From the model's own rotary module, so rope scaling and theta are honoured. The
        # embedding weight only gives the dtype and device, as hidden states do in transformers.
        positions = torch.arange(capacity, device=model.device)[None]
        cos, sin = model.model.rotary_emb(model.model.embed_tokens.weight, positions)
        self.cos, self.sin = cos[0], sin[0]
        self.valid = torch.zeros(0, capacity, dtype=torch.bool, device=model.device)
        self.length = 0  # the positions filled so far
        self.keys: list[torch.Tensor] = []  # made by the prefill, in the dtype the projections give
        self.values: list[torch.Tensor] = []

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Float32 logits [B, vocab] after the last of the left-padded `ids` [B, T]."""
        self.valid = torch.zeros(len(ids), self.capacity, dtype=torch.bool, device=ids.device)
        return self._forward(ids, positions, valid)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Float32 logits [B, vocab] after one more token per row (`tokens`, `positions` [B, 1])."""
        return self._forward(tokens, positions, torch.ones_like(tokens, dtype=torch.bool))

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) the batch rows `rows` [B'], in that order."""
        self.valid = self.valid[rows]
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The float32 logits [B, vocab] after the last of `ids` [B, T] (at `positions` [B, T],
        `valid` [B, T] False on left padding); their keys and values go to the next T positions
        of the buffers. The same computation as transformers' forward."""
        model, (batch, width) = self.model, ids.shape
        start, end = self.length, self.length + width
        self.length = end
        self.valid[:, start:end] = valid
        seen = self.valid[:, :end]
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        hidden = model.model.embed_tokens(ids)
        if width == 1:  # a decode step: the new token sees every real token so far. The queries
            # come out of the rotation in the rotary table's dtype, so the bias takes that one.
            mask = _decode_bias(seen, model.config.num_key_value_heads, self.cos.dtype)
        else:  # query i sees real keys up to start + i; padding queries see all earlier keys, so no
            # row of the mask is empty (an empty row gives NaN, which the padding's keys would carry on)
            causal = torch.ones(width, end, dtype=torch.bool, device=ids.device).tril(start)
            mask = (causal & (seen[:, None, :] | ~valid[:, :, None]))[:, None]
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            x = _norm(layer.input_layernorm, hidden)
            q, k, v = (proj(x).view(batch, width, -1, attn.head_dim).transpose(1, 2)
                       for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            if start == 0:  # the buffers take the dtype the projections give (float32 or autocast's)
                self.keys.append(k.new_empty(batch, k.shape[1], self.capacity, attn.head_dim))
                self.values.append(v.new_empty(batch, v.shape[1], self.capacity, attn.head_dim))
            self.keys[i][:, :, start:end] = k
            self.values[i][:, :, start:end] = v
            out = _attend(q, self.keys[i][:, :, :end], self.values[i][:, :, :end], mask, attn.scaling)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, width, -1))
            hidden = hidden + layer.mlp(_norm(layer.post_attention_layernorm, hidden))
        return model.lm_head(_norm(model.model.norm, hidden[:, -1])).float()


# ------------------------------------------------------------------ the self-check

@torch.inference_mode()
def _lean_greedy(model, prompts: list[list[int]], n: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` greedy tokens after each prompt through LeanDecoder, as rollouts decode: one
    left-padded prefill, its rows repeated `n` times, and every other row dropped halfway
    (rows leave the batch as their samples stop). Returns the numbers of the rows kept to the
    end [rows] (row r samples prompt r // n), their tokens and log-probs [rows, steps], and
    how many tokens were decoded."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    valid = torch.tensor([[i >= width - len(p) for i in range(width)] for p in prompts])
    positions = (valid.cumsum(-1) - 1).clamp(min=0)
    decoder = LeanDecoder(model, width + steps)
    logits = decoder.prefill(ids, positions, valid)
    repeat = torch.arange(len(prompts)).repeat_interleave(n)
    decoder.keep_rows(repeat)
    logits, position, rows = logits[repeat], positions[repeat, -1:], torch.arange(len(repeat))
    tokens, logps = [], []
    for t in range(steps):
        if t == steps // 2:
            keep = torch.arange(0, len(rows), 2)
            decoder.keep_rows(keep)
            logits, position, rows = logits[keep], position[keep], rows[keep]
            tokens, logps = [x[keep] for x in tokens], [x[keep] for x in logps]
        logp = logits.log_softmax(-1)
        tokens.append(logp.argmax(-1))
        logps.append(logp.gather(1, tokens[-1][:, None])[:, 0])
        position = position + 1
        logits = decoder.step(tokens[-1][:, None], position)
    decoded = len(repeat) * (steps // 2) + len(rows) * (steps - steps // 2)
    return rows, torch.stack(tokens, 1), torch.stack(logps, 1), decoded


@torch.inference_mode()
def _generate_greedy(model, tokenizer, prompts: list[list[int]], n: int, steps: int):
    """The same through transformers' own generate() (the model's forward with its cache),
    every row to the end: tokens and log-probs [rows, steps or fewer], a mask of the tokens
    up to each row's first end token (generate pads after it) and how many were decoded."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts]).repeat_interleave(n, 0)
    attention = torch.tensor([[i >= width - len(p) for i in range(width)] for p in prompts]).repeat_interleave(n, 0)
    out = model.generate(input_ids=ids, attention_mask=attention.long(), do_sample=False, max_new_tokens=steps,
                         min_new_tokens=0, output_logits=True, return_dict_in_generate=True, pad_token_id=pad)
    tokens = out.sequences[:, width:]
    logps = torch.stack(out.logits, 1).float().log_softmax(-1)[:, :tokens.shape[1]].gather(2, tokens[..., None])[..., 0]
    ends = torch.isin(tokens, torch.tensor(model.generation_config.eos_token_id or [])).long()
    kept = ends.cumsum(1) - ends == 0  # up to and including the first end token
    return tokens, logps, kept, tokens.numel()


PROMPTS = ["What is 2 plus 3?", "A box holds 113 pens. How many pens are in 18 boxes?",
           "Tom has 250 cups and sells 75. How many are left?", "What is the area of a square of side 12?"]
TOLERANCE = 1e-4  # the largest log-prob gap allowed: float32 sums in another order, nothing more


def main(argv: list[str] | None = None) -> None:
    """The self-check (sys.argv when `argv` is None); exits with 1 when the two forwards disagree."""
    ap = argparse.ArgumentParser(description="Check the lean forward against transformers' generate().")
    ap.add_argument("--model", default="runs/tiny/checkpoint",
                    help="HF model name or folder (default: the tiny default, built by python sft.py or rl.py)")
    args = ap.parse_args(argv)
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except Exception as e:  # missing, truncated or foreign files raise many kinds of error
        sys.exit(f"error: cannot load '{args.model}': {(str(e).strip().splitlines() or [type(e).__name__])[0]}")
    if not lean_ok(model):
        print(f"{args.model}: the lean forward does not apply to it; rollouts take the model's own forward")
        return
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"] for q in PROMPTS]
    n, steps = 16, 128
    print(f"engine check: {args.model}, {len(prompts)} prompts x {n} rows, {steps} greedy tokens each, "
          f"cpu, {torch.get_num_threads()} thread(s)")
    rates, results = {}, {}
    for name, run in [("generate()", lambda: _generate_greedy(model, tokenizer, prompts, n, steps)),
                      ("lean forward", lambda: _lean_greedy(model, prompts, n, steps))]:
        run()  # warm-up
        start = time.perf_counter()
        results[name] = run()
        rates[name] = results[name][-1] / (time.perf_counter() - start)
        print(f"  {name:14s} {rates[name]:8.0f} tokens/s")
    print(f"  speed-up {rates['lean forward'] / rates['generate()']:.2f}x")
    (tokens, logps, kept, _), (rows, lean_tokens, lean_logps, _) = results.values()
    tokens, logps, kept = tokens[rows], logps[rows], kept[rows]  # the rows the lean decoder kept
    width = tokens.shape[1]
    lean_tokens, lean_logps = lean_tokens[:, :width], lean_logps[:, :width]
    gap = (logps - lean_logps).abs()[kept].max().item()
    checks = {"same greedy tokens up to each row's end": torch.equal(tokens[kept], lean_tokens[kept]),
              f"log-probs within {TOLERANCE:g} (largest gap {gap:.1e})": gap <= TOLERANCE}
    for what, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
