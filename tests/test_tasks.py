"""tasks.py: the benchmark (families, splits, answers) and answer checking."""
import math
import re
import sys

import pytest

import tasks
import tools


@pytest.fixture(scope="module")
def bench():
    """The "none" condition: the original suite, no habits."""
    return tasks.benchmark("none", n_train=200, n_test=60, seed=0)


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
    "cloth": lambda n: n[0] * n[1],
    "ood_total_four": lambda n: sum(n),
    "ood_area_cost": lambda n: n[0] * n[0] * n[1],
    "ood_big_numbers": lambda n: n[0] * n[1],
    # a, b, then d before c in the question
    "ood_three_steps": lambda n: (n[0] + n[1]) * n[3] - n[2],
    "ood_four_steps": lambda n: ((n[0] + n[1]) * n[3] - n[2]) % n[4],
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
    # families round-robin: 60 OOD problems over 5 families is 12 each
    assert sorted([p.family for p in bench["test_ood"]].count(f)
                  for f in tasks.OOD_FAMILIES) == [12] * 5
    small = tasks.benchmark("none", n_train=7, n_test=5, seed=3)
    assert [len(small[s]) for s in ("train", "test_id", "test_ood")] == [7, 5, 5]


def test_deterministic_by_seed(bench):
    again = tasks.benchmark("none", n_train=200, n_test=60, seed=0)
    for split in bench:
        assert [(p.question, p.answer, p.family, p.plan) for p in bench[split]] == \
               [(p.question, p.answer, p.family, p.plan) for p in again[split]]
    other = tasks.benchmark("none", n_train=200, n_test=60, seed=1)
    for split in bench:
        assert [p.question for p in bench[split]] != [p.question for p in other[split]]


def test_splits_disjoint_and_questions_unique(bench):
    qs = {s: [p.question for p in ps] for s, ps in bench.items()}
    for s in qs:
        assert len(set(qs[s])) == len(qs[s])
    assert not set(qs["train"]) & set(qs["test_id"])
    assert not set(qs["train"]) & set(qs["test_ood"])
    assert not set(qs["test_id"]) & set(qs["test_ood"])


def words(question: str) -> set[str]:
    return set(re.findall(r"[A-Za-z]+", question))


@pytest.mark.parametrize("condition", tasks.CONDITIONS)
def test_every_word_of_a_test_question_is_in_the_training_questions(condition):
    """At the full size rl.py uses: a word the student never read in training would leave its
    embedding untrained, and a test that hangs on it measures that, not the skill."""
    splits = tasks.benchmark(condition)
    trained = set().union(*(words(p.question) for p in splits["train"]))
    for split in ("test_id", "test_ood"):
        unseen = {(p.family, w) for p in splits[split] for w in words(p.question) - trained}
        assert not unseen, (split, sorted(unseen))
        assert not {p.question for p in splits[split]} & {p.question for p in splits["train"]}
    assert not {p.question for p in splits["test_id"]} & {p.question for p in splits["test_ood"]}


def test_the_original_suite_has_an_ood_family_with_more_calls_than_any_id_family(bench):
    calls = lambda problems: max(sum(len(turn) for turn in p.plan) for p in problems)  # noqa: E731
    assert calls([p for p in bench["test_ood"] if p.family == "ood_four_steps"]) == 4
    assert calls(bench["train"]) == 3


def test_test_sets_do_not_depend_on_n_train(bench):
    other = tasks.benchmark("none", n_train=13, n_test=60, seed=0)
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
    plan = [[("add", {"a": 2, "b": 3})], [("multiply", {"a": "#0", "b": 4})],
            [("divide", {"a": "#1", "b": 8})]]
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
            acc = tasks.float_or_int(tools.call_tool({"name": "add",
                                                      "arguments": {"a": acc, "b": x}}))
        assert str(acc) == p.answer
    for p in squares:
        [[(name, args)]] = p.plan
        assert name == "power" and args["exponent"] == 2
        x = args["base"]
        assert tools.call_tool({"name": "multiply", "arguments": {"a": x, "b": x}}) == p.answer


def test_ood_total_four_is_an_unseen_length_inside_the_seen_range(bench):
    id_sizes = {len(p.plan[0][0][1]["numbers"]) for ps in bench.values() for p in ps
                if p.family == "total"}
    ood_sizes = {len(p.plan[0][0][1]["numbers"]) for p in bench["test_ood"]
                 if p.family == "ood_total_four"}
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


@pytest.mark.parametrize("pred, gold, same", [
    ("0.75", "\\frac{3}{4}", True), ("\\frac{6}{8}", "\\frac{3}{4}", True),
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("3/4", "0.75", True), ("0.7", "\\frac{3}{4}", False), ("\\frac{3}{5}", "\\frac{3}{4}", False),
])
def test_latex_answers_with_math_verify(pred, gold, same):
    pytest.importorskip("math_verify")
    assert tasks.is_correct(pred, gold) is same


def test_latex_answers_without_math_verify_are_text_and_say_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # as if not installed
    tasks.note_once.cache_clear()
    assert not tasks.is_correct("0.75", "\\frac{3}{4}")
    # the same text still is the same answer
    assert tasks.is_correct("\\frac{3}{4}", "\\frac{3}{4}")
    assert capsys.readouterr().err.count("pip install math-verify") == 1  # once


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


# ------------------------------------------------------------------------ the habit conditions

@pytest.fixture(scope="module")
def conditions():
    return {c: tasks.benchmark(c, n_train=600, n_test=90, seed=0) for c in tasks.CONDITIONS}


HAND_HABIT = {  # the right answers, by hand from the question's numbers and words
    "packing": lambda q, n: {"full": math.floor, "needed": math.ceil, "nearest": round}[
        next(w for w in ("full", "needed", "nearest") if w in q)](n[0] / n[1]),
    "heights": lambda q, n: abs(n[0] - n[1]),
    "ood_packing": lambda q, n: HAND_HABIT["packing"](q, n),
    "ood_heights": lambda q, n: abs(n[0] - n[1]),
    "ood_climb": lambda q, n: math.ceil(abs(n[0] - n[1]) / n[2]),
}


def test_habit_families_answers_are_their_plans_and_the_hand_arithmetic(conditions):
    for condition in ("hidden", "refuted", "wrong"):
        for problems in conditions[condition].values():
            for p in problems:
                assert (tasks.run_plan(p.plan)[1] == p.answer
                        or (condition == "wrong" and p.family == "packing"))
                assert (float(p.answer)
                        == HAND_HABIT[p.family](p.question, numbers(p.question))), p.question
                # the habit runs through the tools too
                assert p.habit is None or tasks.run_plan(p.habit)


def test_habit_splits_are_disjoint_and_reproducible(conditions):
    for condition, splits in conditions.items():
        questions = [p.question for problems in splits.values() for p in problems]
        assert len(questions) == len(set(questions)), condition
        again = tasks.benchmark(condition, n_train=600, n_test=90, seed=0)
        assert [p.question for p in again["train"]] == [p.question for p in splits["train"]]
        assert ([(p.plan, p.demo) for p in again["train"]]
                == [(p.plan, p.demo) for p in splits["train"]])
    assert {p.family for p in conditions["hidden"]["test_ood"]} == set(tasks.HABIT_OOD)
    # at least one OOD family takes more calls than any family the student trains on
    calls = lambda problems: max(sum(len(turn) for turn in p.plan) for p in problems)  # noqa: E731
    assert calls([p for p in conditions["hidden"]["test_ood"] if p.family == "ood_climb"]) == 4
    assert calls(conditions["hidden"]["train"]) == 2


def agreement(problems) -> tuple[int, float]:
    """How many problems have a habit that picks other tools, and the share of them where the
    habit's answer is right anyway."""
    habit = [p for p in problems if p.habit]
    return len(habit), sum(tasks.run_plan(p.habit)[1] == p.answer for p in habit) / len(habit)


def test_the_habit_agrees_with_the_outcome_at_the_rate_each_condition_promises(conditions):
    n, agree = agreement(conditions["hidden"]["train"])
    assert n > 200 and agree == 1.0  # hidden: the outcome never tells the habit from the teacher
    assert agreement(conditions["hidden"]["test_id"])[1] == 1.0
    n, agree = agreement(conditions["refuted"]["train"])
    assert n > 200 and 0.3 < agree < 0.6  # refuted: the outcome tells them apart on most problems
    for condition in ("hidden", "refuted", "wrong"):
        n, agree = agreement(conditions[condition]["test_ood"])
        assert n == 90 and agree == 0.0  # out of domain the habit is always wrong


def test_the_demonstrator_follows_its_habit_on_about_two_thirds(conditions):
    for condition in ("hidden", "refuted"):
        habit = [p for p in conditions[condition]["train"] if p.habit]
        followed = sum(p.demo == p.habit for p in habit) / len(habit)
        assert abs(followed - tasks.HABIT_RATE) < 0.07
        assert all(p.demo is None for p in conditions[condition]["train"] if not p.habit)
    assert all(p.demo is None and p.habit is None for s in conditions["none"].values() for p in s)


def test_the_wrong_teacher_is_wrong_on_a_fifth_of_packing_only_in_training(conditions):
    wrong = conditions["wrong"]
    packing = [p for p in wrong["train"] if p.family == "packing"]
    changed = [p for p in packing
               if p.plan[1][0][0] != HAND_TOOL[next(w for w in HAND_TOOL if w in p.question)]]
    assert abs(len(changed) / len(packing) - tasks.WRONG_RATE) < 0.06
    for p in changed:  # a wrong rounding tool, and the demonstrator still writes its own plan
        assert p.plan[1][0][0] in tasks.CONTAINERS.values() and p.demo is not None
    right = lambda p: (  # noqa: E731
        p.plan[1][0][0] == HAND_TOOL[next(w for w in HAND_TOOL if w in p.question)])
    assert all(right(p) for p in wrong["test_id"] if p.family == "packing")
    assert ([p.question for p in wrong["test_ood"]]
            == [p.question for p in conditions["hidden"]["test_ood"]])


HAND_TOOL = {"full": "floor", "needed": "ceil", "nearest": "round_number"}


def test_an_unknown_condition_is_refused():
    with pytest.raises(ValueError, match="unknown condition 'easy'"):
        tasks.benchmark("easy", n_train=10, n_test=10)


# ------------------------------------------------------------------- the student's own way

HAND_OWN = {  # the right answers, by hand from the question's numbers
    "cups_made": lambda n: (n[0] + n[1]) * n[2],
    "shared_sum": lambda n: round((n[0] + n[1]) / n[2], 2),
    "restock": lambda n: n[0] + n[1] - n[2],
}


def first_results(plan: list) -> list[float]:
    """The result of each call but the last: what one call passes to the next."""
    turns, _ = tasks.run_plan(plan)
    return [float(c["result"]) for turn in turns for c in turn][:-1]


def test_the_student_s_own_way_is_right_in_and_out_of_domain(conditions):
    for condition in ("capacity", "alternatives"):
        for problems in conditions[condition].values():
            for p in problems:
                hand = HAND_OWN[p.family.removeprefix("ood_")](numbers(p.question))
                assert float(p.answer) == pytest.approx(hand), p.question
                assert tasks.run_plan(p.plan)[1] == p.answer
                # the demonstrator writes its own way or the teacher's, both right
                assert p.habit is None or tasks.run_plan(p.habit)[1] == p.answer
                assert p.demo in (None, p.habit)


def test_capacity_the_teacher_adds_one_digit_numbers_in_its_head_their_sums_grow_ood(
        conditions):
    splits = conditions["capacity"]
    for split in ("train", "test_id", "test_ood"):
        for p in splits[split]:
            a, b = numbers(p.question)[:2]
            first = p.plan[0][0]
            if not p.habit:  # a number of two digits: the teacher calls add, as the student does
                assert split != "test_ood" and 10 <= max(a, b) <= 19 and min(a, b) >= 1
                assert first == ("add", {"a": a, "b": b})
                continue
            # one digit each: the teacher writes their sum into its first call
            assert a < 10 and b < 10 and first[1]["a"] == a + b
            assert (a + b >= 10) == (split == "test_ood")
            assert p.habit[0] == [("add", {"a": a, "b": b})]
            teacher = {name for turn in p.plan for name, _ in turn}
            assert {name for turn in p.habit for name, _ in turn} == teacher | {"add"}
    # at full size, the add tool's results in domain cover the sums out of domain, and more
    results = {sum(numbers(p.question)[:2]) for p in tasks.benchmark("capacity")["train"]
               if not p.habit}
    assert set(range(11, 19)) <= results and max(results) == 38
    in_head = [bool(p.habit) for p in splits["train"]]
    assert 0.2 < sum(in_head) / len(in_head) < 0.4
    followed = [p.demo == p.habit for p in splits["train"] if p.habit]
    assert abs(sum(followed) / len(followed) - tasks.HABIT_RATE) < 0.07


def test_alternatives_only_the_teacher_s_order_passes_a_negative_number_out_of_domain(
        conditions):
    splits = conditions["alternatives"]
    for split in ("train", "test_id", "test_ood"):
        for p in splits[split]:
            names = lambda plan: [name for turn in plan for name, _ in turn]  # noqa: E731
            assert names(p.plan) == ["subtract", "add"] and names(p.habit) == ["add", "subtract"]
            assert first_results(p.habit)[0] > 0  # the student's order: a + b
            passed = first_results(p.plan)[0]  # the teacher's: a - sold
            assert passed < 0 if split == "test_ood" else passed > 0
    followed = [p.demo == p.habit for p in splits["train"]]
    assert abs(sum(followed) / len(followed) - tasks.HABIT_RATE) < 0.07
