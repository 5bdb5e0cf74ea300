"""reward.py's adapters, called exactly as TRL 1.16's GRPOTrainer, verl 0.9.1 and the authors'
fork of verl call a reward function. Neither library is needed: each call is copied from its
source (cited at the helper that makes it), with a tiny Qwen-style tokenizer and the real
Qwen2.5 chat template.

    cut off -> 0.0; no or empty box -> 0.1;
    else 0.7 * correct + 0.3 * match * (1 if correct else 0.2) + 0.1 * (no invalid call)

The teacher called `add`; the gold answer is 7 (3 + 4).
"""
import json
import os
from itertools import takewhile

import numpy as np
import pytest
from pytest import approx
from transformers import AutoTokenizer, GenerationConfig, Qwen2Tokenizer, TrainerState

import reward
import tools

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                        "qwen2.5-instruct.chat_template.jinja")
SCHEMAS = [tools.SCHEMAS["add"], tools.SCHEMAS["multiply"]]
# The authors' instruction (their rollout and evaluation prompts): it holds an empty \boxed{}.
PROMPT = [{"role": "user", "content": "Question: What is 3 plus 4?\n\n"
                                      "If you have got the answer, enclose it within \\boxed{} "
                                      "with latex format."}]


def call(name: str, arguments) -> dict:
    """A structured tool call as transformers' parse_response returns it."""
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


ADD = call("add", {"a": 3, "b": 4})
CALLING = {"role": "assistant", "tool_calls": [ADD], "content": ""}
RESULT = {"role": "tool", "name": "add", "content": "7"}
ANSWER = {"role": "assistant", "content": "The sum is \\boxed{7}."}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A Qwen2.5-style tokenizer (byte-level BPE, <|im_end|> as EOS, <|endoftext|> as pad, the
    tool tags added but not special, as in Qwen2.5), saved with a generation config that, like
    Qwen2.5-Instruct's, also ends on <|endoftext|>; loaded back from that folder."""
    base = Qwen2Tokenizer(eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)
    base.chat_template = open(TEMPLATE).read()
    texts = [base.apply_chat_template(PROMPT + [CALLING, RESULT, ANSWER], tools=SCHEMAS,
                                      tokenize=False)]
    trained = base.train_new_from_iterator(texts * 20, vocab_size=400,
                                           new_special_tokens=["<|im_start|>"], show_progress=False)
    trained.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"])
    trained.chat_template = base.chat_template
    path = str(tmp_path_factory.mktemp("qwen"))
    trained.save_pretrained(path)
    GenerationConfig(eos_token_id=[trained.eos_token_id,
                                   trained.pad_token_id]).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


# ------------------------------------------------------------------------------------ TRL

def generated(message: dict, end: str = "<|im_end|>") -> str:
    """The text a Qwen model generates for an assistant message: what parse_response parses back
    into that message. `end` is "" for a turn cut off at max_completion_length."""
    calls = [f"<tool_call>\n{json.dumps(c['function'])}\n</tool_call>"
             for c in message.get("tool_calls", [])]
    return "\n".join(([message["content"]] if message["content"] else []) + calls) + end


def tool_suffix_ids(tok, tool_messages: list[dict]) -> list[int]:
    """Copy of GRPOTrainer._get_tool_suffix_ids (trl 1.16, trl/trainer/grpo_trainer.py): the ids
    TRL appends after a tool-calling turn: the tool results and the next assistant header."""
    dummy = [{"role": "user", "content": "dummy"},
             {"role": "assistant", "content": "",
              "tool_calls": [{"type": "function",
                              "function": {"name": tool_messages[0]["name"], "arguments": {}}}]}]
    prefix = tok.apply_chat_template(dummy, add_generation_prompt=False, tokenize=True,
                                     return_dict=False)
    full = tok.apply_chat_template(dummy + tool_messages, add_generation_prompt=True, tokenize=True,
                                   return_dict=False)
    eos = [i for i, t in enumerate(prefix) if t == tok.eos_token_id]
    return full[len(prefix[: eos[-1] + 1]):]


def trl_ids(tok, completion: list[dict], last_end: str = "<|im_end|>") -> list[int]:
    """completion_ids as GRPOTrainer._tool_call_loop builds them (trl 1.16): each turn's generated
    ids (up to and including the first end token; _generate_single_turn cuts padding off), then
    after each batch of tool results tool_suffix_ids, then the next turn's ids. The last turn
    ends with `last_end`."""
    ids = []
    for i, m in enumerate(completion):
        if m["role"] == "assistant":
            text = generated(m, last_end if i == len(completion) - 1 else "<|im_end|>")
            ids += tok(text, add_special_tokens=False)["input_ids"]
        elif completion[i - 1]["role"] == "assistant":  # the tool results of that turn, at once
            ids += tool_suffix_ids(tok, list(takewhile(lambda t: t["role"] == "tool",
                                                       completion[i:])))
    return ids


def trl_call(fn, inputs: list[dict], completions: list,
             completion_ids: list[list[int]]) -> list[float]:
    """`fn` called as GRPOTrainer._calculate_rewards calls a synchronous reward function (trl 1.16,
    trl/trainer/grpo_trainer.py): prompts, completions and completion_ids, every dataset column
    but prompt as a list, then trainer_state, log_extra and log_metric."""
    keys = [key for key in inputs[0] if key not in ["prompt", "completion", "completion_ids"]]
    reward_kwargs = {key: [example[key] for example in inputs] for key in keys}
    reward_kwargs["trainer_state"] = TrainerState()
    reward_kwargs["log_extra"] = lambda column, values: None
    reward_kwargs["log_metric"] = lambda name, value: None
    prompts = [example["prompt"] for example in inputs]
    return fn(prompts=prompts, completions=completions, completion_ids=completion_ids,
              **reward_kwargs)


def row(**columns) -> dict:
    return {"prompt": PROMPT, "answer": "7", "tool_calls_used": ["add"], **columns}


def trl_rewards(tok, *completions, last_end: str = "<|im_end|>",
                **columns) -> tuple[list[float], list[float]]:
    """The rewards of conversational completions from reward.reward_func and from the
    tokenizer-aware make_reward_func(tok), one dataset row each."""
    ids = [trl_ids(tok, c, last_end) for c in completions]
    inputs = [row(**columns)] * len(completions)
    return (trl_call(reward.reward_func, inputs, list(completions), ids),
            trl_call(reward.make_reward_func(tok), inputs, list(completions), ids))


def test_trl_structured_call_matching_the_teacher_scores_1_1(tok):
    # 0.7 + 0.3 * 1 + 0.1 = 1.1; the old text-only adapter saw no call: 0.7 + 0 + 0.1 = 0.8
    plain, aware = trl_rewards(tok, [CALLING, RESULT, ANSWER])
    assert plain == approx([1.1]) and aware == approx([1.1])


def test_trl_arguments_as_a_json_string_and_two_calls_in_one_turn(tok):
    as_string = {"role": "assistant", "content": "",
                 "tool_calls": [call("add", '{"a": 3, "b": 4}')]}
    both = {"role": "assistant", "content": "First:",
            "tool_calls": [ADD, call("multiply", {"a": 7, "b": 1})]}
    results = [RESULT, {"role": "tool", "name": "multiply", "content": "7"}]
    # names {add} == {add}: 1.1; names {add, multiply} != {add}: 0.7 + 0 + 0.1 = 0.8
    _, aware = trl_rewards(tok, [as_string, RESULT, ANSWER], [both, *results, ANSWER])
    assert aware == approx([1.1, 0.8])


def test_trl_hallucinated_structured_name_loses_the_validity_bonus(tok):
    # parse_response keeps any name; `calculator` is no tool: invalid, left out of the names.
    hallucinated = {"role": "assistant", "content": "",
                    "tool_calls": [call("calculator", {"expression": "3+4"}), ADD]}
    alone = {"role": "assistant", "content": "",
             "tool_calls": [call("calculator", {"expression": "3+4"})]}
    error = {"role": "tool", "name": "calculator",
             "content": "{'error': 'Tool calculator not found.'}"}
    # names {add}: 0.7 + 0.3 + 0 = 1.0; names {}: 0.7 + 0 + 0 = 0.7
    _, aware = trl_rewards(tok, [hallucinated, error, RESULT, ANSWER], [alone, error, ANSWER])
    assert aware == approx([1.0, 0.7])


def test_trl_tool_call_blocks_left_in_content_are_read(tok):
    # Without tools= (or when parse_response fails on a malformed call) TRL keeps the raw text.
    text = f'<tool_call>\n{json.dumps(ADD["function"])}\n</tool_call>\nSo \\boxed{{7}}'
    malformed = '<tool_call>\n{"name": "add", "arguments": {"a": 3\n</tool_call>\nSo \\boxed{7}'
    # 1.1; the malformed call is invalid and names nothing: 0.7 + 0 + 0 = 0.7
    _, aware = trl_rewards(tok, [{"role": "assistant", "content": text}],
                           [{"role": "assistant", "content": malformed}])
    assert aware == approx([1.1, 0.7])


def test_trl_wrong_answer_and_no_answer(tok):
    wrong = {"role": "assistant", "content": "\\boxed{8}"}
    none = {"role": "assistant", "content": "I am not sure."}
    # matching, wrong: 0.3 * 1 * 0.2 + 0.1 = 0.16; no box: 0.1
    _, aware = trl_rewards(tok, [CALLING, RESULT, wrong], [CALLING, RESULT, none])
    assert aware == approx([0.16, 0.1])


def test_trl_truncated_completion_scores_0_with_the_tokenizer(tok):
    cut = {"role": "assistant", "content": "The sum is \\boxed{7} and"}
    # its ids end inside the last turn (max_completion_length): reward_func cannot tell, 1.1
    plain, aware = trl_rewards(tok, [CALLING, RESULT, cut], last_end="")
    assert plain == approx([1.1]) and aware == approx([0.0])
    # <|endoftext|> ends a turn too: the generation config saved with the tokenizer declares it
    assert reward.end_token_ids(tok) == {tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id}
    _, aware = trl_rewards(tok, [CALLING, RESULT, ANSWER], last_end="<|endoftext|>")
    assert aware == approx([1.1])


def test_trl_completion_still_waiting_on_a_tool_is_cut_off(tok):
    # Out of max_tool_calling_iterations: the last turn calls a tool that never runs (its ids end
    # with <|im_end|>). Out of max_completion_length right after a tool result: the post-tool
    # turn is dropped, the ids end with the next assistant header. Both 0.0, with or without the
    # tokenizer.
    plain, aware = trl_rewards(tok, [CALLING, RESULT, CALLING], [CALLING, RESULT])
    assert plain == approx([0.0, 0.0]) and aware == approx([0.0, 0.0])


def test_trl_plain_text_completions(tok):
    # Non-conversational prompts: completions are
    # batch_decode(completion_ids, skip_special_tokens=True).
    text = f'<tool_call>\n{json.dumps(ADD["function"])}\n</tool_call>\n\\boxed{{7}}'
    ids = [tok(text + "<|im_end|>", add_special_tokens=False)["input_ids"],
           tok(text, add_special_tokens=False)["input_ids"]]
    completions = tok.batch_decode(ids, skip_special_tokens=True)
    inputs = [row(prompt="What is 3 plus 4?")] * 2
    assert trl_call(reward.make_reward_func(tok), inputs, completions, ids) == approx([1.1, 0.0])


def test_trl_teacher_columns_and_the_missing_teacher(tok):
    c, ids = [CALLING, RESULT, ANSWER], [trl_ids(tok, [CALLING, RESULT, ANSWER])]
    # the authors' JSON string
    inputs = [{"prompt": PROMPT, "answer": "7", "tool_calls_used": '["add"]'}]
    assert trl_call(reward.reward_func, inputs, [c], ids) == approx([1.1])
    inputs = [{"prompt": PROMPT, "answer": "7", "teacher_tools": ["add"]}]
    assert trl_call(reward.reward_func, inputs, [c], ids) == approx([1.1])
    # No column, or a row without a value (datasets fills None): an error, not an empty teacher
    # (against [] a correct answer without tools, 1.1, would beat this one, 0.8).
    with pytest.raises(ValueError, match="tool_calls_used"):
        trl_call(reward.reward_func, [{"prompt": PROMPT, "answer": "7"}], [c], ids)
    with pytest.raises(ValueError, match="tool_calls_used"):
        trl_call(reward.reward_func, [row(tool_calls_used=None)], [c], ids)
    # the sparse reward needs no teacher: 1.0 if correct
    assert trl_call(reward.make_reward_func(tok, "sparse"), [{"prompt": PROMPT, "answer": "7"}],
                    [c], ids) == [1.0]


def test_trl_messages_match_the_real_parse_response(tok):
    """The hand-written messages above are what TRL really parses from the generated text."""
    chat_template_utils = pytest.importorskip("trl.chat_template_utils")
    parsing = chat_template_utils.add_response_schema(
        AutoTokenizer.from_pretrained(tok.name_or_path))  # sets it in place
    prefix = tok.apply_chat_template(PROMPT, tools=SCHEMAS, add_generation_prompt=True,
                                     return_dict=False)
    for message in (CALLING, ANSWER):
        ids = tok(generated(message), add_special_tokens=False)["input_ids"]
        parsed = chat_template_utils.parse_response(parsing, ids, prefix=prefix, tools=SCHEMAS)
        assert parsed == message


def test_trl_real_trainer_calls_the_reward_functions(tok, tmp_path):
    """One GRPO step of the real GRPOTrainer with tools, its generation replaced by fixed text: a
    call, then the answer after the tool result; and an answer cut off by max_completion_length."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    seen = {}

    def recorded(name, fn):
        def reward_func(**kwargs):
            seen[name] = fn(**kwargs)
            return seen[name]
        reward_func.__name__ = name
        return reward_func

    turns = iter([[generated(CALLING), "The sum is \\boxed{7} and"], [generated(ANSWER)]])
    args = trl.GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                          num_generations=2, max_completion_length=64, max_steps=1,
                          report_to="none", use_cpu=True, save_strategy="no")
    trainer = trl.GRPOTrainer(model=str(tmp_path), args=args, tools=[tools.add],
                              # it is changed
                              processing_class=AutoTokenizer.from_pretrained(tok.name_or_path),
                              train_dataset=Dataset.from_list([row()] * 2),
                              reward_funcs=[recorded("plain", reward.reward_func),
                                            recorded("aware", reward.make_reward_func(tok))])
    trainer._generate_single_turn = lambda ids, *args, **kwargs: (
        [tok(t, add_special_tokens=False)["input_ids"] for t in next(turns)], None)
    trainer.train()
    assert seen["plain"] == approx([1.1, 0.8]) and seen["aware"] == approx([1.1, 0.0])


# ----------------------------------------------------------------------------------- verl

def rollout_ids(tok, completion: list[dict]) -> tuple[list[int], list[int]]:
    """Prompt and response ids of a tool-using rollout as verl's agent loop returns them: the
    prompt with the tool schemas in its system turn; the response, the generated turns and the
    tool results between them, rendered by the chat template and ending with the last turn's
    EOS, where generation stops."""
    prompt = tok.apply_chat_template(PROMPT, tools=SCHEMAS, add_generation_prompt=True,
                                     return_dict=False)
    full = tok.apply_chat_template(PROMPT + completion, tools=SCHEMAS, return_dict=False)
    last_eos = max(i for i, t in enumerate(full) if t == tok.eos_token_id)
    return prompt, full[len(prompt):last_eos + 1]


def verl_call(tok, response_ids: list[int], extra_info: dict,
              reward_kwargs: dict | None = None) -> float:
    """compute_score called as verl 0.9.1 calls a custom reward function:
    NaiveRewardManager.run_single (verl/experimental/reward_loop/reward_manager/naive.py) decodes
    the response alone with skip_special_tokens=True and adds num_turns and rollout_reward_scores
    to extra_info; get_custom_reward_fn (verl/trainer/ppo/reward.py) merges the config's
    reward_kwargs over the keywords."""
    response_str = tok.decode(response_ids, skip_special_tokens=True)
    extra_info = {**extra_info, "num_turns": 4, "rollout_reward_scores": {}}
    kwargs = dict(data_source="mentor", solution_str=response_str, ground_truth="7",
                  extra_info=extra_info)
    return reward.compute_score(**{**kwargs, **(reward_kwargs or {})})


def fork_call(tok, prompt_ids: list[int], response_ids: list[int], extra_info: dict,
              ablation_exp_id: str = "MENTOR") -> float:
    """compute_score called as the authors' MentorRewardManagerWithSave.__call__ calls it
    (src/verl/workers/reward_manager/mentor.py of their fork): prompt + response decoded with
    special tokens, the tokenizer, and their ablation_exp_id."""
    sequences_str = tok.decode(prompt_ids + response_ids)
    return reward.compute_score(data_source="nvidia/AceReason-Math", tokenizer=tok,
                                solution_str=sequences_str, ground_truth="7",
                                extra_info=extra_info, ablation_exp_id=ablation_exp_id)


def test_verl_upstream_call(tok):
    _, response = rollout_ids(tok, [CALLING, RESULT, ANSWER])
    teacher = {"tool_calls_used": ["add"]}
    assert verl_call(tok, response, teacher) == approx(1.1)
    # verl's batches may hold arrays: anything with .tolist()
    assert verl_call(tok, response,
                     {"tool_calls_used": np.array(["add"], dtype=object)}) == approx(1.1)
    # the mode from the config: reward.custom_reward_function.reward_kwargs.ablation_exp_id
    assert verl_call(tok, response, teacher,
                     {"ablation_exp_id": "ABLATION2"}) == approx(1.0)  # 0.7 + 0.3
    assert verl_call(tok, response, teacher,
                     {"ablation_exp_id": "ABLATION3"}) == approx(0.8)  # 0.7 + 0.1
    assert verl_call(tok, response, {}, {"ablation_exp_id": "SPARSE"}) == approx(1.0)
    # the response is decoded without its EOS: a truncated one cannot be told apart (1.1, not 0.0)
    assert verl_call(tok, response[:-1], teacher) == approx(1.1)
    with pytest.raises(ValueError, match="tool_calls_used"):
        verl_call(tok, response, {})
    with pytest.raises(ValueError, match="ablation_exp_id"):
        verl_call(tok, response, teacher, {"ablation_exp_id": "DEFAULT"})


def test_verl_authors_call_reads_the_response_not_the_prompt(tok):
    prompt, response = rollout_ids(tok, [CALLING, RESULT, ANSWER])
    teacher = {"tool_calls_used": ["add"]}
    text = tok.decode(prompt)
    # the instruction's box, the template's sample call
    assert "\\boxed{}" in text and "<tool_call>\n{" in text
    # 1.1, not 1.0: the sample <tool_call> in the system prompt is no invalid call of the student's
    assert fork_call(tok, prompt, response, teacher) == approx(1.1)
    # the prompt's empty \boxed{} is no answer: 0.1
    _, unanswered = rollout_ids(tok, [CALLING, RESULT,
                                      {"role": "assistant", "content": "It is seven."}])
    assert fork_call(tok, prompt, unanswered, teacher) == approx(0.1)


def test_verl_authors_call_truncated_scores_0(tok):
    prompt, response = rollout_ids(tok, [CALLING, RESULT, ANSWER])
    # not ending with tokenizer.eos_token, as the authors check: 0.0 (verl_call above gave 1.1)
    assert fork_call(tok, prompt, response[:-1], {"tool_calls_used": ["add"]}) == approx(0.0)


def test_verl_authors_ablations(tok):
    two = {"role": "assistant", "content": "",
           "tool_calls": [ADD, call("multiply", {"a": 7, "b": 1})]}
    results = [RESULT, {"role": "tool", "name": "multiply", "content": "7"}]
    prompt, response = rollout_ids(tok, [two, *results, ANSWER])
    teacher = {"tool_calls_used": ["add"]}
    # student {add, multiply}, teacher {add}
    assert fork_call(tok, prompt, response, teacher, "MENTOR") == approx(0.8)     # 0.7 + 0 + 0.1
    # any overlap: 0.7 + 0.3
    assert fork_call(tok, prompt, response, teacher, "ABLATION2") == approx(1.0)
    assert fork_call(tok, prompt, response, teacher, "ABLATION3") == approx(0.8)  # 0.7 + 0.1
    # F1 2/3: 0.7 + 0.2 + 0.1
    assert fork_call(tok, prompt, response, teacher, "ABLATION4") == approx(1.0)
    assert fork_call(tok, prompt, response, {}, "SPARSE") == approx(1.0)
    _, wrong = rollout_ids(tok, [CALLING, RESULT, {"role": "assistant", "content": "\\boxed{8}"}])
    assert fork_call(tok, prompt, wrong, teacher, "MENTOR") == approx(0.16)  # 0.3 * 0.2 + 0.1
    with pytest.raises(ValueError, match="tool_calls_used"):
        fork_call(tok, prompt, response, {}, "MENTOR")
