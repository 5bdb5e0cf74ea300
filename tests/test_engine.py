"""engine.py: the sampler (top-k, top-p), the decoders (plain and lean) against a full
transformers forward across turns, masked attention on SDPA's fused kernels, and the
self-check against generate()."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import engine
from test_model import TEMPLATE, qwen_like, tiny_qwen2


def test_top_k_and_top_p_sample_only_what_they_keep():
    logp = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(40000, 1)
    generator = torch.Generator().manual_seed(0)

    def shares(top_k, top_p):
        return torch.bincount(engine.pick(logp, top_k, top_p, False, generator),
                              minlength=4) / len(logp)
    # top-k 2 and top-p 0.7 both keep tokens 0 and 1, renormalised: 0.5 / 0.8 and 0.3 / 0.8
    for kept in (shares(2, 1.0), shares(0, 0.7)):
        assert kept[2:].tolist() == [0.0, 0.0] and kept[0].item() == pytest.approx(0.625, abs=0.01)
    # top-k 3 first (0.95 of the mass), then top-p 0.9 of that keeps all three
    kept = shares(3, 0.9)
    assert kept[3].item() == 0.0 and kept[2].item() == pytest.approx(0.15 / 0.95, abs=0.01)
    assert shares(1, 1.0)[0].item() == 1.0  # top-k 1 is the argmax


# ------------------------------------------------------------------------ the decoders

@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("rope", [None,
                                  {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}])
def test_decoder_logits_equal_a_full_transformers_forward_across_turns(rope, lean, monkeypatch):
    # The plain decoder (the model's own forward with its cache) is held to the same standard.
    policy = tiny_qwen2(**({"rope_parameters": rope} if rope else {}))
    assert engine.lean_ok(policy)
    if not lean:
        monkeypatch.setattr(engine, "lean_ok", lambda m: False)
    forwarded = []  # the token ids each forward reads
    policy.model.embed_tokens.register_forward_hook(
        lambda module, args, out: forwarded.append(args[0].numel()))
    torch.manual_seed(1)
    convs = {s: torch.randint(0, 97, (n,)).tolist() for s, n in enumerate([9, 4, 6])}

    def check(logits, samples):  # each conversation whole, on its own, no cache
        expected = torch.cat([policy(input_ids=torch.tensor([convs[s]])).logits[:, -1]
                              for s in samples])
        assert torch.allclose(logits, expected, atol=1e-5)

    with torch.inference_mode():
        decoder = engine.make_decoder(policy)
        assert isinstance(decoder, engine.LeanDecoder if lean else engine.PlainDecoder)
        samples = [0, 1, 2]
        check(decoder.extend(samples, [convs[s] for s in samples], room=5), samples)
        for step in range(5):
            if step == 2:  # conversation 1 leaves the batch: its turn ended
                left = decoder.drop(torch.tensor([False, True, False]))
                samples = [samples[r] for r in left.tolist()]
            tokens = torch.randint(0, 97, (len(samples),))
            # 2's turn ends at step 3
            ours = torch.tensor([not (s == 2 and step > 3) for s in samples])
            for s, token, own in zip(samples, tokens.tolist(), ours.tolist()):
                convs[s] += [token] if own else []
            logits = decoder.step(tokens, ours)
            check(logits[ours], [s for s, own in zip(samples, ours.tolist()) if own])
        # The next turn: 2 and 1 go on after a tool result each; 0 is done.
        convs[2] += [5, 6, 7]
        convs[1] += [8, 9]
        forwarded.clear()
        logits = decoder.extend([2, 1], [convs[2], convs[1]], room=3)
        # The lean decoder forwards the new tokens only (3 a row, left-padded), the plain one all.
        assert forwarded == ([2 * 3] if lean else [2 * len(convs[2])])
        check(logits, [2, 1])
        for step in range(3):
            tokens = torch.randint(0, 97, (2,))
            convs[2].append(tokens[0].item())
            convs[1].append(tokens[1].item())
            check(decoder.step(tokens, torch.ones(2, dtype=torch.bool)), [2, 1])


@pytest.mark.parametrize("width", [1, 5])
def test_masked_attention_reaches_sdpa_with_equal_head_counts(width, monkeypatch):
    """6 query heads over 2 KV heads with a mask: SDPA gets equal head counts (the fused
    kernels, not the math one that enable_gqa with a mask falls to on CUDA): a prefill with
    the keys and values repeated to the 6 query heads, a decode step with the query heads
    stacked on their KV head. Either way the result is plain attention."""
    torch.manual_seed(0)
    q, keys, values = torch.randn(3, 6, width, 8), torch.randn(3, 2, 9, 8), torch.randn(3, 2, 9, 8)
    sees = torch.rand(3, width, 9) < 0.6
    sees[..., 0] = True
    scores = q @ keys.repeat_interleave(3, 1).transpose(-1, -2) * 0.3
    expected = (scores.masked_fill(~sees[:, None], float("-inf")).softmax(-1)
                @ values.repeat_interleave(3, 1))
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((q.shape[1], k.shape[1], kwargs.get("enable_gqa", False),
                      kwargs["attn_mask"] is not None))
        return sdpa(q, k, v, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    out = engine._attend(q, keys, values,
                         engine._bias(sees, 2, torch.float32, decode_on_cpu=False), 0.3)
    heads = 6 if width > 1 else 2
    assert calls == [(heads, heads, False, True)] and torch.allclose(out, expected, atol=1e-5)
    if width == 1:  # a CPU decode step takes two batched matmuls instead, to the same result
        out = engine._attend(q, keys, values,
                             engine._bias(sees, 2, torch.float32, decode_on_cpu=True), 0.3)
        assert len(calls) == 1 and torch.allclose(out, expected, atol=1e-5)
    calls.clear()
    # the lean decoder's prefill of left-padded prompts (4 query, 2 KV heads)
    with torch.inference_mode():
        engine.LeanDecoder(tiny_qwen2()).extend([0, 1], [[5, 6, 7, 8], [9, 10]], room=2)
    assert calls == [(4, 4, False, True)] * 2  # one per layer


def test_top_p_within_the_top_k_equals_top_p_over_the_vocabulary():
    torch.manual_seed(0)
    logp = (torch.randn(8, 1000) * 3).log_softmax(-1)

    # the textbook order: mask below the k-th, sort everything
    def over_the_vocabulary(top_k, top_p):
        if top_k:
            logp_k = logp.masked_fill(logp < logp.topk(top_k, dim=-1).values[:, -1:], float("-inf"))
        else:
            logp_k = logp
        probs = logp_k.exp()
        if top_p == 1.0:
            return probs
        ordered, order = probs.sort(dim=-1, descending=True)
        outside = ordered.cumsum(-1) - ordered > top_p * ordered.sum(-1, keepdim=True)
        return probs.scatter(-1, order, ordered.masked_fill(outside, 0.0))
    for top_k, top_p in [(20, 0.9), (20, 1.0), (5, 0.5), (0, 0.9), (0, 1.0)]:
        probs, index = engine.nucleus(logp, top_k, top_p)
        if top_k:
            assert probs.shape == (8, top_k)  # only the candidates, never the vocabulary sorted
        dense = probs if index is None else torch.zeros_like(logp).scatter(-1, index, probs)
        assert torch.equal(dense, over_the_vocabulary(top_k, top_p)), (top_k, top_p)


def test_the_lean_decoders_buffers_live_on_the_models_device():
    """A CUDA model's decoder must not start from CPU buffers: the first extend indexes them
    with device tensors. Checked on the meta device, which CPU tensors would betray as well."""
    decoder = engine.LeanDecoder(tiny_qwen2().to("meta"))
    buffers = [decoder.keys, decoder.values, decoder.valid, decoder.pos, decoder.cos,
               decoder.lm_head, decoder.layers[0]["qkv"]]
    assert all(b.device.type == "meta" for b in buffers)


def test_rows_leave_a_batch_by_moving_the_last_ones_into_the_gaps():
    order, gaps, movers = engine.fill_gaps(
        torch.tensor([True, False, True, False, False, True, False]))
    assert order.tolist() == [4, 1, 6, 3] and gaps.tolist() == [0, 2] and movers.tolist() == [4, 6]
    # only the last left: nothing moves
    assert engine.fill_gaps(torch.tensor([False, True]))[0].tolist() == [0]


def test_lean_forward_only_where_it_is_exact():
    assert engine.lean_ok(tiny_qwen2())
    assert not engine.lean_ok(tiny_qwen2(use_sliding_window=True, sliding_window=4,
                                         max_window_layers=0))
    assert not engine.lean_ok(tiny_qwen2(rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                          "rope_theta": 500.0}))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         intermediate_size=96))
    assert not engine.lean_ok(llama)
    # its own forward, with a transformers cache
    assert isinstance(engine.make_decoder(llama), engine.PlainDecoder)
    assert isinstance(engine.make_decoder(tiny_qwen2()), engine.LeanDecoder)


def test_the_engine_self_check_passes_and_fails_when_the_lean_forward_is_wrong(tmp_path,
                                                                               monkeypatch, capsys):
    path = qwen_like(str(tmp_path), open(TEMPLATE).read())
    engine.main(["--model", path])
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count("ok  ") == 2 and out.count("tokens/s") == 2
    monkeypatch.setattr(engine, "_rotate", lambda x, cos, sin: x)  # RoPE forgotten
    with pytest.raises(SystemExit) as e:
        engine.main(["--model", path])
    assert e.value.code == 1 and "FAIL same greedy tokens" in capsys.readouterr().out


def test_greedy_decodes_may_part_only_at_a_near_tie():
    tokens = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    lean = torch.tensor([[1, 2, 3, 9], [1, 7, 3, 4], [1, 2, 3, 4]])
    logps = torch.full((3, 4), -0.5)
    margins = torch.tensor([[1.0, 1.0, 1.0, 0.01], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    kept = torch.ones(3, 4, dtype=torch.bool)
    lean_logps = logps + torch.tensor([[0.0, 0.0, 0.0, 3.0], [0.1, 0.0, 0.0, 0.0],
                                       [0.0, 0.02, 0.0, 0.0]])
    # row 0 parts at a near tie (margin 0.01), row 1 where generate() was sure: one row wrong;
    # the gap is read before each row parts (row 0's 3.0 at the parting token is not)
    wrong, ties, gap = engine.agreement(tokens, logps, margins, kept, lean, lean_logps,
                                        tolerance=0.05)
    assert (wrong, ties) == (1, 1) and gap == pytest.approx(0.1)
    kept[1, 1:] = False  # row 1 ended before it parted: nothing after its end counts
    assert engine.agreement(tokens, logps, margins, kept, lean, lean_logps,
                            tolerance=0.05)[:2] == (0, 1)
    assert engine.agreement(tokens, logps, margins, kept, lean, lean_logps,
                            tolerance=0.001)[:2] == (1, 0)
