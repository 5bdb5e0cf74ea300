"""The student: load (or build) a causal LM, lay out chat conversations as tokens, sample
whole tool-using conversations, and score tokens with log-probs.

Data flow:
    ensure_tiny()                       -> the built-in tiny default at runs/tiny, built once
    load(name)                          -> model, tokenizer (the tiny default or any HF model)
    save(run_dir, model, tokenizer)     -> run_dir/checkpoint, which load(run_dir) reads back
    prompt(tokenizer, question)         -> the chat messages a rollout starts from
    encode(tokenizer, messages, tools)  -> token ids + loss mask of a teacher trajectory (SFT)
    rollout(model, tokenizer, prompts)  -> Rollouts (RL): sampled ids, mask, log-probs, calls
    collate(rollouts) + logprobs(model) -> the tensors of the GRPO update

Token in, token out: a rollout keeps the exact sampled ids; template text around them (the
prompt, tool results, the next generation prompt) is rendered by the tokenizer's chat
template and tokenized on its own, never re-tokenized from decoded model text. encode()
cuts a finished conversation into the very same pieces, so SFT trains what rollouts sample.
Padding is always carried by attention masks, never inferred from token ids.

A rollout samples each turn through engine.py (engine.sample_turn: the decode loop, the
sampler and the KV-cached forward passes); this file lays out the conversation around the
turns: the prompt, the tool calls parsed and run, their results rendered by the template.
"""
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import torch
from jinja2 import TemplateError
from transformers import (AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM,
                          Qwen2Tokenizer)

import engine
import tasks
from tools import CALL_RE, call_tool, parse_tool_calls, schemas


class ModelError(Exception):
    """A model or tokenizer that cannot be used; the message is one line for the user."""


# ------------------------------------------------------------------ the tiny default

TINY_PATH = "runs/tiny"  # where the built-in tiny default is built (ensure_tiny)
# 256 bytes + special tokens + merges: every word of the benchmark is one token
TINY_VOCAB = 1024
TINY_SEED = 0

# Short on purpose: no tool schemas in the prompt (the tiny model learns its tools from the
# teacher data, and every prompt token costs CPU time). Same flow as Qwen2.5: an assistant
# turn ends with EOS (<|end|>), with or without tool calls; tool results come back as tool
# turns; then the assistant continues.
TINY_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{{- '<|assistant|>' + (m.content or '') }}"
    "{%- for call in m.tool_calls or [] %}"
    "{%- set f = call.function if call.function is defined else call %}"
    "{{- '<tool_call>\\n{\"name\": \"' + f.name + '\", \"arguments\": ' + (f.arguments | tojson)"
    " + '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|end|>' }}"
    "{%- else %}"
    "{{- '<|' + m.role + '|>' + m.content }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}"
)
# special: dropped from decoded text
TINY_ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
TINY_ADDED = ["<tool_call>", "</tool_call>"]  # plain added tokens: they stay in decoded text


def build_tokenizer(texts: list[str]) -> Qwen2Tokenizer:
    """A small byte-level BPE tokenizer trained on `texts`, with the tiny chat template.

    It is a Qwen2Tokenizer (Qwen2.5's normalizer, pre-tokenizer and decoder, only a smaller
    vocabulary): AutoTokenizer loads any qwen2-type checkpoint as one, so training with the
    same pipeline keeps the saved and the loaded tokenizer identical. Its pre-tokenizer puts
    every digit in a token of its own, so numbers are spelled digit by digit."""
    base = Qwen2Tokenizer(eos_token="<|end|>", pad_token="<|pad|>", unk_token=None)
    tokenizer = base.train_new_from_iterator(texts, vocab_size=TINY_VOCAB,
                                             new_special_tokens=TINY_ROLES, show_progress=False)
    tokenizer.add_tokens(TINY_ADDED)
    tokenizer.chat_template = TINY_TEMPLATE
    return tokenizer


def build_tiny(path: str, texts: list[str]) -> None:
    """Create the tiny default in the run folder `path`: a ~1M-parameter Qwen2 with random
    weights (fixed seed) and a BPE tokenizer trained on `texts`."""
    tokenizer = build_tokenizer(texts)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=384,
                         max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(TINY_SEED)
    save(path, Qwen2ForCausalLM(config), tokenizer)


# The tokenizer learns from the first four conditions. The later ones are written in their
# words (tests/test_model.py checks it), so adding a condition leaves the tokenizer, the tiny
# student's initial weights and every earlier result as they were.
CORPUS_CONDITIONS = ("hidden", "refuted", "wrong", "none")


def tiny_corpus(n_train: int = 4000, seed: int = 0) -> list[str]:
    """The text the tiny student's tokenizer learns from: the system prompt, the tool schemas,
    and the training problems of CORPUS_CONDITIONS, as their trajectories (teacher's and
    demonstrator's) print them; none whose question is a test question of any condition
    (a condition's training set holds none of its own, but may hold another's)."""
    import teacher  # here: teacher.py's LLM teacher rolls out through this file

    texts = [tasks.SYSTEM_PROMPT] + [json.dumps(s) for s in schemas()]
    suites = {condition: tasks.benchmark(condition, n_train=n_train, seed=seed)
              for condition in tasks.CONDITIONS}
    tests = {p.question for suite in suites.values() for split in ("test_id", "test_ood")
             for p in suite[split]}
    for condition in CORPUS_CONDITIONS:
        for problem in (p for p in suites[condition]["train"] if p.question not in tests):
            for plan in (problem.plan, problem.demo):
                # the system prompt is in already
                for m in teacher.trajectory(problem, plan)[1:] if plan else []:
                    texts.append(m.get("content") or "")
                    texts += [json.dumps(c["function"]) for c in m.get("tool_calls") or []]
    return texts


def ensure_tiny() -> None:
    """Build the built-in tiny student (TINY_PATH) unless it is there already."""
    if not checkpoint_dir(TINY_PATH):
        print(f"building the tiny student at {TINY_PATH}")
        build_tiny(TINY_PATH, tiny_corpus())


# ------------------------------------------------------------------ saving and loading

def save(path: str, model, tokenizer, state: dict | None = None) -> None:
    """Write an HF checkpoint (save_pretrained of model and tokenizer, plus the trainer
    `state` as trainer_state.pt if given) to `path`/checkpoint. The new checkpoint is written
    aside and swapped in whole, so a crash never leaves a half-written one: between the two
    renames the previous one is `path`/.checkpoint-old, which checkpoint_dir() falls back to."""
    os.makedirs(path, exist_ok=True)
    final, old = os.path.join(path, "checkpoint"), os.path.join(path, ".checkpoint-old")
    for name in os.listdir(path):  # folders of saves that crashed before their swap
        if name.startswith(".checkpoint-") and name != ".checkpoint-old":
            shutil.rmtree(os.path.join(path, name), ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=path, prefix=".checkpoint-")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if state is not None:
        torch.save(state, os.path.join(tmp, "trainer_state.pt"))
    if os.path.isdir(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_dir(path: str) -> str | None:
    """The checkpoint folder of the run folder `path` (None if it has none): `checkpoint`,
    or the previous one when a crash came between the two renames of save()."""
    for name in ("checkpoint", ".checkpoint-old"):
        if os.path.isdir(os.path.join(path, name)):
            return os.path.join(path, name)
    return None


def load(name_or_path: str | None = None, device: str | torch.device = "cpu", compile: bool = False,
         frozen: bool = False) -> tuple[AutoModelForCausalLM, Qwen2Tokenizer]:
    """Load a causal LM and its tokenizer: the tiny default (at TINY_PATH, built by
    build_tiny) when `name_or_path` is None, else a run folder written by save(), a folder
    written by save_pretrained, or a hub name. The same code path for all of them.

    Weights stay float32: on CUDA the forward passes run under bf16 autocast (see
    `engine.autocast`), so AdamW updates at RL learning rates (1e-6) are not lost to bf16
    rounding.
    `compile=True` compiles the transformer stack for the training passes (logprobs; worth
    it on GPU); rollouts decode eagerly, since their shapes change at every step.
    `frozen=True` loads a model that is never trained (RL's reference): no gradients, and
    on CUDA its linear layers in bf16 (about half the memory of float32). Autocast casts the
    policy's float32 weights to bf16 for the same matmuls and keeps the rest (embeddings,
    norms, the residual stream) float32 in both, so at the first step reference and policy
    compute the same numbers.
    Raises ModelError with one line when the files are missing or unusable, or the device
    is."""
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ModelError(f"'{device}' is not a device torch knows "
                         "(cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}': this machine has no CUDA GPU that torch can use")
    if name_or_path is None:
        if not checkpoint_dir(TINY_PATH):
            raise ModelError(f"the built-in tiny student is not built yet at {TINY_PATH} "
                             "(python sft.py or python rl.py builds it)")
        name_or_path = TINY_PATH
    name_or_path = checkpoint_dir(name_or_path) or name_or_path  # a run folder, or a model
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:  # missing, truncated or foreign files raise many kinds of error
        if not os.path.isdir(name_or_path):
            raise ModelError(f"'{name_or_path}' is neither a folder nor a model the hub can "
                             "serve here") from None
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"'{name_or_path}' holds no usable model and tokenizer: "
                         f"{reason}") from None
    if not _ids(tokenizer, "1 + 1"):  # e.g. a folder without tokenizer files gives an empty one
        raise ModelError(f"the tokenizer of '{name_or_path}' is empty (missing tokenizer files?)")
    if not tokenizer.chat_template:
        raise ModelError(f"the tokenizer of '{name_or_path}' has no chat template; "
                         "use a chat/instruct model")
    # harmless: padding is read from attention masks, never from ids
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    if frozen:
        model.requires_grad_(False)
        if device.type == "cuda":
            matmuls_in_bf16(model)
    if compile:
        model.model.compile(dynamic=True)
    return model, tokenizer


def matmuls_in_bf16(model) -> None:
    """Store `model`'s linear layers in bf16, except an output layer tied to the embeddings
    (the embedding lookup would then give bf16 hidden states, where autocast keeps float32)."""
    embeddings = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not embeddings:
            module.to(torch.bfloat16)


def is_tiny(tokenizer) -> bool:
    """Whether `tokenizer` is the built-in tiny default's (its own short prompt, no tool
    schemas), rather than a real model's (the authors' prompt, tools in the template)."""
    return tokenizer.chat_template == TINY_TEMPLATE


def prompt(tokenizer, question: str) -> list[dict]:
    """The chat messages that rollouts of `tokenizer`'s model start from (tasks.prompt): the
    tiny student's short system prompt, or the authors' prompt for a real model."""
    return tasks.prompt(question, authors=not is_tiny(tokenizer))


# ------------------------------------------------------------------- chat layout (SFT)

def _render(tokenizer, messages: list[dict], tools: list[dict] | None,
            generation_prompt: bool) -> str:
    if isinstance(tokenizer.chat_template, str) and "tools" not in tokenizer.chat_template:
        # a template that never names the tools cannot read them, and converting them
        # takes most of a render
        tools = None
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except TemplateError as e:  # e.g. a template that refuses a system message or tools
        raise ModelError(f"the chat template cannot render this conversation: {e}") from None


def _glue(head: str, eos: str, ends: int) -> str:
    """The template text the model reads next: what `head` (a rendering that ends with the
    generation prompt) holds after its `ends`-th EOS, where `ends` counts the EOS tokens of
    the pieces laid out so far."""
    at = 0
    for _ in range(ends):
        found = head.find(eos, at)
        if found < 0:
            raise ModelError("the chat template drops the EOS of earlier turns; "
                             "token-in/token-out rollouts need one that keeps them")
        at = found + len(eos)
    return head[at:]


def _pieces(tokenizer, messages: list[dict], tools: list[dict] | None) -> list[tuple[str, int]]:
    """Cut the rendered conversation into (text, sampled) pieces: template text the model
    reads (0), and each assistant turn from after its generation prompt up to and including
    its EOS (1). Ends at the last assistant EOS, or with the generation prompt when the last
    message is not the assistant's (text after an EOS is template glue, never sampled).

    A turn is cut from the rendering where it is the last message: there the template writes
    it as the model does after the generation prompt. Some templates render a turn otherwise
    once it is no longer last (Qwen3 drops the empty think block of an earlier turn), so the
    glue after a turn is found by counting EOS tokens, not characters (_glue)."""
    eos = tokenizer.eos_token
    pieces, ends = [], 0  # ends: the EOS tokens in the pieces so far
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], tools, True)
        full = _render(tokenizer, messages[:i + 1], tools, False)
        glue = _glue(head, eos, ends)
        end = full.find(eos, len(head))
        if not full.startswith(head) or end < 0:
            raise ModelError("the chat template does not render an assistant turn as its "
                             "generation prompt followed by text ending with EOS; "
                             "token-in/token-out rollouts need one that does")
        pieces += [(glue, 0), (full[len(head):end + len(eos)], 1)]
        ends += glue.count(eos) + 1  # the turn ends with its one EOS
    if not messages or messages[-1]["role"] != "assistant":
        pieces.append((_glue(_render(tokenizer, messages, tools, True), eos, ends), 0))
    return [(text, sampled) for text, sampled in pieces if text]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer, messages: list[dict],
           tools: list[dict] | None) -> tuple[list[int], list[int]]:
    """Token ids of a conversation rendered by the chat template, and its loss mask: 1 on the
    tokens the assistant produces (content, tool-call text, the EOS closing each of its
    turns), 0 on system/user/tool text and template glue. Laid out exactly like a rollout:
    each piece is tokenized on its own, each assistant turn is rendered as the last message
    (as the model writes it after the generation prompt), and the ids stop at the last
    assistant EOS."""
    ids, mask = [], []
    for text, sampled in _pieces(tokenizer, messages, tools):
        piece = _ids(tokenizer, text)
        ids += piece
        mask += [sampled] * len(piece)
    return ids, mask


# ------------------------------------------------------------ whole conversations (RL)

@dataclass
class Rollout:
    # prompt + everything after (sampled turns and tool-response/template tokens)
    ids: list[int]
    mask: list[int]         # 1 only on sampled tokens
    # the sampler's log-prob of each sampled token (softmax(logits / T)), 0.0 elsewhere
    logprobs: list[float]
    prompt_len: int
    # the assistant text of all turns (decoded sampled tokens), joined by "\n"
    text: str
    # every parsed call, in order, each {"name", "arguments", "error", "result"}
    calls: list[dict]
    turns: int              # assistant turns generated
    finished: bool          # True iff the last assistant turn ended with EOS and had no tool call
    # the turns as chat messages (assistant + tool)
    messages: list[dict] = field(default_factory=list)

    @property
    def final(self) -> str:
        """The last assistant turn, outside its valid tool calls: where the answer must be."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")


def _tool_turn(tokenizer, prompt: list[dict], results: list[tuple[str, str]],
               tools: list[dict] | None) -> list[int]:
    """Token ids of the template text between the EOS closing a tool-calling turn and the
    next sampled token: the tool results (name, text) as tool messages and the generation
    prompt. Rendered after a stand-in assistant turn, since the text that follows an EOS
    depends neither on what the turn said nor on how the template renders it there."""
    stand_in = {"role": "assistant", "content": "..."}
    replies = [{"role": "tool", "name": name, "content": text} for name, text in results]
    return _ids(tokenizer, _pieces(tokenizer, prompt + [stand_in] + replies, tools)[-1][0])


def _assistant_message(text: str, calls: list[dict]) -> dict:
    """A sampled turn as a chat message: the valid calls (`calls`, parsed from `text` in order)
    in the OpenAI/HF `tool_calls` shape, the rest of the text as content. An invalid call's
    block stays in the content, so the message still shows what its error reply answers."""
    blocks = iter(calls)
    content = CALL_RE.sub(lambda m: "" if next(blocks)["error"] is None else m.group(0),
                          text).strip()
    return {"role": "assistant", "content": content,
            "tool_calls": [{"type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]}}
                           for c in calls if c["error"] is None]}


def rollout(model, tokenizer, prompts: list[list[dict]], tools: list[dict] | None, n: int = 1,
            max_turns: int = 5, max_tokens: int = 256, temperature: float = 1.0, top_k: int = 0,
            top_p: float = 1.0, greedy: bool = False, seed: int | None = None) -> list[Rollout]:
    """Sample `n` tool-using conversations per prompt (chat messages, e.g. tasks.prompt(q)).

    Tokens come from softmax(logits / temperature), cut to the `top_k` most likely (0: no
    cut) and the `top_p` nucleus, or the argmax when `greedy`. Each assistant turn ends at an
    end token (engine.end_ids: EOS and the generation config's). A turn's tool calls are parsed
    and run (a malformed call gets its 'error: ...' text back); if turns remain, the results go
    back through the chat template and the model continues. A conversation is finished when a
    turn ends with EOS and holds no tool call; it is cut off (finished=False) when it is out of
    turns or out of `max_tokens` (all tokens after the prompt: sampled and tool responses).

    One decoder serves all turns: the lean one keeps each conversation's keys and values, so a
    later turn forwards only the tool results and the next generation prompt.
    Returns len(prompts) * n rollouts, the n samples of each prompt adjacent."""
    if not greedy and (temperature <= 0 or not 0 < top_p <= 1 or top_k < 0):
        raise ValueError("sampling needs temperature > 0, top_k >= 0 and 0 < top_p <= 1 "
                         "(greedy=True for argmax)")
    generator = None if seed is None else torch.Generator(model.device).manual_seed(seed)
    ends = torch.tensor(engine.end_ids(model, tokenizer), device=model.device)
    pick = (temperature, top_k, top_p, greedy, generator)
    prompt_ids = [encode(tokenizer, p, tools)[0] for p in prompts]
    runs = [Rollout(ids=list(ids), mask=[0] * len(ids), logprobs=[0.0] * len(ids),
                    prompt_len=len(ids), text="", calls=[], turns=0, finished=False)
            for ids in prompt_ids for _ in range(n)]
    texts = [[] for _ in runs]
    glue = {}  # (prompt, tool results) -> the template's tokens after that tool-calling turn

    # one for the whole rollout: it may keep each conversation's cache
    decoder = engine.make_decoder(model)
    active = list(range(len(runs)))
    for turn in range(max_turns):
        budgets = [max_tokens - (len(runs[i].ids) - runs[i].prompt_len) for i in active]
        if turn == 0:  # the n samples of a prompt share its forward
            sampled = engine.sample_turn(model, decoder, active, prompt_ids, n,
                                         budgets, ends, *pick)
        else:
            sampled = engine.sample_turn(model, decoder, active, [runs[i].ids for i in active], 1,
                                         budgets, ends, *pick)
        still = []
        for i, (ids, logps, ended), budget in zip(active, sampled, budgets):
            r = runs[i]
            r.ids += ids
            r.mask += [1] * len(ids)
            r.logprobs += logps
            r.turns += 1
            text = tokenizer.decode(ids, skip_special_tokens=True)
            texts[i].append(text)
            calls = [dict(c, result=call_tool(c)) for c in parse_tool_calls(text)]
            r.calls += calls
            r.messages.append(_assistant_message(text, calls))
            if not ended or not calls or turn + 1 == max_turns:
                # cut off: out of tokens, or out of turns while calling
                r.finished = ended and not calls
                continue
            results = tuple((str(c["name"]), c["result"]) for c in calls)
            if (i // n, results) not in glue:  # a prompt's samples often make the same calls
                glue[i // n, results] = _tool_turn(tokenizer, prompts[i // n], list(results), tools)
            replies = glue[i // n, results]
            if len(ids) + len(replies) >= budget:
                continue  # no room left for the results and an answer: cut off
            r.ids += replies
            r.mask += [0] * len(replies)
            r.logprobs += [0.0] * len(replies)
            r.messages += [{"role": "tool", "name": str(c["name"]), "content": c["result"]}
                           for c in calls]
            still.append(i)
        active = still
        if not active:
            break
    for r, t in zip(runs, texts):
        r.text = "\n".join(t)
    return runs


# ------------------------------------------------------------------ scoring tokens

# logits per lm_head chunk: bounds the [tokens, vocab] float32 logits (512 MiB)
LOGPROB_CHUNK = 2 ** 27


def _chunk_logprobs(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                    temperature: float, with_entropy: bool) -> tuple[torch.Tensor, ...]:
    """log p(target) at each of a chunk of hidden states [N, h], p = softmax(logits / temperature),
    and with `with_entropy` the entropy of p too. Without it, cross_entropy: one fused kernel
    forward and backward, no [N, vocab] log-softmax kept for a gather."""
    logits = lm_head(hidden).float() / temperature
    if not with_entropy:
        return (-torch.nn.functional.cross_entropy(logits, targets, reduction="none"),)
    logp = logits.log_softmax(-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def logprobs(model, ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0,
             with_entropy: bool = False, prompts: torch.Tensor | None = None
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the tokens `mask` [B, T] marks in the right-padded batch `ids` [B, T] under
    softmax(logits / temperature), the distribution rollouts sample from: out[b, t] =
    log p(ids[b, t] | ids[b, :t]) where mask[b, t] is set (never at t = 0), 0 elsewhere.

    Right padding needs no attention mask: a token attends only to the tokens before it, so
    the padding after a row's end changes nothing that is scored, and attention runs its
    causal kernel. With `prompts` [B], the length of each row's prompt (none of it scored),
    rows with the same prompt share its forward (_hidden_states): a rollout's G samples read
    one prompt. Only the scored positions go through the vocabulary projection (the prompt
    and tool results of a rollout are read, never scored), in chunks of LOGPROB_CHUNK logits,
    recomputed in the backward pass when there are several and gradients are on, so the full
    [tokens, vocab] float32 logits never exist at once. Gradients flow. With `with_entropy`,
    also the per-token entropy (gradients flow too: the entropy bonus)."""
    # the hidden state at t predicts token t + 1
    rows, cols = (mask[:, 1:] > 0).nonzero(as_tuple=True)
    with engine.autocast(model):
        hidden = _hidden_states(model, ids, rows, cols, prompts)
        targets, size = ids[rows, cols + 1], max(1, LOGPROB_CHUNK // model.lm_head.out_features)
        chunks = []
        for s in range(0, len(targets), size):
            args = (model.lm_head, hidden[s:s + size], targets[s:s + size], temperature,
                    with_entropy)
            if torch.is_grad_enabled() and len(targets) > size:
                chunks.append(torch.utils.checkpoint.checkpoint(_chunk_logprobs, *args,
                                                                use_reentrant=False))
            else:
                chunks.append(_chunk_logprobs(*args))
    # (one empty part per output when nothing was scored)
    parts = list(zip(*chunks)) or [[hidden.new_zeros(0).float()]] * (1 + with_entropy)
    outs = [torch.zeros(ids.shape, device=ids.device).index_put((rows, cols + 1), torch.cat(p))
            for p in parts]
    return tuple(outs) if with_entropy else outs[0]


def _hidden_states(model, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                   prompts: torch.Tensor | None) -> torch.Tensor:
    """The last hidden states [N, h] at positions (rows, cols) of the right-padded batch `ids`.

    With `prompts` [B] (each row's prompt length; no position asked for lies before a row's
    last prompt token), each distinct prompt is forwarded once, left-padded, and its keys and
    values (a transformers cache) are picked for the rows that share it; the rest of each row
    is forwarded after it. Gradients reach the shared prompt from every row that read it."""
    if prompts is None or model.is_activation_checkpointing:  # checkpointed layers keep no cache
        return model.model(input_ids=ids, use_cache=False).last_hidden_state[rows, cols]
    distinct: dict[tuple, int] = {}
    which = torch.tensor([distinct.setdefault(tuple(row[:n].tolist()), len(distinct))
                          for row, n in zip(ids, prompts.tolist())], device=ids.device)
    width = max(map(len, distinct))
    heads = torch.zeros(len(distinct), width, dtype=torch.long, device=ids.device)
    seen = torch.zeros(len(distinct), width, dtype=torch.long, device=ids.device)
    for i, prompt in enumerate(distinct):
        heads[i, width - len(prompt):] = torch.tensor(prompt)
        seen[i, width - len(prompt):] = 1
    shared = model.model(input_ids=heads, attention_mask=seen,
                         position_ids=(seen.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    # Each row's copy of its prompt's keys and values, as a product with a one-hot matrix rather
    # than an index: the backward of an index that repeats rows adds their gradients in an order
    # that depends on thread timing (two runs would differ), a matmul's in a fixed one.
    pick = torch.nn.functional.one_hot(which, len(distinct))
    share = lambda x: torch.einsum("bn,n...->b...", pick.to(x.dtype), x)  # noqa: E731
    cache = shared.cache
    for layer in cache.layers:
        layer.keys, layer.values = share(layer.keys), share(layer.values)
    # The rest of each row, right-padded, at the positions after its prompt.
    start = prompts.to(ids.device)
    rest = int((ids.shape[1] - start).max())
    offsets = torch.arange(rest, device=ids.device)
    tails = ids.gather(1, (start[:, None] + offsets).clamp(max=ids.shape[1] - 1))
    after = model.model(input_ids=tails,
                        attention_mask=torch.cat([seen[which], torch.ones_like(tails)], 1),
                        position_ids=start[:, None] + offsets, cache=cache, use_cache=True)
    # Position t's state: the shared prompt's last one where t is a row's last prompt token.
    last = share(shared.last_hidden_state[:, -1])
    inside = cols >= start[rows]
    states = after.last_hidden_state[rows, (cols - start[rows]).clamp(min=0)]
    return torch.where(inside[:, None], states, last[rows])


def forward_flops(model, lengths: torch.Tensor, scored: torch.Tensor,
                  start: torch.Tensor | None = None) -> torch.Tensor:
    """The FLOPs [B] of a forward pass over tokens start..length of each row (`lengths`,
    `start` [B]; start 0 by default), each attending to every token before it, that projects
    `scored` [B] of them onto the vocabulary: 2 per weight a token meets, plus 4 x the
    attention width per key it reads. A backward pass costs twice as much."""
    body = sum(p.numel() for p in model.model.layers.parameters() if p.dim() == 2)
    config = model.config
    width = config.num_attention_heads * model.model.layers[0].self_attn.head_dim
    n = lengths.double().cpu()
    s = torch.zeros_like(n) if start is None else start.double().cpu()
    keys = (n * (n + 1) - s * (s + 1)) / 2  # token t reads t keys, itself included
    return (2 * body * (n - s) + 2 * model.lm_head.weight.numel() * scored.double().cpu()
            + 4 * width * config.num_hidden_layers * keys)


def rollout_flops(model, lengths: torch.Tensor, prompts: torch.Tensor, scored: torch.Tensor,
                  group: int = 1) -> torch.Tensor:
    """The FLOPs [B] of a forward pass over rollouts (`lengths`, prompt lengths `prompts`,
    `scored` tokens [B]) that reads each prompt once for its `group` samples, as rollouts and
    the training passes do, then every token after it."""
    return (forward_flops(model, lengths, scored, prompts)
            + forward_flops(model, prompts, torch.zeros_like(scored)) / group)


def collate(rollouts: list[Rollout], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors of a batch of rollouts: "ids" [B, T], "lengths" and "prompts" [B]
    (the prompt's length), "loss_mask" and "old_logprobs" [B, T]. Position t of the mask and
    log-probs refers to token t, the logprobs() convention, so they line up with its output
    without a shift."""
    width = max(len(r.ids) for r in rollouts)
    batch = {"ids": torch.full((len(rollouts), width), pad_id, dtype=torch.long),
             "lengths": torch.tensor([len(r.ids) for r in rollouts]),
             "prompts": torch.tensor([r.prompt_len for r in rollouts]),
             "loss_mask": torch.zeros(len(rollouts), width),
             "old_logprobs": torch.zeros(len(rollouts), width)}
    for i, r in enumerate(rollouts):
        batch["ids"][i, :len(r.ids)] = torch.tensor(r.ids)
        batch["loss_mask"][i, :len(r.ids)] = torch.tensor(r.mask, dtype=torch.float32)
        batch["old_logprobs"][i, :len(r.ids)] = torch.tensor(r.logprobs)
    return batch
