"""model.py: loading, the chat layout (encode), rollouts with tools, log-probs and collate.

The real-model path is tested offline with a tiny random Qwen2 whose tokenizer knows Qwen's
special tokens and carries the real Qwen2.5 chat template (tests/fixtures). A copy of it is
trained for a few seconds to emit two known conversations, one with a valid tool call and
one with a malformed call, so rollouts really call tools and can be checked token by token.
Another copy carries the real Qwen3 template, which renders a turn differently once it is
no longer the last one, and is trained the same way.
"""
import os
import re

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

import engine
import model
import tasks
import tools

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                        "qwen2.5-instruct.chat_template.jinja")
QWEN3 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                     "qwen3.chat_template.jinja")
THINK = "<think>\n\n</think>\n\n"  # the empty think block Qwen3 renders on the last assistant turn
ADD = [s for s in tools.schemas() if s["function"]["name"] == "add"]
SYSTEM = {"role": "system", "content": "Use the tools."}
CALL_ADD = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
CONV_ADD = [SYSTEM, {"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL_ADD]},
            {"role": "tool", "name": "add", "content": "5"},
            {"role": "assistant", "content": "\\boxed{5}"}]
BAD_ERROR = "error: tool call is not a JSON object"
CONV_BAD = [SYSTEM, {"role": "user", "content": "Break it."},
            {"role": "assistant", "content": "<tool_call>\n{oops}\n</tool_call>"},
            {"role": "tool", "name": "None", "content": BAD_ERROR},
            {"role": "assistant", "content": "\\boxed{0}"}]


def qwen_like(path: str, template: str | None, think: bool = False, seed: int = 0) -> str:
    """Save a tiny random Qwen2 (weights drawn with `seed`) and a Qwen2-style tokenizer
    (byte-level BPE, <|im_start|>, <|im_end|> as EOS, <|endoftext|> as pad, the tool tags as
    added tokens) to `path`; with `think`, <think> and </think> are added tokens too, as in
    Qwen3."""
    base = Qwen2Tokenizer(eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)
    base.chat_template = open(TEMPLATE).read()
    texts = [base.apply_chat_template(c, tools=ADD, tokenize=False) for c in (CONV_ADD, CONV_BAD)]
    tok = base.train_new_from_iterator(texts * 20, vocab_size=600,
                                       new_special_tokens=["<|im_start|>"], show_progress=False)
    tok.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"])
    if think:
        tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = template
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A random tiny Qwen2 with the real Qwen2.5 template, loaded through model.load."""
    return model.load(qwen_like(str(tmp_path_factory.mktemp("qwen")), open(TEMPLATE).read()))


def emit_loss(policy: Qwen2ForCausalLM, tok: Qwen2Tokenizer, steps: int) -> float:
    """Train `policy` for `steps` to emit CONV_ADD and CONV_BAD as encode() lays them out;
    returns the last step's loss."""
    examples = [model.encode(tok, c, ADD) for c in (CONV_ADD, CONV_BAD)]
    width = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids, _ in examples])
    mask = torch.tensor([m + [0] * (width - len(m)) for _, m in examples], dtype=torch.float)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    policy.train()
    for _ in range(steps):
        loss = -(model.logprobs(policy, ids, mask) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    return loss.item()


def fit(policy: Qwen2ForCausalLM, tok: Qwen2Tokenizer) -> tuple[Qwen2ForCausalLM, Qwen2Tokenizer]:
    """300 steps of emit_loss, which must end below 0.02; returns (policy, tok). Some seeds
    plateau near 0.5 for 200 steps before the loss falls (tests/seeds.py)."""
    assert emit_loss(policy, tok, 300) < 0.02
    return policy, tok


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same kind of model, trained to emit CONV_ADD and CONV_BAD (its own copy)."""
    return fit(*model.load(qwen_like(str(tmp_path_factory.mktemp("trained")),
                                     open(TEMPLATE).read())))


@pytest.fixture(scope="module")
def trained_qwen3(tmp_path_factory):
    """A copy with the real Qwen3 template (and <think> known), trained the same way."""
    return fit(*model.load(qwen_like(str(tmp_path_factory.mktemp("qwen3")), open(QWEN3).read(),
                                     think=True)))


def runs_of_ones(ids: list[int], mask: list[int]) -> list[list[int]]:
    """The maximal runs of ids where mask is 1."""
    runs, prev = [], 0
    for i, m in zip(ids, mask):
        if m and not prev:
            runs.append([])
        if m:
            runs[-1].append(i)
        prev = m
    return runs


# ------------------------------------------------------------------------------ loading

def test_load_bad_path_is_a_one_line_model_error(tmp_path):
    with pytest.raises(model.ModelError) as e:
        model.load(str(tmp_path / "nothing-here"))
    assert "\n" not in str(e.value) and "nothing-here" in str(e.value)


def test_load_tokenizer_without_chat_template_is_a_model_error(tmp_path):
    path = qwen_like(str(tmp_path), template=None)
    with pytest.raises(model.ModelError, match="no chat template") as e:
        model.load(path)
    assert "\n" not in str(e.value)


def test_the_tiny_default_is_built_explicitly_then_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "TINY_PATH", str(tmp_path / "tiny"))
    # loading never builds
    with pytest.raises(model.ModelError, match="tiny student is not built yet"):
        model.load()
    assert not (tmp_path / "tiny").exists()
    corpus = ([m["content"] for m in CONV_ADD]
              + ['{"name": "add", "arguments": {"a": 12, "b": 34}}'] * 50)
    model.build_tiny(model.TINY_PATH, corpus)
    policy, tok = model.load()
    assert isinstance(policy, Qwen2ForCausalLM) and policy.config.hidden_size == 128
    assert 0.8e6 < sum(p.numel() for p in policy.parameters()) < 1.2e6
    assert tok.eos_token == "<|end|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]  # one token per digit
    text = tok.apply_chat_template(CONV_ADD, tools=tools.schemas(), tokenize=False)
    assert ("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n"
            "</tool_call><|end|>" in text)
    assert "<|tool|>5<|assistant|>\\boxed{5}<|end|>" in text
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_the_tiny_tokenizer_reads_no_test_question_of_any_condition():
    corpus = set(model.tiny_corpus())  # a question is one text of it (the user turn), whole
    words = set(re.findall(r"[A-Za-z]+", " ".join(corpus)))
    for condition in tasks.CONDITIONS:
        splits = tasks.benchmark(condition)
        assert not [p.question for split in ("test_id", "test_ood") for p in splits[split]
                    if p.question in corpus]
        if condition in model.CORPUS_CONDITIONS:  # its training questions, nearly all
            assert sum(p.question in corpus for p in splits["train"][:50]) > 40
        else:  # written in the words of those the tokenizer learned from
            assert not {w for split in splits.values() for p in split
                        for w in re.findall(r"[A-Za-z]+", p.question)} - words


def test_save_then_load_a_run_folder(qwen, tmp_path):
    policy, tok = qwen
    model.save(str(tmp_path), policy, tok, state={"step": 3})
    model.save(str(tmp_path), policy, tok, state={"step": 4})  # replaces the checkpoint whole
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]
    assert torch.load(tmp_path / "checkpoint" / "trainer_state.pt")["step"] == 4
    again, _ = model.load(str(tmp_path))
    assert all(torch.equal(a, b)
               for a, b in zip(policy.state_dict().values(), again.state_dict().values()))


def test_a_crash_between_the_renames_of_save_loses_nothing(qwen, tmp_path):
    policy, tok = qwen
    model.save(str(tmp_path), policy, tok, state={"step": 3})
    # save() stopped between its renames
    os.rename(tmp_path / "checkpoint", tmp_path / ".checkpoint-old")
    os.makedirs(tmp_path / ".checkpoint-x1y2")  # and an earlier save() died while writing
    assert model.checkpoint_dir(str(tmp_path)) == str(tmp_path / ".checkpoint-old")
    model.load(str(tmp_path))
    model.save(str(tmp_path), policy, tok, state={"step": 4})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]
    assert torch.load(tmp_path / "checkpoint" / "trainer_state.pt")["step"] == 4


@pytest.mark.parametrize("damage", ["no tokenizer files", "truncated weights",
                                    "template that raises", "bad device"])
def test_a_damaged_model_folder_is_a_one_line_model_error(qwen, tmp_path, damage):
    path = str(tmp_path)
    model.save(path, *qwen)
    files, device = tmp_path / "checkpoint", "cpu"
    if damage == "no tokenizer files":
        os.remove(files / "tokenizer.json")
        os.remove(files / "tokenizer_config.json")
    elif damage == "truncated weights":
        weights = (files / "model.safetensors").read_bytes()
        (files / "model.safetensors").write_bytes(weights[:1000])
    elif damage == "template that raises":
        template = files / "chat_template.jinja"
        template.write_text("{{ raise_exception('System role not supported') }}"
                            + template.read_text())
    else:
        device = "cuda:x"
    with pytest.raises(model.ModelError) as e:
        policy, tok = model.load(path, device)
        model.encode(tok, CONV_ADD, ADD)
    assert "\n" not in str(e.value)


def test_sampling_needs_a_positive_temperature(qwen):
    with pytest.raises(ValueError, match="temperature"):
        model.rollout(*qwen, [CONV_ADD[:2]], ADD, temperature=0.0)


# ------------------------------------------------------------------------------- encode

def test_encode_masks_exactly_the_assistant_turns_qwen_template(qwen):
    _, tok = qwen
    ids, mask = model.encode(tok, CONV_ADD, ADD)
    assert len(ids) == len(mask)
    turns = [tok.decode(r) for r in runs_of_ones(ids, mask)]
    assert turns == [
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>',
        "\\boxed{5}<|im_end|>"]
    # the whole conversation, up to the last EOS; tools listed in the system turn
    text = tok.decode(ids)
    assert text == tok.apply_chat_template(CONV_ADD, tools=ADD, tokenize=False).removesuffix("\n")
    masked_out = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert ("<tool_response>\n5\n</tool_response>" in masked_out
            and '"name": "add"' in masked_out)  # schema


def test_encode_masks_exactly_the_assistant_turns_tiny_template():
    tok = model.build_tokenizer([m["content"] for m in CONV_ADD] * 20)
    ids, mask = model.encode(tok, CONV_ADD, tools.schemas())
    assert [tok.decode(r) for r in runs_of_ones(ids, mask)] == [
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|end|>',
        "\\boxed{5}<|end|>"]
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) == (
        "<|system|>Use the tools.<|user|>What is 2 plus 3?<|assistant|><|tool|>5<|assistant|>")


def test_encode_of_a_prompt_ends_with_the_generation_prompt(qwen):
    _, tok = qwen
    ids, mask = model.encode(tok, CONV_ADD[:2], ADD)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n") and not any(mask)


def test_tool_turn_tokens_equal_the_encoded_glue_for_both_templates(qwen):
    # What a rollout appends after a tool-calling turn's EOS is exactly what encode() puts
    # between that turn and the next one (rendered after a stand-in assistant turn).
    for tok in (qwen[1], model.build_tokenizer([m["content"] for m in CONV_ADD] * 20)):
        ids, mask = model.encode(tok, CONV_ADD, ADD)
        start = mask.index(1) + len(runs_of_ones(ids, mask)[0])
        glue = ids[start:start + mask[start:].index(1)]
        assert model._tool_turn(tok, CONV_ADD[:2], [("add", "5")], ADD) == glue


def test_encode_lays_out_each_turn_as_qwen3_writes_it_last(trained_qwen3):
    # Qwen3's template renders an empty think block on the last assistant turn only, so an
    # earlier turn loses it once the conversation goes on. encode() keeps every turn as the
    # model writes it after the generation prompt, think block included.
    _, tok = trained_qwen3
    calling = CONV_ADD[2:4]
    # two tool-calling turns, then the answer
    conversation = CONV_ADD[:2] + calling + calling + CONV_ADD[4:]
    full = tok.apply_chat_template(conversation, tools=ADD, tokenize=False)
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>'
    assert full.count("<|im_start|>assistant\n" + call) == 2 and full.count(THINK) == 1
    ids, mask = model.encode(tok, conversation, ADD)
    turns = [tok.decode(r) for r in runs_of_ones(ids, mask)]
    assert turns == [THINK + call, THINK + call, THINK + "\\boxed{5}<|im_end|>"]
    kept = full.replace("assistant\n<tool_call>", "assistant\n" + THINK + "<tool_call>")
    assert tok.decode(ids) == kept.removesuffix("\n")


def test_tool_turn_tokens_equal_the_encoded_glue_qwen3_template(trained_qwen3):
    # The glue after a tool-calling turn is what the template renders after that turn's EOS
    # in the continued conversation, where it renders the turn itself without the think block.
    _, tok = trained_qwen3
    ids, mask = model.encode(tok, CONV_ADD, ADD)
    start = mask.index(1) + len(runs_of_ones(ids, mask)[0])
    glue = ids[start:start + mask[start:].index(1)]
    assert model._tool_turn(tok, CONV_ADD[:2], [("add", "5")], ADD) == glue
    continued = tok.apply_chat_template(CONV_ADD[:4], tools=ADD, tokenize=False,
                                        add_generation_prompt=True)
    assert tok.decode(glue) == (
        "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")
    assert (continued.endswith("\n</tool_call><|im_end|>" + tok.decode(glue))
            and THINK not in continued)


@pytest.mark.parametrize("old, new, error", [
    ("{{- '<|end|>' }}", "", "ending with EOS"),  # no EOS after an assistant turn
    # a generation prompt that the rendered turn does not start with
    ("{{- '<|assistant|>' }}{%- endif %}", "{{- '<|assistant|>\\n' }}{%- endif %}",
     "generation prompt"),
    ("{{- '<|end|>' }}", "{{- '<|end|>' if loop.last }}", "drops the EOS of earlier turns"),
])
def test_a_template_that_cannot_lay_out_turns_is_a_one_line_model_error(old, new, error):
    tok = model.build_tokenizer([m["content"] for m in CONV_ADD] * 20)
    tok.chat_template = model.TINY_TEMPLATE.replace(old, new)
    assert tok.chat_template != model.TINY_TEMPLATE
    with pytest.raises(model.ModelError, match=error) as e:
        model.encode(tok, CONV_ADD, ADD)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- rollouts

def test_rollout_calls_the_tool_and_lays_out_tokens_like_encode(trained):
    policy, tok = trained
    r = model.rollout(policy, tok, [CONV_ADD[:2]], ADD, greedy=True)[0]
    assert r.calls == [{"name": "add", "arguments": {"a": 2, "b": 3}, "error": None, "result": "5"}]
    assert r.turns == 2 and r.finished
    assert r.text == ('<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n'
                      '</tool_call>\n\\boxed{5}')
    ids, mask = model.encode(tok, CONV_ADD, ADD)
    assert r.ids == ids and r.mask == mask  # SFT trains exactly what rollouts sample
    after_prompt = tok.decode([i for i, m in zip(r.ids[r.prompt_len:], r.mask[r.prompt_len:])
                               if not m])
    assert after_prompt == ("\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n"
                            "<|im_start|>assistant\n")
    assert r.messages == [{"role": "assistant", "content": "", "tool_calls": [CALL_ADD]},
                          {"role": "tool", "name": "add", "content": "5"},
                          {"role": "assistant", "content": "\\boxed{5}", "tool_calls": []}]


def test_rollout_lays_out_tokens_like_encode_qwen3_template(trained_qwen3):
    policy, tok = trained_qwen3
    r = model.rollout(policy, tok, [CONV_ADD[:2]], ADD, greedy=True)[0]
    assert r.calls == [{"name": "add", "arguments": {"a": 2, "b": 3}, "error": None, "result": "5"}]
    assert r.turns == 2 and r.finished
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    assert r.text == THINK + call + "\n" + THINK + "\\boxed{5}"  # the think blocks are sampled too
    ids, mask = model.encode(tok, CONV_ADD, ADD)
    assert r.ids == ids and r.mask == mask  # SFT trains exactly what rollouts sample
    # the sampled turns, think blocks in their content, encode back to the same tokens
    assert model.encode(tok, CONV_ADD[:2] + r.messages, ADD) == (r.ids, r.mask)


def test_malformed_tool_call_gets_an_error_message_back(trained):
    policy, tok = trained
    r = model.rollout(policy, tok, [CONV_BAD[:2]], ADD, greedy=True)[0]
    assert len(r.calls) == 1 and r.calls[0]["error"] and r.calls[0]["result"] == BAD_ERROR
    assert f"<tool_response>\n{BAD_ERROR}\n</tool_response>" in tok.decode(r.ids[r.prompt_len:])
    assert r.turns == 2 and r.finished and r.text.endswith("\\boxed{0}")
    # the message record keeps the broken block beside its error reply
    assert r.messages[0]["tool_calls"] == [] and "<tool_call>" in r.messages[0]["content"]
    assert r.messages[1] == {"role": "tool", "name": "None", "content": BAD_ERROR}
    assert r.final == "\\boxed{0}"  # the last assistant turn, where the answer must be


def test_out_of_turns_is_unfinished_and_appends_no_tool_response(trained):
    policy, tok = trained
    r = model.rollout(policy, tok, [CONV_ADD[:2]], ADD, max_turns=1, greedy=True)[0]
    assert r.turns == 1 and not r.finished and r.calls[0]["result"] == "5"
    assert all(r.mask[r.prompt_len:]) and r.ids[-1] == tok.eos_token_id


def test_rollouts_out_of_tokens_are_unfinished(trained):
    policy, tok = trained
    r = model.rollout(policy, tok, [CONV_ADD[:2]], ADD, max_tokens=5, greedy=True)[0]
    assert not r.finished and r.turns == 1 and len(r.ids) - r.prompt_len == 5
    # Tool responses count too: room for the first turn, not for the tool response after it.
    ids, mask = model.encode(tok, CONV_ADD, ADD)
    first_turn = len(runs_of_ones(ids, mask)[0])
    r = model.rollout(policy, tok, [CONV_ADD[:2]], ADD, max_tokens=first_turn + 3, greedy=True)[0]
    assert not r.finished and r.turns == 1 and len(r.ids) - r.prompt_len == first_turn


@pytest.mark.parametrize("lean", [True, False])
def test_rollout_logprobs_equal_a_fresh_logprobs_pass(trained, lean, monkeypatch):
    policy, tok = trained
    if not lean:  # the transformers forward that any other causal LM takes
        monkeypatch.setattr(engine, "lean_ok", lambda m: False)
    # Sampling at temperature 1.5 and top-p makes some samples stray from the learnt turns:
    # varied lengths, left padding, tool responses, several turns, re-prefilled caches.
    # The sampler's log-probs are those of softmax(logits / 1.5), before top-k and top-p.
    runs = model.rollout(policy, tok, [CONV_ADD[:2], CONV_BAD[:2]], ADD, n=4, max_tokens=60,
                         temperature=1.5, top_k=50, top_p=0.95, seed=1)
    assert len({len(r.ids) for r in runs}) > 1 and any(r.turns > 1 for r in runs)
    for r in runs:
        assert len(r.ids) == len(r.mask) == len(r.logprobs)
        assert all(lp == 0.0 for lp, m in zip(r.logprobs, r.mask) if not m)
    batch = model.collate(runs, tok.pad_token_id)
    with torch.no_grad():
        fresh = model.logprobs(policy, batch["ids"], batch["loss_mask"], temperature=1.5)
        plain = model.logprobs(policy, batch["ids"], batch["loss_mask"])
    mask = batch["loss_mask"].bool()
    assert torch.allclose(fresh[mask], batch["old_logprobs"][mask], atol=1e-4)
    assert not torch.allclose(plain[mask], batch["old_logprobs"][mask], atol=1e-2)


def test_every_declared_end_token_ends_a_turn(trained):
    policy, tok = trained
    first = model.rollout(policy, tok, [CONV_ADD[:2]], ADD, max_turns=1, greedy=True)[0]
    token = first.ids[first.prompt_len]  # the first token the model says
    assert engine.end_ids(policy, tok) == [tok.eos_token_id]
    # e.g. Qwen's <|im_end|> and <|endoftext|>
    policy.generation_config.eos_token_id = [token, tok.eos_token_id]
    try:
        assert engine.end_ids(policy, tok) == sorted({token, tok.eos_token_id})
        r = model.rollout(policy, tok, [CONV_ADD[:2]], ADD, max_turns=1, greedy=True)[0]
    finally:
        policy.generation_config.eos_token_id = tok.eos_token_id
    assert r.ids[r.prompt_len:] == [token] and r.turns == 1  # the turn stopped at once
    assert len(first.ids) - first.prompt_len > 1


def test_group_layout_seed_and_greedy(qwen):
    policy, tok = qwen
    prompts = [CONV_ADD[:2], CONV_BAD[:2]]
    a = model.rollout(policy, tok, prompts, ADD, n=3, max_tokens=12, seed=7)
    b = model.rollout(policy, tok, prompts, ADD, n=3, max_tokens=12, seed=7)
    c = model.rollout(policy, tok, prompts, ADD, n=3, max_tokens=12, seed=8)
    assert [r.ids for r in a] == [r.ids for r in b] and [r.ids for r in a] != [r.ids for r in c]
    for i, p in enumerate(prompts):  # the n samples of prompt i are adjacent
        prompt_ids, _ = model.encode(tok, p, ADD)
        assert all(r.ids[:r.prompt_len] == prompt_ids for r in a[3 * i:3 * i + 3])
    greedy = model.rollout(policy, tok, prompts, ADD, n=3, max_tokens=12, greedy=True)
    assert greedy[0].ids == greedy[1].ids == greedy[2].ids
    assert [r.ids for r in greedy] == [r.ids for r in model.rollout(policy, tok, prompts, ADD, n=3,
                                                                    max_tokens=12, greedy=True)]
    nucleus = model.rollout(policy, tok, prompts, ADD, n=3, max_tokens=12, top_p=1e-6, seed=3)
    assert [r.ids for r in nucleus] == [r.ids for r in greedy]  # a tiny nucleus is the top token


def test_lean_and_transformers_forward_sample_the_same(trained, monkeypatch):
    policy, tok = trained
    prompts = [CONV_ADD[:2], CONV_BAD[:2]]
    lean = model.rollout(policy, tok, prompts, ADD, n=2, max_tokens=40, temperature=1.5, seed=3)
    monkeypatch.setattr(engine, "lean_ok", lambda m: False)
    full = model.rollout(policy, tok, prompts, ADD, n=2, max_tokens=40, temperature=1.5, seed=3)
    assert [r.ids for r in lean] == [r.ids for r in full]
    for a, b in zip(lean, full):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def tiny_qwen2(**overrides) -> Qwen2ForCausalLM:
    """A random 2-layer Qwen2 with grouped-query attention (4 query heads, 2 KV heads)."""
    config = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256,
                  rope_theta=500.0)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**(config | overrides))).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_a_reference_with_bf16_matmuls_scores_like_the_float32_policy_under_autocast(tied):
    """On CUDA the frozen reference keeps its linear layers in bf16 (model.matmuls_in_bf16):
    under bf16 autocast the policy's float32 weights are cast to the same bf16 values for the
    same matmuls, and the rest stays float32 in both, so they agree exactly (CPU autocast here)."""
    policy = tiny_qwen2(tie_word_embeddings=tied)
    ref = tiny_qwen2(tie_word_embeddings=tied)
    ref.load_state_dict(policy.state_dict())
    model.matmuls_in_bf16(ref)
    assert ref.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert (ref.model.embed_tokens.weight.dtype == torch.float32
            and ref.model.norm.weight.dtype == torch.float32)
    # tied to the embeddings: left float32
    assert (ref.lm_head.weight.dtype == torch.float32) == tied
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (4, 12))
    mask = torch.ones(4, 12)
    prompts = torch.tensor([5, 5, 3, 3])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for shared in (None, prompts):
            a, b = (model.logprobs(m, ids, mask, prompts=shared) for m in (policy, ref))
            assert torch.equal(a, b)
    # and bf16 does change the numbers: the check can fail
    plain = model.logprobs(policy, ids, mask)
    assert not torch.equal(plain, a)


# ------------------------------------------------------------------ logprobs and collate

@pytest.mark.parametrize("chunks", [1, 5])
def test_logprobs_score_the_masked_tokens_and_carry_gradients(qwen, monkeypatch, chunks):
    policy, tok = qwen
    torch.manual_seed(0)
    ids = torch.randint(0, len(tok), (2, 30))
    mask = torch.ones(2, 30)
    mask[0, :6] = 0  # a prompt: read, not scored
    mask[1, 20:] = 0  # right padding
    scored = mask[:, 1:].bool()
    # every scored token in one chunk of logits, or in chunks of 8 tokens, recomputed in the
    # backward
    monkeypatch.setattr(model, "LOGPROB_CHUNK", 8 * len(tok) if chunks > 1 else model.LOGPROB_CHUNK)
    out, entropy = model.logprobs(policy, ids, mask, with_entropy=True)
    logits = policy(input_ids=ids).logits.float()[:, :-1]
    expected = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert out.shape == entropy.shape == ids.shape and torch.all(out[:, 0] == 0)
    assert torch.all(out[:, 1:][~scored] == 0) and torch.all(entropy[:, 1:][~scored] == 0)
    assert torch.allclose(out[:, 1:][scored], expected[scored], atol=1e-5)
    probs = torch.softmax(logits, -1)
    assert torch.allclose(entropy[:, 1:][scored], -(probs * probs.log()).sum(-1)[scored], atol=1e-4)
    # the padding after a row's end changes nothing scored; cross_entropy gives the same log-probs
    alone = model.logprobs(policy, ids[1:, :20], mask[1:, :20])
    assert torch.allclose(out[1:, :20], alone, atol=1e-5)
    assert torch.allclose(model.logprobs(policy, ids, mask), out, atol=1e-6)
    out.sum().backward()
    assert (policy.lm_head.weight.grad is not None
            and policy.model.embed_tokens.weight.grad.abs().sum() > 0)
    policy.zero_grad(set_to_none=True)


def test_rows_sharing_a_prompt_read_it_once_and_score_the_same(qwen):
    policy, tok = qwen
    torch.manual_seed(0)
    prompts = {8: torch.randint(0, len(tok), (8,)), 11: torch.randint(0, len(tok), (11,))}
    lengths = torch.tensor([8, 8, 11, 8, 11, 11])  # each row's prompt: two prompts, three rows each
    ids = torch.randint(0, len(tok), (6, 30))
    mask = torch.zeros(6, 30)
    for row, (n, end) in enumerate(zip(lengths.tolist(), [30, 20, 25, 14, 30, 12])):
        ids[row, :n] = prompts[n]
        mask[row, n:end] = 1  # the first scored token is predicted by the prompt's last state
    forwarded = []
    hook = policy.model.embed_tokens.register_forward_hook(
        lambda m, args, out: forwarded.append(args[0].shape))
    grads = []
    for shared in (None, lengths):
        out, entropy = model.logprobs(policy, ids, mask, with_entropy=True, prompts=shared)
        (out.sum() + entropy.sum()).backward()
        grads.append([p.grad.clone() for p in policy.parameters()])
        policy.zero_grad(set_to_none=True)
        if shared is None:
            plain, plain_entropy = out, entropy
    hook.remove()
    assert forwarded == [(6, 30), (2, 11), (6, 22)]  # the two prompts once, then each row's rest
    assert (torch.allclose(out, plain, atol=1e-5)
            and torch.allclose(entropy, plain_entropy, atol=1e-5))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads))


def test_collate_right_pads_and_aligns_masks_with_logprobs():
    a = model.Rollout(ids=[5, 6, 7, 8], mask=[0, 0, 1, 1], logprobs=[0.0, 0.0, -1.0, -2.0],
                      prompt_len=2, text="", calls=[], turns=1, finished=True)
    b = model.Rollout(ids=[5, 6, 9], mask=[0, 0, 1], logprobs=[0.0, 0.0, -3.0], prompt_len=2,
                      text="", calls=[], turns=1, finished=False)
    batch = model.collate([a, b], pad_id=0)
    assert batch["ids"].tolist() == [[5, 6, 7, 8], [5, 6, 9, 0]]
    assert batch["lengths"].tolist() == [4, 3]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]
    assert batch["old_logprobs"].tolist() == [[0, 0, -1, -2], [0, 0, -3, 0]]
