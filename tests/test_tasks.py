"""tasks.py: the benchmark (families, splits, answers) and answer checking."""
import math
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tasks  # noqa: E402
import tools  # noqa: E402


@pytest.fixture(scope="module")
def bench():
    return tasks.benchmark(n_train=200, n_test=60, seed=0)


def numbers(question: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", question)]


# What each family's answer is, computed by hand from the numbers in its question
# (plain Python arithmetic, independent of tools.py and of the plans).
HAND = {
    "add_more": lambda n: n[0] + n[1],
    "sold": lambda n: n[0] - n[1],
    "boxes": lambda n: n[0] * n[1],
    "share": lambda n: round(n[0] / n[1], 2),
    "total": lambda n: sum(n),
    "square_area": lambda n: n[0] * n[0],
    "shirts": lambda n: (n[0] + n[1]) * n[2],
    "average": lambda n: (n[0] + n[1] + n[2]) // 3,
    "cartons": lambda n: n[0] % n[1],
    "side": lambda n: math.isqrt(n[0]),
    "gap": lambda n: abs(n[0] - n[1]),
    "ood_total_four": lambda n: sum(n),
    "ood_area_cost": lambda n: n[0] * n[0] * n[1],
    "ood_big_numbers": lambda n: n[0] * n[1],
    "ood_three_steps": lambda n: (n[0] + n[1]) * n[2] - n[3],
}


def test_families():
    assert len(tasks.ID_FAMILIES) >= 8
    assert len(tasks.OOD_FAMILIES) >= 4
    assert all(name.startswith("ood_") for name in tasks.OOD_FAMILIES)
    assert not any(name.startswith("ood_") for name in tasks.ID_FAMILIES)
    assert set(HAND) == set(tasks.ID_FAMILIES) | set(tasks.OOD_FAMILIES)


def test_sizes_and_fields(bench):
    assert set(bench) == {"train", "test_id", "test_ood"}
    assert [len(bench[s]) for s in ("train", "test_id", "test_ood")] == [200, 60, 60]
    for split, problems in bench.items():
        assert [p.id for p in problems] == [f"{split}-{i}" for i in range(len(problems))]
        assert all(p.split == split for p in problems)
    assert {p.family for p in bench["train"]} == set(tasks.ID_FAMILIES)
    assert {p.family for p in bench["test_id"]} == set(tasks.ID_FAMILIES)
    assert {p.family for p in bench["test_ood"]} == set(tasks.OOD_FAMILIES)
    # families round-robin: 60 OOD problems over 4 families is 15 each
    assert sorted([p.family for p in bench["test_ood"]].count(f) for f in tasks.OOD_FAMILIES) == [15] * 4
    small = tasks.benchmark(n_train=7, n_test=5, seed=3)
    assert [len(small[s]) for s in ("train", "test_id", "test_ood")] == [7, 5, 5]


def test_deterministic_by_seed(bench):
    again = tasks.benchmark(n_train=200, n_test=60, seed=0)
    for split in bench:
        assert [(p.question, p.answer, p.family, p.plan) for p in bench[split]] == \
               [(p.question, p.answer, p.family, p.plan) for p in again[split]]
    other = tasks.benchmark(n_train=200, n_test=60, seed=1)
    for split in bench:
        assert [p.question for p in bench[split]] != [p.question for p in other[split]]


def test_splits_disjoint_and_questions_unique(bench):
    qs = {s: [p.question for p in ps] for s, ps in bench.items()}
    for s in qs:
        assert len(set(qs[s])) == len(qs[s])
    assert not set(qs["train"]) & set(qs["test_id"])
    assert not set(qs["train"]) & set(qs["test_ood"])
    assert not set(qs["test_id"]) & set(qs["test_ood"])


def test_test_sets_do_not_depend_on_n_train(bench):
    other = tasks.benchmark(n_train=13, n_test=60, seed=0)
    for split in ("test_id", "test_ood"):
        assert [p.question for p in bench[split]] == [p.question for p in other[split]]
        assert [p.answer for p in bench[split]] == [p.answer for p in other[split]]


def test_answers_are_the_plans_run_through_the_tools(bench):
    for problems in bench.values():
        for p in problems:
            turns, answer = tasks.run_plan(p.plan)
            assert answer == p.answer
            assert [c["name"] for t in turns for c in t] == [name for t in p.plan for name, _ in t]
            assert turns[-1][-1]["result"] == p.answer


def test_answers_match_hand_arithmetic(bench):
    for problems in bench.values():
        for p in problems:
            expected = HAND[p.family](numbers(p.question))
            if p.family == "share":
                assert float(p.answer) == expected, p
            else:
                assert p.answer == str(expected), p


def test_run_plan_resolves_references():
    plan = [[("add", {"a": 2, "b": 3})], [("multiply", {"a": "#0", "b": 4})], [("divide", {"a": "#1", "b": 8})]]
    turns, answer = tasks.run_plan(plan)
    assert answer == "2.5"
    assert turns[1][0] == {"name": "multiply", "arguments": {"a": 5, "b": 4}, "result": "20"}
    assert turns[2][0]["arguments"] == {"a": 20, "b": 8}
    with pytest.raises(ValueError, match="divide"):
        tasks.run_plan([[("divide", {"a": 1, "b": 0})]])


def test_two_strategies_give_the_same_answer(bench):
    totals = [p for p in bench["train"] if p.family == "total"]
    squares = [p for p in bench["train"] if p.family == "square_area"]
    assert totals and squares
    for p in totals:
        [[(name, args)]] = p.plan
        assert name == "sum_numbers"
        acc = args["numbers"][0]
        for x in args["numbers"][1:]:  # the other strategy: a chain of add calls
            acc = tasks.float_or_int(tools.call_tool({"name": "add", "arguments": {"a": acc, "b": x}}))
        assert str(acc) == p.answer
    for p in squares:
        [[(name, args)]] = p.plan
        assert name == "power" and args["exponent"] == 2
        x = args["base"]
        assert tools.call_tool({"name": "multiply", "arguments": {"a": x, "b": x}}) == p.answer


def test_ood_total_four_is_an_unseen_length_inside_the_seen_range(bench):
    id_sizes = {len(p.plan[0][0][1]["numbers"]) for ps in bench.values() for p in ps if p.family == "total"}
    ood_sizes = {len(p.plan[0][0][1]["numbers"]) for p in bench["test_ood"] if p.family == "ood_total_four"}
    assert id_sizes == {2, 3, 5}
    assert ood_sizes == {4}


def test_ood_big_numbers_are_four_digit_boxes_and_id_boxes_at_most_three(bench):
    big = [p for p in bench["test_ood"] if p.family == "ood_big_numbers"]
    assert big
    for p in big:
        assert 1000 <= p.plan[0][0][1]["a"] <= 9999
        assert p.question.startswith("A box holds ")  # the ID "boxes" story
    # Every number drawn for an ID problem has 1 to 3 digits, or 1 to 4 in the stories of
    # tasks.RANGES. (The `side` family shows the square of a drawn number, its area, so that
    # one is checked through its square root.)
    seen_four = set()
    for split in ("train", "test_id"):
        for p in bench[split]:
            drawn = numbers(p.question)
            if p.family == "share":
                drawn = drawn[:2]  # "rounded to 2 decimals"
            if p.family == "side":
                drawn = [math.isqrt(drawn[0])]
            top = 9999 if p.family in ("add_more", "sold", "gap") else 999
            assert all(1 <= x <= top for x in drawn), p.question
            if any(x > 999 for x in drawn):
                seen_four.add(p.family)
    assert seen_four == {"add_more", "sold", "gap"}  # 4-digit numbers are seen, just not in boxes


def test_prompt():
    msgs = tasks.prompt("What is 2 + 2?")
    assert msgs == [{"role": "system", "content": tasks.SYSTEM_PROMPT},
                    {"role": "user", "content": "What is 2 + 2?"}]
    assert "\\boxed{}" in tasks.SYSTEM_PROMPT


# ------------------------------------------------------------------------ is_correct

@pytest.mark.parametrize("pred, gold", [
    ("1,234", "1234"), ("1234.0", "1234"), ("1,234", "1234.0"), ("1234", 1234), (" 1234 ", "1234"),
    ("$12", "12"), ("12", "$12"), ("$1,234.50", "1234.5"), ("12.", "12"),
    ("1000.05", "1000"),  # relative error 5e-5, inside the 1e-4 tolerance
    ("0.3333333333", "0.3333333333"), ("-7", "-7.0"), ("1e3", "1000"), (".5", "0.5"),
    ("New York.", "new  york"), ("  PARIS ", "paris"), ("yes!", "Yes"),
])
def test_is_correct_true(pred, gold):
    assert tasks.is_correct(pred, gold)


@pytest.mark.parametrize("pred, gold", [
    ("1001", "1000"),  # relative error 1e-3
    ("12", "13"), ("-12", "12"), ("0", "0.001"),
    (None, "12"), (None, ""),
    ("", ""), ("  ", ""), ("", "  "), (".", "."), ("!", "?"), ("", "12"), ("12", ""),
    ("New York", "York"), ("12 apples", "12"),
])
def test_is_correct_false(pred, gold):
    assert not tasks.is_correct(pred, gold)


def test_is_correct_tolerance_argument():
    assert tasks.is_correct("1.01", "1", rel_tol=0.02)
    assert not tasks.is_correct("1.01", "1")


def test_to_number():
    assert tasks.to_number("1,234") == 1234.0
    assert tasks.to_number(" $1234 ") == 1234.0
    assert tasks.to_number("-2.5") == -2.5
    assert tasks.to_number("abc") is None
    assert tasks.to_number("") is None
    assert tasks.to_number("1.2.3") is None


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{42}.", "42"),
    ("\\boxed{ 42 }", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{{a}{b{c}}}", "{a}{b{c}}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{}", ""),
    ("no box here", None),
    ("", None),
    ("\\boxed{12", None),
    ("\\boxed{\\frac{1}{2}", None),
    ("\\boxed{1} and \\boxed{2", None),  # the last box is unclosed
])
def test_extract_answer(text, expected):
    assert tasks.extract_answer(text) == expected
