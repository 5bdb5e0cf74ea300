"""The reward: the verifiable outcome plus a match against the teacher's tools.

    cut off (no end token: out of turns or tokens)           -> 0.0
    no \\boxed{} answer in the final turn, or an empty one    -> 0.1
    otherwise   0.7 * correct
              + 0.3 * match * (1 if correct else 0.2)
              + 0.1 * (no invalid call)                       (at most 1.1)

The weights and both special cases are the authors' (their released verl reward,
`mentor.py`): the outcome dominates, matching the teacher adds at most 0.3 (a fifth of that
when the answer is wrong, so a right-looking trace never beats a right answer), and the 0.1
punishes hallucinated tools. A call is *invalid* when it cannot be parsed or names no
registered tool; the student's tool names are those of its other calls.

`match` is what the modes change (everything else is shared, so comparisons are fair):

    mode      match                                                   authors' name
    mentor    1 if the set of tool names equals the teacher's set      MENTOR (default)
    overlap   1 if the two sets share a name; no 0.1 term (max 1.0)    ABLATION2
    no-match  no match term: 0.7 * correct + 0.1 * valid (max 0.8)     ABLATION3
    f1        F1 between the two sets of names                         ABLATION4
    sparse    outcome only: 1.0 if correct, else 0.1                   SPARSE
    strict    1 if the calls equal the teacher's in order, names and   (this project:
              argument values                                          replication)
"""
import json
import math
from collections.abc import Callable

from transformers import GenerationConfig, PreTrainedTokenizerBase

import files
import tasks
import tools

CORRECT = 0.7      # the right final answer
MATCH = 0.3        # the teacher's tools ...
WRONG_MATCH = 0.2  # ... scaled down this much when the answer is wrong
VALID = 0.1        # no invalid call
FORMAT_ONLY = 0.1  # finished without a \boxed{} answer (and sparse mode's wrong answer)
MODES = ("mentor", "overlap", "no-match", "f1", "sparse", "strict")


def set_f1(student: set[str], teacher: set[str]) -> float:
    """F1 between two sets of tool names; two empty sets match perfectly."""
    if not student and not teacher:
        return 1.0
    return 2 * len(student & teacher) / (len(student) + len(teacher))


def same_value(a, b) -> bool:
    """Argument values equal, numbers compared numerically (3 == 3.0), lists element-wise."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if tools.is_number(a) and tools.is_number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    # True == 1 in Python, but the tools refuse booleans as numbers: not the same value.
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def same_calls(student: list[dict], reference: list[dict]) -> bool:
    """The ordered calls are the same: names, and argument values where the reference has them."""
    if len(student) != len(reference):
        return False
    for s, t in zip(student, reference):
        if s["name"] != t["name"]:
            return False
        if "arguments" in t:
            sa, ta = s.get("arguments"), t["arguments"]
            if (not isinstance(sa, dict) or sa.keys() != ta.keys()
                    or not all(same_value(sa[k], ta[k]) for k in ta)):
                return False
    return True


def match(mode: str, calls: list[dict], reference: list[dict], names: set[str],
          taught: set[str]) -> float:
    """How well the student's parsed `calls` (their registered tool `names`) match the
    teacher's `reference` calls (their tool names `taught`), in [0, 1]."""
    if mode == "strict":
        return float(same_calls(calls, reference))
    if mode == "overlap":
        return float(bool(names & taught))
    if mode == "mentor":
        return float(names == taught)
    return set_f1(names, taught)  # f1, and logged for no-match and sparse


def score(calls: list[dict], final: str, answer, reference: list, mode: str = "mentor",
          finished: bool = True) -> dict:
    """Score one student conversation: its parsed tool `calls` (tools.parse_tool_calls
    dicts), its `final` assistant turn (where the answer is read: the last \\boxed{}), whether
    it `finished`, against the gold `answer` and the teacher's `reference` calls (each
    {"name", "arguments"} or a bare tool name).

    Returns {"reward", "correct", "tool_match", "same_tools", "invalid_calls", "has_answer",
    "calls", "finished"}; tool_match is reported in every mode (for logs), but only counts
    where the mode says; same_tools: the student used exactly the teacher's set of tools."""
    if mode not in MODES:
        raise ValueError(f"unknown reward mode {mode!r}; choose from {', '.join(MODES)}")
    reference = [t if isinstance(t, dict) else {"name": t} for t in reference]
    invalid = sum(1 for c in calls if c["name"] not in tools.TOOLS)
    names = {c["name"] for c in calls if c["name"] in tools.TOOLS}  # hallucinated names left out
    taught = {t["name"] for t in reference}
    pred = tasks.extract_answer(final)
    correct = tasks.is_correct(pred, answer)
    m = match(mode, calls, reference, names, taught)

    if not finished:
        reward = 0.0
    elif not pred:
        reward = FORMAT_ONLY
    elif mode == "sparse":
        reward = 1.0 if correct else FORMAT_ONLY
    else:
        weight = {"no-match": 0.0}.get(mode, MATCH)
        reward = (CORRECT * correct + weight * m * (1 if correct else WRONG_MATCH)
                  + VALID * (invalid == 0) * (mode != "overlap"))
    return {"reward": reward, "correct": correct, "tool_match": m, "same_tools": names == taught,
            "invalid_calls": invalid, "has_answer": bool(pred), "calls": len(calls),
            "finished": finished}


def score_text(text: str, answer, reference: list, mode: str = "mentor", finished: bool = True,
               final: str | None = None) -> dict:
    """score() of a completion given as text: its calls are parsed from `text`, the answer is
    read from `final` (the last assistant turn) when the caller can tell turns apart, else
    from the whole text."""
    return score(tools.parse_tool_calls(text), text if final is None else final, answer, reference,
                 mode, finished)


def score_rollout(rollout, record: dict, mode: str = "mentor") -> dict:
    """score() of a sampled conversation (a model.Rollout: its calls, its last turn, whether it
    finished) against a data record (its answer, its teacher reference; none is needed for
    the sparse reward)."""
    reference = [] if mode == "sparse" and record["teacher"] is None else files.reference(record)
    return score(rollout.calls, rollout.final, record["answer"], reference, mode, rollout.finished)


# --------------------------------------------- adapters for existing distributed trainers
# TRL's GRPOTrainer and verl call a reward function with their own keywords and shapes; these
# adapters turn them into score() arguments.

ABLATIONS = {"MENTOR": "mentor", "ABLATION2": "overlap", "ABLATION3": "no-match", "ABLATION4": "f1",
             "SPARSE": "sparse"}  # the authors' ablation_exp_id -> this project's mode


def teacher_names(row: dict, mode: str) -> list[str]:
    """The teacher's tool names of one data row (a dict): its `tool_calls_used` (or
    `teacher_tools`), a list, a JSON string of one, or an array (anything with .tolist(), as in
    verl's batches); [] in sparse mode when there are none. Raises ValueError when they are
    missing or malformed: an empty teacher would rank a student that calls no tool above one
    that calls the right ones."""
    row = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in row.items()
           if k in ("tool_calls_used", "teacher_tools") and v is not None}
    reference = files.teacher_of(row)
    if reference is None and mode != "sparse":
        raise ValueError("no teacher reference: each row needs 'tool_calls_used' (the teacher's "
                         "tool names; for verl in extra_info); only the sparse reward scores "
                         "without one")
    return reference["tools"] if reference else []


def message_calls(message: dict) -> list[dict]:
    """The tool calls of one chat message, as tools.parse_tool_calls dicts: `<tool_call>` blocks
    left in its content (not every chat template parses them), then its structured `tool_calls`
    ({"type": "function", "function": {"name", "arguments"}}, or flat {"name", "arguments"};
    arguments a dict or a JSON string). Structured calls are written back as the blocks they
    were parsed from, so one parser applies one set of rules (an unknown name is invalid)."""
    blocks = "".join(f"<tool_call>{json.dumps(c.get('function', c))}</tool_call>"
                     for c in message.get("tool_calls") or [])
    return tools.parse_tool_calls((message.get("content") or "") + blocks)


def end_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids that end a completion, as GRPOTrainer tells truncation: the tokenizer's EOS and pad
    ids, plus the EOS ids of the generation config saved with the tokenizer, when there is one
    (Qwen2.5's: <|im_end|> and <|endoftext|>)."""
    try:
        declared = GenerationConfig.from_pretrained(tokenizer.name_or_path).eos_token_id
    except OSError:  # no generation_config.json where the tokenizer came from
        declared = None
    declared = [declared] if isinstance(declared, int) else declared or []
    return {tokenizer.eos_token_id, tokenizer.pad_token_id, *declared} - {None}


def score_completion(completion: str | list[dict], answer, reference: list, mode: str,
                     ended: bool) -> float:
    """The reward of one TRL completion: a string, or its messages (assistant turns and tool
    results). `ended`: its last token ends a turn. One still waiting on a tool (out of
    iterations or of length) is cut off too."""
    if isinstance(completion, str):
        return score_text(completion, answer, reference, mode, ended)["reward"]
    turns = [m for m in completion if m.get("role") == "assistant"]
    calls = [c for m in turns for c in message_calls(m)]
    waiting = completion[-1].get("role") != "assistant" or bool(completion[-1].get("tool_calls"))
    final = (turns[-1].get("content") or "") if turns else ""
    return score(calls, final, answer, reference, mode, ended and not waiting)["reward"]


def make_reward_func(tokenizer: PreTrainedTokenizerBase | None = None,
                     mode: str = "mentor") -> Callable[..., list[float]]:
    """A reward function for TRL's GRPOTrainer(reward_funcs=...), scoring in `mode`.

    TRL calls it with keywords: prompts, completions (strings, or lists of messages: assistant
    turns with structured `tool_calls` and {"role": "tool"} results), completion_ids (each
    completion's token ids, tool results included, no padding, ending with an end token unless
    cut off), trainer_state, log_extra, log_metric, and a list per dataset column, of which
    `answer` and `tool_calls_used` (or `teacher_tools`) are read. With the `tokenizer`, a
    completion whose ids do not end with an end token (end_token_ids) is cut off and scores 0.0;
    without it that cannot be seen. Returns the function, which returns one float per completion."""
    ends = end_token_ids(tokenizer) if tokenizer is not None else None

    def reward_func(completions: list, answer: list, completion_ids: list[list[int]],
                    **columns) -> list[float]:
        rows = [{k: columns[k][i] for k in ("tool_calls_used", "teacher_tools") if k in columns}
                for i in range(len(completions))]
        return [score_completion(c, a, teacher_names(row, mode), mode,
                                 ends is None or ids[-1] in ends)
                for c, a, row, ids in zip(completions, answer, rows, completion_ids)]

    return reward_func


reward_func = make_reward_func()  # MENTOR mode, blind to truncation (see make_reward_func)


def assistant_header(tokenizer: PreTrainedTokenizerBase) -> str:
    """The text the tokenizer's chat template puts before an assistant turn, what
    add_generation_prompt appends (Qwen: "<|im_start|>assistant\\n")."""
    chat = [{"role": "user", "content": "x"}]
    bare = tokenizer.apply_chat_template(chat, tokenize=False)
    return tokenizer.apply_chat_template(chat, tokenize=False,
                                         add_generation_prompt=True)[len(bare):]


def compute_score(data_source: str, solution_str: str, ground_truth, extra_info: dict | None = None,
                  tokenizer: PreTrainedTokenizerBase | None = None,
                  ablation_exp_id: str | None = None, **kwargs) -> float:
    """verl's reward function (custom_reward_function): the reward of `solution_str` against the
    gold `ground_truth` and the teacher's tool names in `extra_info["tool_calls_used"]`, in the
    mode the authors' `ablation_exp_id` names (MENTOR by default; see ABLATIONS). Other keywords
    (verl's reward_kwargs) are ignored; `data_source` is not read.

    verl's own reward managers pass the response alone, decoded without special tokens, and no
    tokenizer: truncation cannot be seen. The authors' manager passes `tokenizer=` and the prompt
    + response decoded with special tokens: then a string that does not end with
    tokenizer.eos_token is cut off (0.0), calls are read after the prompt (its instructions hold
    an empty \\boxed{} and, with tools, a sample <tool_call>) and the answer from the last
    assistant turn. Returns the reward."""
    mode = ABLATIONS.get(ablation_exp_id or "MENTOR")
    if mode is None:
        raise ValueError(f"unknown ablation_exp_id {ablation_exp_id!r}; "
                         f"choose from {', '.join(ABLATIONS)}")
    reference = teacher_names(extra_info or {}, mode)
    if tokenizer is None:
        return score_text(solution_str, ground_truth, reference, mode)["reward"]
    header = assistant_header(tokenizer)
    response = solution_str.split(header, 1)[-1]  # the prompt holds the system and user turns only
    return score_text(response, ground_truth, reference, mode,
                      solution_str.endswith(tokenizer.eos_token),
                      final=response.rsplit(header, 1)[-1])["reward"]
