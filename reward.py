"""The reward: the verifiable outcome plus a soft match against the teacher's tool calls.

    not finished (cut off: no EOS, out of turns or tokens)   -> 0.0
    no \\boxed{} answer, or an empty one                       -> 0.1
    otherwise   0.7 * correct
              + 0.3 * match * (1 if correct else 0.2)
              + 0.1 * (no invalid call)

`match` is what the modes change (everything else is shared, so comparisons are fair):
    mentor        F1 between the multisets of tool names (flexible: right kinds of tools)
    mentor-exact  1 if the *sets* of tool names are equal (the authors' released code)
    strict        1 if the ordered calls equal the teacher's, names and argument values
    sparse        no match term at all: 1.0 if correct, else 0.1
"""
import math
from collections import Counter

import tasks
import teacher
import tools

CORRECT = 0.7        # weight of the right final answer
MATCH = 0.3          # weight of matching the teacher's tools ...
WRONG_MATCH = 0.2    # ... scaled down this much when the answer is wrong
VALID = 0.1          # bonus when no call is invalid (unparsable or unknown tool)
FORMAT_ONLY = 0.1    # finished but no \boxed{} answer (and sparse mode's wrong answer)
MODES = ("mentor", "mentor-exact", "strict", "sparse")


def name_f1(student: list[str], teacher: list[str]) -> float:
    """F1 between two multisets of tool names; two empty lists match perfectly."""
    if not student and not teacher:
        return 1.0
    overlap = sum((Counter(student) & Counter(teacher)).values())
    return 2 * overlap / (len(student) + len(teacher))


def same_value(a, b) -> bool:
    """Argument values equal, numbers compared numerically (3 == 3.0), lists element-wise."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if tools.is_number(a) and tools.is_number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    # True == 1 in Python, but the tools refuse booleans as numbers: not the same value.
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def same_calls(student: list[dict], teacher: list[dict]) -> bool:
    """The ordered calls are the same: names, and argument values where the teacher has them."""
    if len(student) != len(teacher):
        return False
    for s, t in zip(student, teacher):
        if s["name"] != t["name"]:
            return False
        if "arguments" in t:
            sa, ta = s.get("arguments"), t["arguments"]
            if not isinstance(sa, dict) or sa.keys() != ta.keys() or not all(same_value(sa[k], ta[k]) for k in ta):
                return False
    return True


def score(completion: str, answer, teacher: list, mode: str = "mentor", finished: bool = True,
          final: str | None = None) -> dict:
    """Score one student completion (all its assistant turns) against the gold answer and the
    teacher's tool calls (each {"name", "arguments"} or a bare tool name). The answer is the
    last \\boxed{} of `final`, the last assistant turn, when the caller can tell turns apart
    (a box written beside a tool call is no final answer); else of the whole completion.

    Returns {"reward", "correct", "tool_match", "invalid_calls", "has_answer", "calls", "finished"}.
    """
    if mode not in MODES:
        raise ValueError(f"unknown reward mode {mode!r}; choose from {', '.join(MODES)}")
    calls = tools.parse_tool_calls(completion)
    teacher = [t if isinstance(t, dict) else {"name": t} for t in teacher]
    names = [c["name"] for c in calls if isinstance(c["name"], str)]
    teacher_names = [t["name"] for t in teacher]
    # Invalid = cannot be parsed, or names no registered tool (the paper's hallucinated tool).
    invalid = sum(1 for c in calls if c["name"] not in tools.TOOLS)
    pred = tasks.extract_answer(completion if final is None else final)
    correct = tasks.is_correct(pred, answer)

    if mode in ("mentor", "sparse"):
        match = name_f1(names, teacher_names)
    elif mode == "mentor-exact":
        match = float(set(names) == set(teacher_names))
    else:
        match = float(same_calls(calls, teacher))

    if not finished:
        reward = 0.0
    elif not pred:
        reward = FORMAT_ONLY
    elif mode == "sparse":
        reward = 1.0 if correct else FORMAT_ONLY
    else:
        reward = CORRECT * correct + MATCH * match * (1 if correct else WRONG_MATCH) + VALID * (invalid == 0)
    return {"reward": reward, "correct": correct, "tool_match": match, "invalid_calls": invalid,
            "has_answer": bool(pred), "calls": len(calls), "finished": finished}


def score_rollout(rollout, record: dict, mode: str = "mentor") -> dict:
    """score() of a sampled conversation (a model.Rollout: all its text, its last turn, whether
    it finished) against a data record (its answer, its teacher's calls)."""
    return score(rollout.text, record["answer"], teacher.reference(record), mode=mode, finished=rollout.finished,
                 final=rollout.final)


# --------------------------------------------- adapters for existing distributed trainers

def completion_text(completion) -> str:
    """A completion as text: a string, or a conversational list of messages (TRL style)."""
    if isinstance(completion, str):
        return completion
    return "\n".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")


def reward_func(completions: list, answer: list, teacher_tools: list, **kwargs) -> list[float]:
    """TRL-style reward function (GRPOTrainer(reward_funcs=reward_func)): the dataset needs
    `answer` and `teacher_tools` columns. Uses the MENTOR mode."""
    return [score(completion_text(c), a, t, final=None if isinstance(c, str) else completion_text(c[-1:]))["reward"]
            for c, a, t in zip(completions, answer, teacher_tools)]


def compute_score(data_source: str, solution_str: str, ground_truth, extra_info: dict | None = None) -> float:
    """verl-style reward (custom_reward_function): `extra_info["teacher_tools"]` holds the
    teacher's tool names. Uses the MENTOR mode."""
    teacher = (extra_info or {}).get("teacher_tools", [])
    return score(solution_str, ground_truth, list(teacher))["reward"]
