"""reward.py: every rule and mode, with expected rewards computed by hand.

    unfinished -> 0.0; no or empty box -> 0.1;
    else 0.7 * correct + 0.3 * match * (1 if correct else 0.2) + 0.1 * (no invalid call)
"""
import json

import pytest
from pytest import approx

import reward
import files
import tools

score = reward.score_text  # the text form: calls parsed from the completion


def call(name, **arguments) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>\n'


ADD = call("add", a=3, b=4)            # 7
MUL = call("multiply", a=7, b=2)       # 14
UNKNOWN = call("calculator", expression="3+4")
UNPARSABLE = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 3\n</tool_call>\n"


def box(x) -> str:
    return f"The answer is \\boxed{{{x}}}."


# ------------------------------------------------------- mentor mode (the authors' MENTOR)

def test_correct_full_match_no_invalid_is_1_1():
    r = score(ADD + MUL + box(14), "14", ["add", "multiply"])
    assert r == {"reward": approx(1.1), "correct": True, "tool_match": 1.0, "same_tools": True,
                 "invalid_calls": 0, "has_answer": True, "calls": 2, "finished": True}


def test_mentor_is_equality_of_the_sets_of_names():
    teacher = ["multiply", "add"]
    student = ADD + call("add", a=7, b=0) + MUL  # counts and order differ, same set
    assert score(student + box(14), "14", teacher)["reward"] == approx(1.1)
    # a subset is no match: 0.7 + 0 + 0.1 = 0.8
    r = score(ADD + box(14), "14", teacher)
    assert r["tool_match"] == 0.0 and r["reward"] == approx(0.8)
    # a superset is no match either
    assert score(ADD + MUL + call("sqrt", x=4) + box(14), "14", teacher)["tool_match"] == 0.0
    # wrong answer, equal sets: 0.3*1*0.2 + 0.1 = 0.16; unequal: 0.1
    assert score(student + box(15), "14", teacher)["reward"] == approx(0.16)
    assert score(ADD + box(15), "14", teacher)["reward"] == approx(0.1)
    # correct without any tool: 0.7 + 0 + 0.1
    assert score(box(14), "14", teacher)["reward"] == approx(0.8)


def test_a_teacher_that_used_no_tools_matches_a_student_that_used_none():
    # The authors' code gives such rows a flat 0.1 (their data never has them); here the empty
    # sets are equal, so a right answer without tools is a full match.
    assert score(box(7), "7", [])["reward"] == approx(1.1)
    assert score(ADD + box(7), "7", [])["reward"] == approx(0.8)


def test_hallucinated_names_only_lose_the_validity_bonus():
    # names [calculator, add]: calculator is no tool, so the set is {add} == {add}: 0.7 + 0.3 + 0
    r = score(UNKNOWN + ADD + box(7), "7", ["add"])
    assert r["invalid_calls"] == 1 and r["calls"] == 2
    assert r["tool_match"] == 1.0 and r["reward"] == approx(1.0)
    # an unparsable call is invalid too, and has no name
    r = score(UNPARSABLE + ADD + box(7), "7", ["add"])
    assert r["invalid_calls"] == 1 and r["tool_match"] == 1.0 and r["reward"] == approx(1.0)
    # two invalid calls, wrong answer, no valid tool: 0 + 0 + 0
    r = score(UNKNOWN + UNPARSABLE + box(8), "7", ["add"])
    assert r["invalid_calls"] == 2 and r["reward"] == approx(0.0)
    # a name that is not even a string, an unclosed call at the end: invalid, no name
    r = score('<tool_call>{"name": ["add"], "arguments": {}}</tool_call>' + box(7), "7", [])
    assert r["invalid_calls"] == 1 and r["reward"] == approx(0.7 + 0.3)
    r = score(box(7) + '<tool_call>{"name": "add"', "7", [])
    assert r["invalid_calls"] == 1 and r["reward"] == approx(1.0)


def test_a_known_tool_with_bad_arguments_is_no_hallucination():
    # add with a missing argument gets an error reply in a rollout, but names a real tool
    r = score(call("add", a=3) + box(3), "3", ["add"])
    assert r["invalid_calls"] == 0 and r["tool_match"] == 1.0 and r["reward"] == approx(1.1)


# ------------------------------------------------------------------ the authors' ablations

def test_overlap_any_shared_name_and_no_validity_term():
    teacher = ["add", "multiply"]
    assert score(ADD + box(14), "14", teacher, mode="overlap")["reward"] == approx(1.0)  # 0.7 + 0.3
    assert score(call("sqrt", x=4) + box(14), "14", teacher,
                 mode="overlap")["reward"] == approx(0.7)
    assert score(ADD + box(15), "14", teacher, mode="overlap")["reward"] == approx(0.06)   # 0.3*0.2
    assert score(UNKNOWN + ADD + box(14), "14", teacher, mode="overlap")["reward"] == approx(1.0)
    assert score(box(15), "14", teacher, mode="overlap")["reward"] == approx(0.0)


def test_no_match_is_outcome_plus_validity():
    teacher = ["add", "multiply"]
    assert score(ADD + MUL + box(14), "14", teacher, mode="no-match")["reward"] == approx(0.8)
    assert score(box(14), "14", teacher, mode="no-match")["reward"] == approx(0.8)
    assert score(UNKNOWN + box(14), "14", teacher, mode="no-match")["reward"] == approx(0.7)
    assert score(ADD + MUL + box(15), "14", teacher, mode="no-match")["reward"] == approx(0.1)


def test_f1_over_the_sets_of_names():
    teacher = ["add", "multiply"]
    # {add} vs {add, multiply}: F1 = 2*1/3; right: 0.7 + 0.3*(2/3) + 0.1 = 1.0; wrong:
    # 0.3*(2/3)*0.2 + 0.1
    r = score(ADD + call("add", a=1, b=1) + box(14), "14", teacher, mode="f1")
    assert r["tool_match"] == approx(2 / 3) and r["reward"] == approx(1.0)
    assert score(ADD + box(15), "14", teacher, mode="f1")["reward"] == approx(0.14)
    assert score(ADD + MUL + MUL + box(14), "14", teacher, mode="f1")["reward"] == approx(1.1)
    assert reward.set_f1(set(), set()) == 1.0
    assert reward.set_f1({"add"}, set()) == 0.0
    assert reward.set_f1({"add", "sqrt", "floor"}, {"add"}) == approx(0.5)  # 2*1/4


def test_unfinished_is_zero_in_every_mode():
    for mode in reward.MODES:
        r = score(ADD + MUL + box(14), "14", ["add", "multiply"], mode=mode, finished=False)
        assert r["reward"] == 0.0, mode
        assert r["finished"] is False and r["correct"] is True  # still reported for logging


def test_no_box_or_empty_box_is_0_1_in_every_mode():
    for mode in reward.MODES:
        for text in [ADD + MUL + "The answer is 14.", ADD + "\\boxed{}", ADD + "\\boxed{  }",
                     ADD + "\\boxed{14"]:
            r = score(text, "14", ["add", "multiply"], mode=mode)
            assert r["reward"] == approx(0.1), (mode, text)
            assert r["has_answer"] is False and r["correct"] is False


def test_answer_formats_and_last_box():
    assert score(ADD + box("1,234"), "1234", ["add"])["reward"] == approx(1.1)
    assert score(ADD + box("$12.0"), "12", ["add"])["reward"] == approx(1.1)
    assert score(ADD + box(5) + " no wait " + box(7), "7", ["add"])["reward"] == approx(1.1)
    assert score(ADD + box(7) + " no wait " + box(5), "7", ["add"])["reward"] == approx(0.16)


# ------------------------------------------------------------------------- sparse mode

def test_sparse():
    teacher = ["add", "multiply"]
    assert score(box(14), "14", teacher, mode="sparse")["reward"] == 1.0  # tools do not matter
    assert score(UNKNOWN + box(14), "14", teacher, mode="sparse")["reward"] == 1.0
    assert score(ADD + MUL + box(15), "14", teacher, mode="sparse")["reward"] == approx(0.1)
    assert score(ADD + MUL + box(14), "14", teacher, mode="sparse", finished=False)["reward"] == 0.0
    assert score(ADD + MUL, "14", teacher, mode="sparse")["reward"] == approx(0.1)
    # logged only
    assert score(ADD + box(14), "14", teacher, mode="sparse")["tool_match"] == approx(2 / 3)


# ------------------------------------------------------------------------- strict mode

STRICT_TEACHER = [{"name": "add", "arguments": {"a": 3, "b": 4}},
                  {"name": "multiply", "arguments": {"a": 7, "b": 2}}]


def test_strict_same_calls_numerically_equal():
    student = call("add", a=3.0, b=4) + call("multiply", a=7, b=2.0)
    r = score(student + box(14), "14", STRICT_TEACHER, mode="strict")
    assert r["tool_match"] == 1.0 and r["reward"] == approx(1.1)
    # wrong answer, exact replication: 0.3*1*0.2 + 0.1 = 0.16
    assert score(student + box(15), "14", STRICT_TEACHER, mode="strict")["reward"] == approx(0.16)


@pytest.mark.parametrize("student", [
    MUL + ADD,                                            # other order
    call("add", a=4, b=3) + MUL,                          # other argument values
    call("add", a=3, b=4.001) + MUL,
    call("add", a=3) + MUL,                               # missing argument
    call("add", a=3, b=4, c=0) + MUL,                     # extra argument
    ADD,                                                  # a call missing
    ADD + MUL + MUL,                                      # a call too many
    call("add", a=3, b=4) + call("power", base=7, exponent=2),
    "",                                                   # no calls
])
def test_strict_mismatch_is_zero(student):
    r = score(student + box(14), "14", STRICT_TEACHER, mode="strict")
    assert r["tool_match"] == 0.0
    assert r["reward"] == approx(0.8)  # 0.7 + 0 + 0.1


def test_strict_compares_lists_element_wise():
    teacher = [{"name": "sum_numbers", "arguments": {"numbers": [1, 2, 3]}}]
    same = call("sum_numbers", numbers=[1.0, 2, 3.0])
    assert score(same + box(6), "6", teacher, mode="strict")["reward"] == approx(1.1)
    for other in ([1, 2], [1, 2, 4], [3, 2, 1]):
        assert score(call("sum_numbers", numbers=other) + box(6), "6", teacher,
                     mode="strict")["tool_match"] == 0.0
    assert reward.same_value([1, [2.0]], [1.0, [2]])
    assert not reward.same_value(3, "3")
    assert not reward.same_value(True, 1)
    # a boolean is not the number 1 (the tools refuse it), so it does not replicate add(a=1, b=4)
    r = score(call("add", a=True, b=4) + box(5), "5",
              [{"name": "add", "arguments": {"a": 1, "b": 4}}], mode="strict")
    assert r["tool_match"] == 0.0 and r["reward"] == approx(0.8)


def test_strict_with_bare_name_teacher_compares_names_in_order():
    teacher = ["add", "multiply"]
    student = call("add", a=100, b=1) + call("multiply", a=2, b=2)  # any arguments
    assert score(student + box(14), "14", teacher, mode="strict")["reward"] == approx(1.1)
    assert score(MUL + ADD + box(14), "14", teacher, mode="strict")["reward"] == approx(0.8)
    assert score(ADD + box(14), "14", teacher, mode="strict")["reward"] == approx(0.8)
    # an invalid call where the teacher had "add": no match and no bonus: 0.7
    assert score(UNPARSABLE + MUL + box(14), "14", teacher, mode="strict")["reward"] == approx(0.7)


def test_teacher_trajectory_calls_work_as_strict_reference():
    import tasks
    import teacher
    p = tasks.Problem("t-0", "q", "14", "train", "shirts",
                      [[("add", {"a": 3, "b": 4})], [("multiply", {"a": "#0", "b": 2})]])
    ref = files.tool_calls(teacher.trajectory(p))
    assert score(ADD + MUL + box(14), "14", ref, mode="strict")["reward"] == approx(1.1)
    assert score(ADD + MUL + box(14), "14", [c["name"] for c in ref])["reward"] == approx(1.1)


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="unknown reward mode 'dense'"):
        score(box(1), "1", [], mode="dense")


def test_score_never_raises_on_garbage():
    for text in ["<tool_call>", "<tool_call>{}</tool_call>", "\\boxed{", "}" * 10,
                 "<tool_call>null</tool_call>",
                 '<tool_call>{"name": {"a": 1}}</tool_call>\\boxed{1}', "\\boxed{\\boxed{1}}"]:
        for mode in reward.MODES:
            r = score(text, "1", STRICT_TEACHER, mode=mode)
            assert 0.0 <= r["reward"] <= 1.1 + 1e-9


def test_the_answer_must_be_in_the_last_turn():
    turns = [ADD + box(7), "I am done."]  # a box beside a tool call, then a last turn without one
    # from the text alone, the last box counts
    assert score("\n".join(turns), "7", ["add"])["correct"]
    s = score("\n".join(turns), "7", ["add"], final=turns[-1])
    assert not s["correct"] and not s["has_answer"] and s["reward"] == approx(0.1)


# ------------------------------------------------------ scoring a rollout against a record

class FakeRollout:
    """What score_rollout reads of a model.Rollout."""
    def __init__(self, text: str, finished: bool = True):
        self.calls, self.final, self.finished = tools.parse_tool_calls(text), text, finished


@pytest.mark.parametrize("row", [
    {"question": "2 + 3?", "reward_model": {"ground_truth": "5"}, "tool_calls_used": ["add"]},
    {"question": "2 + 3?", "reward_model": {"ground_truth": "5"}, "tool_calls_used": '["add"]'},
    {"question": "2 + 3?", "answer": "5", "teacher_tools": ["add"]},
])
def test_the_authors_rows_score_against_their_teacher(tmp_path, row):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    record = files.load_records(str(path))[0]
    # calling the teacher's tool beats calling none (the reverse of what an empty teacher gave)
    assert reward.score_rollout(FakeRollout(call("add", a=2, b=3) + box(5)),
                                record)["reward"] == approx(1.1)
    assert reward.score_rollout(FakeRollout(box(5)), record)["reward"] == approx(0.8)


def test_a_record_without_teacher_scores_only_sparse(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "2 + 3?", "answer": "5"}) + "\n")
    record = files.load_records(str(path), need_teacher=False)[0]
    assert record["teacher"] is None
    assert reward.score_rollout(FakeRollout(box(5)), record, mode="sparse")["reward"] == 1.0
    with pytest.raises(ValueError, match="no teacher reference"):
        reward.score_rollout(FakeRollout(box(5)), record)


def test_scoring_parsed_calls_equals_scoring_the_text():
    text = UNKNOWN + ADD + MUL + box(14)
    for mode in reward.MODES:
        assert reward.score(tools.parse_tool_calls(text), box(14), "14", STRICT_TEACHER, mode) == \
            score(text, "14", STRICT_TEACHER, mode, final=box(14))
