"""The decode path of rollouts: one assistant turn sampled for a batch of conversations.

    sample_turn(model, decoder, ...)  the loop: prefill (decoder.extend), then per token the
                                      logits, pick() draws the next token, stopping rows leave
    pick(logp, top_k, top_p)          the next token: argmax, or a sample of the top-k/top-p nucleus
    make_decoder(model)               the forward passes with a KV cache: PlainDecoder (the model's
                                      own transformers forward) or LeanDecoder (below)

model.rollout calls sample_turn once per turn of its tool-using conversations, with one
decoder for all the turns of a rollout.

The lean forward (the second half): on a small model much of a decode step is framework
overhead, not FLOPs: transformers' Qwen2 forward builds masks, recomputes the rotary table,
updates Cache objects and dispatches the attention interface at every token. LeanDecoder runs
the model's weights with none of that: one additive mask per decode step, a rotary table
computed once, KV buffers written in place, q, k, v in one matmul and the MLP's gate and up
in another. And it keeps each conversation's cache across turns: a tool-using conversation
comes back after every call with a few tokens of tool result, and forwarding the whole
conversation again each time reads far more tokens than the turns sample (3.5x as many, a
GRPO step of the tiny default). make_decoder takes it for the models where it is exact
(lean_ok), and the plain one for the rest.

`python engine.py [--model PATH] [--device cuda]` checks LeanDecoder against transformers'
own generate() (the model's forward with its KV cache, what rollouts would otherwise run):
the same greedy tokens, log-probs within a tolerance, and the tokens/s of each. model.py
imports this file, so this file imports nothing of model.py.
"""
import argparse
import sys
import time
from contextlib import nullcontext
from typing import Protocol

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, Qwen2ForCausalLM


def autocast(model):
    """bf16 autocast on CUDA, nothing elsewhere (CPU stays float32)."""
    if model.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def nucleus(logp: torch.Tensor, top_k: int,
            top_p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tokens a sample may draw from the rows of log-probs `logp` [B, V]: the top_k most
    likely (0: all) and, within those, the smallest set holding top_p of their mass (HF's and
    vLLM's order). Returns their probabilities, not normalised, 0 for a token cut off, and
    their vocabulary ids [B, K]; or [B, V] and None when nothing is cut (ids are positions).
    top-p then sorts only the top_k candidates, which topk already returns in order, not the
    whole vocabulary (151,936 tokens for Qwen2.5) at every step."""
    index = None
    if 0 < top_k < logp.shape[-1]:
        logp, index = logp.topk(top_k, dim=-1)  # in descending order
    elif top_p < 1.0:
        logp, index = logp.sort(dim=-1, descending=True)
    probs = logp.exp()
    if top_p < 1.0:  # cut every token after the mass before it reaches top_p
        probs = probs.masked_fill(probs.cumsum(-1) - probs > top_p * probs.sum(-1, keepdim=True),
                                  0.0)
    return probs, index


def pick(logp: torch.Tensor, top_k: int, top_p: float, greedy: bool,
          generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row of log-probs `logp` [B, V] (already divided by the
    temperature): the argmax, or a sample of the top_k, top_p nucleus (nucleus)."""
    if greedy:
        return logp.argmax(-1)
    probs, index = nucleus(logp, top_k, top_p)
    # Inverse-CDF sampling: one uniform number per row, where torch.multinomial draws one per
    # vocabulary entry (~1.5 ms, over a tenth of the tiny model's decode step at batch 64).
    # float64, so even tokens of probability 1e-12 keep their share; a token of probability 0
    # is never drawn, short of u * total rounding up to total (odds ~1e-16; the clamp keeps
    # the index in range then).
    cdf = probs.double().cumsum(-1)
    u = torch.rand(len(cdf), 1, dtype=torch.float64, device=cdf.device,
                   generator=generator) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
    return (choice if index is None else index.gather(1, choice)).squeeze(1)


def end_ids(model, tokenizer) -> list[int]:
    """The tokens that end a turn: the tokenizer's EOS and every EOS the model's generation
    config declares (Qwen2.5-Instruct: <|im_end|> and <|endoftext|>)."""
    declared = model.generation_config.eos_token_id
    declared = declared if isinstance(declared, list) else [] if declared is None else [declared]
    return sorted({tokenizer.eos_token_id, *declared})


# on a GPU, decode steps between looks at how many turns have ended (a host sync each)
SYNC_EVERY = 8


@torch.inference_mode()
# a compiled model decodes eagerly: shapes change every step
@torch.compiler.set_stance("force_eager")
def sample_turn(model, decoder: "Decoder", samples: list[int], rows: list[list[int]], n: int,
                budgets: list[int], ends: torch.Tensor, temperature: float, top_k: int,
                top_p: float, greedy: bool,
                generator: torch.Generator | None) -> list[tuple[list[int], list[float], bool]]:
    """Sample one assistant turn after each token sequence of `rows`, `n` times each: the
    conversations `samples`, the n of a row adjacent. The n samples of a row share its
    forward (extend); sample i stops at an end token (`ends`) or after `budgets[i]` tokens.
    Stopped samples leave the batch once they are a quarter of it (each removal copies the
    cache, so it is batched), and cost nothing afterwards; on a GPU the count is read every
    SYNC_EVERY steps, so the host does not wait for the device at every token.
    Returns per sample: (sampled ids, their log-probs under softmax(logits / temperature),
    whether the turn ended with an end token)."""
    device, total, steps = model.device, len(samples), max(budgets)
    budget = torch.tensor(budgets, device=device)
    tokens = torch.zeros(total, steps, dtype=torch.long, device=device)
    logps = torch.zeros(total, steps, device=device)
    lengths = torch.zeros(total, dtype=torch.long, device=device)
    ended = torch.zeros(total, dtype=torch.bool, device=device)
    live = torch.arange(total, device=device)  # the sample each batch row belongs to
    done = torch.zeros(total, dtype=torch.bool, device=device)  # batch rows whose turn has ended
    with autocast(model):
        logits = decoder.extend(samples[::n], rows, steps)
        if n > 1:
            logits = logits.repeat_interleave(n, 0)
            decoder.keep(torch.arange(len(rows), device=device).repeat_interleave(n), samples)
        for t in range(steps):
            logp = (logits if greedy else logits / temperature).log_softmax(-1)
            token = pick(logp, top_k, top_p, greedy, generator)
            # The log-prob under softmax(logits / temperature), before top-k and top-p cut it: what
            # logprobs(temperature=) gives, as the authors' trainer computes it. Rows whose turn
            # has ended write past their length too; those entries are cut off below.
            tokens[live, t] = token
            logps[live, t] = logp.gather(1, token[:, None]).squeeze(1)
            is_eos = torch.isin(token, ends)
            stop = ~done & (is_eos | (budget[live] <= t + 1))
            # where(), not stop as an index: no wait for the GPU to count the rows
            lengths[live] = torch.where(stop, t + 1, lengths[live])
            ended[live] = torch.where(stop, is_eos, ended[live])
            # the tokens just sampled belong to their conversations, but where a turn had ended
            ours = ~done
            done = done | stop
            # reading a count waits for the GPU
            if device.type == "cpu" or t % SYNC_EVERY == SYNC_EVERY - 1:
                n_done = int(done.sum())
                if n_done == len(live):
                    break
                # rows whose turn has ended would still cost a forward each step
                if 4 * n_done >= len(live):
                    left = decoder.drop(done)
                    live, token, done, ours = live[left], token[left], done[left], ours[left]
            logits = decoder.step(token, ours)

    tokens, logps, lengths, ended = (tokens.tolist(), logps.tolist(), lengths.tolist(),
                                     ended.tolist())
    return [(tokens[i][:lengths[i]], logps[i][:lengths[i]], ended[i]) for i in range(total)]


class Decoder(Protocol):
    """The forward passes of a rollout's turns, with a KV cache. Why a cache: each new token
    attends to every token before it; keeping their keys and values makes a decode step the
    forward of one token per row, not of the whole sequence again.

    PlainDecoder below runs the model's own transformers forward; LeanDecoder computes
    the same logits faster for the models where it is exact (Qwen2: lean_ok), and keeps
    each conversation's cache from one turn to the next."""

    def extend(self, samples: list[int], ids: list[list[int]], room: int) -> torch.Tensor:
        """Make the live batch the conversations `samples` (numbers naming them), of token ids
        `ids`, and forward what the cache lacks of them; `room`: the most tokens any will decode
        next. Returns the float32 logits [B, vocab] after each conversation's last token."""

    def step(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The float32 logits [B, vocab] after one more token per row (`tokens` [B]); where
        `valid` [B] is False the row's turn has ended and its token is not part of it."""

    def keep(self, rows: torch.Tensor, samples: list[int]) -> None:
        """Make batch rows `rows` [B'] (repeats allowed) the live batch, in that order, as the
        conversations `samples`."""

    def drop(self, gone: torch.Tensor) -> torch.Tensor:
        """Take the rows where `gone` [B] is True out of the live batch. Returns the old numbers
        of the rows left, in their new order."""


class PlainDecoder:
    """Decoder for any causal LM: its own forward, with the cache generate() uses (DynamicCache).
    It keeps nothing from one turn to the next: extend() forwards whole conversations."""

    def __init__(self, model):
        self.model = model
        self.samples: list[int] = []

    def extend(self, samples: list[int], ids: list[list[int]], room: int) -> torch.Tensor:
        width, device = max(map(len, ids)), self.model.device
        tokens = torch.zeros(len(ids), width, dtype=torch.long)
        # [B, L]: True on the rows' tokens
        self.attention = torch.zeros(len(ids), width, dtype=torch.bool)
        for i, row in enumerate(ids):  # left-padded, so every row's next token lands in one column
            tokens[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            self.attention[i, width - len(row):] = True
        tokens, self.attention = tokens.to(device), self.attention.to(device)
        self.cache, self.samples = DynamicCache(config=self.model.config), list(samples)
        self.pos = self.attention.sum(1)
        return self._logits(tokens, (self.attention.cumsum(-1) - 1).clamp(min=0))

    def step(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        self.attention = torch.cat([self.attention, valid[:, None]], dim=1)
        positions = self.pos[:, None]
        self.pos = self.pos + valid
        return self._logits(tokens[:, None], positions)

    def keep(self, rows: torch.Tensor, samples: list[int]) -> None:
        self.cache.batch_select_indices(rows)
        self.attention, self.pos, self.samples = self.attention[rows], self.pos[rows], samples

    def drop(self, gone: torch.Tensor) -> torch.Tensor:
        left = fill_gaps(gone)[0]  # the lean decoder's order, so both sample the same
        self.keep(left, [self.samples[r] for r in left.tolist()])
        return left

    def _logits(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=self.attention, position_ids=positions,
                          cache=self.cache, logits_to_keep=1).logits[:, -1].float()


def make_decoder(model) -> Decoder:
    """The decoder of a rollout: the lean one where it computes exactly what the model's own
    forward does, the plain one otherwise."""
    if lean_ok(model):
        return LeanDecoder(model)
    return PlainDecoder(model)


# ------------------------------------------------------------------ the lean Qwen2 forward

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


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
            scale: float) -> torch.Tensor:
    """Attention of queries q [B, heads, T, head_dim] over keys and values
    [B, kv_heads, L, head_dim] (grouped-query: query head h reads KV head h // group, group =
    heads / kv_heads), with the additive mask `bias` of _bias (0 where a query sees a key, -inf
    elsewhere). Returns [B, heads, T, head_dim].

    SDPA always gets as many key and value heads as query heads: CUDA's flash kernel takes no
    mask and its memory-efficient one no unequal head counts, so enable_gqa with a mask would
    fall to the math kernel and its float32 scores [B, heads, T, L]. A prefill repeats this
    layer's keys and values for every query head (a copy of T x heads x head_dim per row,
    where stacking the queries instead would repeat the [T, L] mask); a decode step stacks
    the query heads that share a KV head as that head's queries, [B, kv_heads, group,
    head_dim], and copies nothing. The fused kernels keep scores and softmax in float32
    whatever the inputs' dtype, as transformers' SDPA attention does."""
    batch, heads, width, dim = q.shape
    group = heads // keys.shape[1]
    if width > 1:
        if group > 1:
            keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
        return torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=bias,
                                                                scale=scale)
    stacked = q.view(batch, keys.shape[1], group, dim)
    # on CPU, two batched matmuls, scale and mask folded into the first: ~40% less time than
    # SDPA's CPU flash kernel, which is slow for a few queries
    if bias.dim() == 3:
        scores = torch.baddbmm(bias, stacked.flatten(0, 1), keys.flatten(0, 1).transpose(1, 2),
                               alpha=scale)
        out = scores.softmax(-1) @ values.flatten(0, 1)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(stacked, keys, values,
                                                               attn_mask=bias, scale=scale)
    return out.view(batch, heads, 1, dim)


def _bias(sees: torch.Tensor, kv_heads: int, dtype: torch.dtype,
          decode_on_cpu: bool) -> torch.Tensor:
    """The additive attention mask of one forward, built once for all layers from `sees`
    [B, T, L] (True where query t sees key l): [B, 1, T, L] for SDPA; for a decode step on CPU,
    [B x kv_heads, 1, L] for baddbmm, one row per (batch row, KV head)."""
    bias = torch.zeros(sees.shape, dtype=dtype,
                       device=sees.device).masked_fill_(~sees, float("-inf"))
    return bias.repeat_interleave(kv_heads, dim=0) if decode_on_cpu else bias[:, None]


def fill_gaps(gone: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows left when the rows where `gone` [B] is True leave a batch, the last ones moved
    into the gaps: (the old numbers of the rows left, in their new order; the gaps; the rows
    that move into them)."""
    left = len(gone) - int(gone.sum())
    gaps, movers = gone[:left].nonzero().squeeze(1), left + (~gone[left:]).nonzero().squeeze(1)
    order = torch.arange(left, device=gone.device)
    order[gaps] = movers
    return order, gaps, movers


class LeanDecoder:
    """model.Decoder for a Qwen2 model where lean_ok holds: the same logits as its transformers
    forward, from its own weights, keeping each conversation's keys and values across turns.

    The live batch has one row per conversation being decoded (`samples` names them). The keys
    and values of all layers live in one buffer each, [layers, rows, kv_heads, columns,
    head_dim]; `valid` [rows, columns] marks the columns that hold a token of the row's
    conversation (not left padding, nor a token fed after the conversation's turn ended), and
    `pos` [rows] counts those tokens: the position of the next one. Buffers are sized for the
    whole turn, so nothing grows by torch.cat, which would copy the whole cache at every token.
    A conversation that leaves the batch has its keys and values kept ("parked", only its own
    columns), and the next turn's extend() puts them back and forwards only the new tokens
    (tool results and the next generation prompt), not the whole conversation again.

    The matmuls read a copy of the weights made once per rollout, in the compute dtype (bf16
    on CUDA, as autocast would cast them at every call; the model's own dtype elsewhere), with
    q, k and v packed into one matrix and the MLP's gate and up into another: two matmuls
    where there would be five. Activations follow autocast's rules: the residual stream and
    the norms stay in the model's dtype, each matmul casts its input to the weights' dtype.
    Keys and values are stored in the compute dtype."""

    def __init__(self, model: Qwen2ForCausalLM):
        self.model, config = model, model.config
        self.dtype = torch.bfloat16 if model.device.type == "cuda" else model.dtype
        # several are packed into one matrix; one alone is not copied unless cast
        def weight(*modules):
            return (torch.cat([m.weight for m in modules]) if len(modules) > 1
                    else modules[0].weight).detach().to(self.dtype)

        self.layers = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(dict(
                qkv=weight(attn.q_proj, attn.k_proj, attn.v_proj), o=weight(attn.o_proj),
                qkv_bias=torch.cat([attn.q_proj.bias, attn.k_proj.bias,
                                    attn.v_proj.bias]).detach().to(self.dtype),
                gate_up=weight(mlp.gate_proj, mlp.up_proj), down=weight(mlp.down_proj),
                act=mlp.act_fn, norms=(layer.input_layernorm, layer.post_attention_layernorm),
                scaling=attn.scaling))
        self.lm_head = weight(model.lm_head)
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = model.model.layers[0].self_attn.head_dim
        self.cos = self.sin = torch.zeros(0, self.head_dim, device=model.device)
        self.samples: list[int] = []
        self.parked: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # sample -> its keys, values
        self.keys = self.values = torch.zeros(len(self.layers), 0, self.kv_heads, 0, self.head_dim,
                                              dtype=self.dtype, device=model.device)
        self.valid = torch.zeros(0, 0, dtype=torch.bool, device=model.device)
        self.pos = torch.zeros(0, dtype=torch.long, device=model.device)
        self.length = 0  # the columns filled so far

    def extend(self, samples: list[int], ids: list[list[int]], room: int) -> torch.Tensor:
        """Make the live batch the conversations `samples`, of token ids `ids`: each continues
        from the keys and values kept for it (none for a new one), and only its tokens beyond
        those are forwarded, left-padded. `room`: the most tokens any will decode after.
        Returns the float32 logits [B, vocab] after each conversation's last token."""
        self._park(range(len(self.samples)))
        kept = [self.parked.get(s) for s in samples]
        self.parked = {}  # a conversation that does not go on now never will
        counts = torch.tensor([0 if k is None else len(k[0]) for k in kept])
        new = [row[count:] for row, count in zip(ids, counts.tolist())]
        cached, width = int(counts.max()), max(len(row) for row in new)
        self._rotary(max(map(len, ids)) + room)
        device = self.valid.device
        self.keys = self.values = None  # free the old buffers before making the new ones
        shape = (len(self.layers), len(samples), self.kv_heads, cached + width + room,
                 self.head_dim)
        self.keys = torch.empty(shape, dtype=self.dtype, device=device)
        self.values = torch.empty_like(self.keys)
        # Each kept conversation right-aligned in the first `cached` columns, so the holes are on
        # the left, like padding. Holes hold zeros: a masked key gets weight 0, but 0 times the
        # NaN that uninitialised memory may hold is NaN.
        self.valid = ((torch.arange(shape[3]) >= cached - counts[:, None])
                      & (torch.arange(shape[3]) < cached))
        self.valid = self.valid.to(device)
        holes = (~self.valid[:, :cached]).nonzero(as_tuple=True)
        self.keys[:, holes[0], :, holes[1]], self.values[:, holes[0], :, holes[1]] = 0, 0
        if cached:
            filled = self.valid.nonzero(as_tuple=True)  # row by row, in column order: as kept
            self.keys[:, filled[0], :, filled[1]] = torch.cat([k for k, _ in filter(None, kept)])
            self.values[:, filled[0], :, filled[1]] = torch.cat([v for _, v in filter(None, kept)])
        self.samples, self.length = list(samples), cached
        self.pos = counts.to(device)
        tokens = torch.zeros(len(new), width, dtype=torch.long)
        valid = torch.zeros(len(new), width, dtype=torch.bool)
        for r, row in enumerate(new):
            tokens[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
            valid[r, width - len(row):] = True
        return self._forward(tokens.to(device), valid.to(device))

    def step(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The float32 logits [B, vocab] after one more token per row (`tokens` [B]); where
        `valid` [B] is False the row's turn has ended and its token is not part of it."""
        return self._forward(tokens[:, None], valid[:, None])

    def keep(self, rows: torch.Tensor, samples: list[int]) -> None:
        """Make batch rows `rows` [B'] (repeats allowed) the live batch, in that order, as the
        conversations `samples`. Only the filled columns are copied."""
        keys, values = self.keys, self.values
        self.keys = keys.new_empty(keys.shape[0], len(rows), *keys.shape[2:])
        self.values = torch.empty_like(self.keys)
        self.keys[:, :, :, :self.length] = keys[:, rows, :, :self.length]
        self.values[:, :, :, :self.length] = values[:, rows, :, :self.length]
        self.samples, self.valid, self.pos = samples, self.valid[rows], self.pos[rows]

    def drop(self, gone: torch.Tensor) -> torch.Tensor:
        """Take the rows where `gone` [B] is True out of the live batch, parking their
        conversations. Rows from the end move into the gaps, so only as many rows are copied as
        leave (the rest stay in place). Returns the old numbers of the rows left, in their new
        order."""
        self._park(gone.nonzero().squeeze(1).tolist())
        order, gaps, movers = fill_gaps(gone)
        left = len(order)
        for buffer in (self.keys, self.values):
            buffer[:, gaps, :, :self.length] = buffer[:, movers, :, :self.length]
        self.keys, self.values = self.keys[:, :left], self.values[:, :left]
        self.samples = [self.samples[r] for r in order.tolist()]
        self.valid, self.pos = self.valid[order], self.pos[order]
        return order

    def _park(self, rows) -> None:
        """Keep the keys and values of the conversations in batch rows `rows`: only the columns
        that hold their tokens, in order, as [tokens, layers, kv_heads, head_dim]."""
        rows = torch.as_tensor(list(rows), dtype=torch.long, device=self.valid.device)
        held = self.valid[rows, :self.length]
        which, columns = held.nonzero(as_tuple=True)  # row by row, in column order
        counts = held.sum(1).tolist()
        keys = self.keys[:, rows[which], :, columns].split(counts)
        values = self.values[:, rows[which], :, columns].split(counts)
        self.parked.update(zip([self.samples[r] for r in rows.tolist()], zip(keys, values)))

    def _rotary(self, positions: int) -> None:
        """The rotary cos/sin [positions, head_dim] of every position below `positions`, from the
        model's own rotary module, so rope scaling and theta are honoured."""
        if len(self.cos) < positions:
            # gives the dtype and device, as hidden states do
            embed = self.model.model.embed_tokens.weight
            cos, sin = self.model.model.rotary_emb(
                embed, torch.arange(positions, device=embed.device)[None])
            self.cos, self.sin = cos[0], sin[0]

    def _forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The float32 logits [B, vocab] after the last of `ids` [B, T] (`valid` [B, T] False on
        left padding and on tokens after a turn's end); their keys and values go to the next T
        columns, at the positions that follow each row's tokens. The same computation as
        transformers' forward."""
        batch, width = ids.shape
        start, end = self.length, self.length + width
        self.length = end
        self.valid[:, start:end] = valid
        positions = self.pos[:, None] + (valid.cumsum(-1) - 1).clamp(min=0)
        self.pos = self.pos + valid.sum(-1)
        seen = self.valid[:, :end]
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        hidden = self.model.model.embed_tokens(ids)
        if width == 1:  # a decode step: the new token sees every token of its row so far
            sees = seen[:, None]
        else:
            # query i sees the row's tokens up to start + i; padding queries see all earlier keys,
            # so no row of the mask is empty (an empty row gives NaN, which the padding's keys
            # would carry on)
            causal = torch.ones(width, end, dtype=torch.bool, device=ids.device).tril(start)
            sees = causal & (seen[:, None, :] | ~valid[:, :, None])
        bias = _bias(sees, self.kv_heads, self.dtype,
                     decode_on_cpu=width == 1 and ids.device.type == "cpu")
        sizes = [self.heads * self.head_dim] + [self.kv_heads * self.head_dim] * 2
        for i, layer in enumerate(self.layers):
            norm1, norm2 = layer["norms"]
            qkv = _linear(_norm(norm1, hidden), layer["qkv"], layer["qkv_bias"])
            q, k, v = (x.view(batch, width, -1, self.head_dim).transpose(1, 2)
                       for x in qkv.split(sizes, dim=-1))
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            self.keys[i, :, :, start:end] = k
            self.values[i, :, :, start:end] = v
            out = _attend(q.to(self.dtype), self.keys[i, :, :, :end], self.values[i, :, :, :end],
                          bias, layer["scaling"])
            hidden = hidden + _linear(out.transpose(1, 2).reshape(batch, width, -1), layer["o"])
            gate, up = _linear(_norm(norm2, hidden), layer["gate_up"]).chunk(2, dim=-1)
            hidden = hidden + _linear(layer["act"](gate) * up, layer["down"])
        return _linear(_norm(self.model.model.norm, hidden[:, -1]), self.lm_head).float()


def _linear(x: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias, x cast to the weight's dtype first (what autocast does to a matmul)."""
    return torch.nn.functional.linear(x.to(weight.dtype), weight, bias)


# ------------------------------------------------------------------ the self-check

@torch.inference_mode()
def _lean_greedy(model, prompts: list[list[int]], n: int,
                 steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` greedy tokens after each prompt through LeanDecoder, as rollouts decode: one
    left-padded forward of the prompts, its rows repeated `n` times, and every other row
    dropped halfway (rows leave the batch as their samples stop). Returns the numbers of the
    rows kept to the end [rows] (row r samples prompt r // n), their tokens and log-probs
    [rows, steps], and how many tokens were decoded."""
    device = model.device
    decoder, samples = LeanDecoder(model), list(range(len(prompts) * n))
    logits = decoder.extend(samples[::n], prompts, steps).repeat_interleave(n, 0)
    decoder.keep(torch.arange(len(prompts), device=device).repeat_interleave(n), samples)
    rows = torch.arange(len(samples), device=device)
    tokens, logps = [], []
    for t in range(steps):
        if t == steps // 2:
            left = decoder.drop(torch.arange(len(rows), device=device) % 2 == 1)
            logits, rows = logits[left], rows[left]
            tokens, logps = [x[left] for x in tokens], [x[left] for x in logps]
        logp = logits.log_softmax(-1)
        tokens.append(logp.argmax(-1))
        logps.append(logp.gather(1, tokens[-1][:, None])[:, 0])
        logits = decoder.step(tokens[-1], torch.ones(len(rows), dtype=torch.bool, device=device))
    decoded = len(samples) * (steps // 2) + len(rows) * (steps - steps // 2)
    return rows, torch.stack(tokens, 1), torch.stack(logps, 1), decoded


@torch.inference_mode()
def _generate_greedy(model, tokenizer, prompts: list[list[int]], n: int, steps: int):
    """The same through transformers' own generate() (the model's forward with its cache),
    every row to the end: tokens, their log-probs and the margin of the best log-prob over
    the second best [rows, steps or fewer], a mask of the tokens up to each row's first end
    token (generate pads after it) and how many were decoded."""
    width, device = max(len(p) for p in prompts), model.device
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts]).repeat_interleave(n, 0)
    attention = torch.tensor([[i >= width - len(p) for i in range(width)]
                              for p in prompts]).repeat_interleave(n, 0)
    out = model.generate(input_ids=ids.to(device), attention_mask=attention.long().to(device),
                         do_sample=False, max_new_tokens=steps, min_new_tokens=0,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=pad)
    tokens = out.sequences[:, width:]
    logp = torch.stack(out.logits, 1).float().log_softmax(-1)[:, :tokens.shape[1]]
    best = logp.topk(2, dim=-1).values
    ends = torch.isin(tokens, torch.tensor(model.generation_config.eos_token_id or [],
                                           device=device)).long()
    kept = ends.cumsum(1) - ends == 0  # up to and including the first end token
    return (tokens, logp.gather(2, tokens[..., None])[..., 0], best[..., 0] - best[..., 1], kept,
            tokens.numel())


def agreement(tokens: torch.Tensor, logps: torch.Tensor, margins: torch.Tensor, kept: torch.Tensor,
              lean_tokens: torch.Tensor, lean_logps: torch.Tensor,
              tolerance: float) -> tuple[int, int, float]:
    """How two greedy decodes of the same rows agree ([rows, steps] each: generate()'s tokens,
    log-probs, best-over-second margins and `kept` mask, the lean tokens and log-probs).
    A row may part from generate() only at a near tie, where generate()'s two best log-probs
    are within 2 x `tolerance` (rounding may swap them; after that the rows read different
    text). Returns (rows that part elsewhere, rows that part at a near tie, the largest
    log-prob gap over the tokens before any parting)."""
    differs = (tokens != lean_tokens) & kept
    parts = differs.any(1)
    first = torch.where(parts, differs.int().argmax(1), tokens.shape[1])
    tie = margins.gather(1, first.clamp(max=tokens.shape[1] - 1)[:, None])[:, 0] <= 2 * tolerance
    before = kept & (torch.arange(tokens.shape[1], device=tokens.device) < first[:, None])
    gap = (logps - lean_logps).abs()[before].max().item() if before.any() else 0.0
    return int((parts & ~tie).sum()), int((parts & tie).sum()), gap


PROMPTS = ["What is 2 plus 3?", "A box holds 113 pens. How many pens are in 18 boxes?",
           "Tom has 250 cups and sells 75. How many are left?",
           "What is the area of a square of side 12?"]
# The largest log-prob gap allowed. CPU, float32: sums in another order, nothing more. CUDA,
# bf16 under autocast, as rollouts run: both forwards round every matmul's output to bf16 (a
# relative step of 2^-8; the logits themselves to 0.125 past 16), each after its own kernels.
TOLERANCE = {"cpu": 1e-4, "cuda": 0.25}


def main(argv: list[str] | None = None) -> None:
    """The self-check (sys.argv when `argv` is None); exits with 1 when the two forwards
    disagree."""
    ap = argparse.ArgumentParser(
        description="Check the lean forward against transformers' generate().")
    ap.add_argument("--model", default="runs/tiny/checkpoint",
                    help="HF model name or folder (default: the tiny default, built by python "
                         "sft.py or rl.py)")
    ap.add_argument("--device", default="cpu",
                    help="cpu (float32), or cuda: float32 weights under bf16 autocast, as rl.py's "
                         "rollouts run")
    args = ap.parse_args(argv)
    if args.device not in TOLERANCE or (args.device == "cuda" and not torch.cuda.is_available()):
        sys.exit(f"error: --device {args.device}: cpu, or cuda on a machine with a CUDA GPU "
                 "that torch can use")
    device = torch.device(args.device)
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model,
                                                     dtype=torch.float32).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except Exception as e:  # missing, truncated or foreign files raise many kinds of error
        sys.exit(f"error: cannot load '{args.model}': "
                 f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}")
    if not lean_ok(model):
        print(f"{args.model}: the lean forward does not apply to it; "
              "rollouts take the model's own forward")
        return
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                             add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"] for q in PROMPTS]
    n, steps, cuda = 16, 128, device.type == "cuda"
    precision = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    print(f"engine check: {args.model}, {len(prompts)} prompts x {n} rows, "
          f"{steps} greedy tokens each, "
          + ("cuda, bf16 autocast" if cuda else f"cpu, {torch.get_num_threads()} thread(s)"))
    rates, results = {}, {}
    for name, run in [("generate()", lambda: _generate_greedy(model, tokenizer, prompts, n, steps)),
                      ("lean forward", lambda: _lean_greedy(model, prompts, n, steps))]:
        with precision:
            run()  # warm-up
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            results[name] = run()
            if cuda:
                torch.cuda.synchronize()
        rates[name] = results[name][-1] / (time.perf_counter() - start)
        print(f"  {name:14s} {rates[name]:8.0f} tokens/s")
    print(f"  speed-up {rates['lean forward'] / rates['generate()']:.2f}x")
    (tokens, logps, margins, kept, _), (rows, lean_tokens, lean_logps, _) = results.values()
    # the rows kept to the end
    tokens, logps, margins, kept = tokens[rows], logps[rows], margins[rows], kept[rows]
    width = tokens.shape[1]
    tolerance = TOLERANCE[device.type]
    wrong, ties, gap = agreement(tokens, logps, margins, kept, lean_tokens[:, :width],
                                 lean_logps[:, :width], tolerance)
    checks = {(f"same greedy tokens up to each row's end ({ties} of {len(rows)} rows part "
               "at a near tie)"): wrong == 0,
              f"log-probs within {tolerance:g} (largest gap {gap:.1e})": gap <= tolerance}
    for what, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
