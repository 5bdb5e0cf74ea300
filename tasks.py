"""The built-in benchmark: arithmetic word problems solved with the tools of tools.py.

A *family* is a story template plus the plan of tool calls that solves it. A plan is a list
of turns; each turn is a list of calls `(tool name, arguments)` that can run in parallel,
and an argument "#k" stands for the result of the k-th call of the plan. Answers are
computed by running the plan through tools.call_tool, never written by hand.

The benchmark comes in seven conditions (CONDITIONS, below the families). Three give a weak
demonstrator, whose trajectories are the warm start's data, a *habit*: it picks some tools
by a surface cue where the question says which (rounding by the container's noun, no
abs_value for towers). They differ in what the outcome can see: the habit's answer is right
on every training problem ("hidden"), or wrong on about half ("refuted"), or the teacher
itself errs on a fifth of one family ("wrong"). Out of domain the habit is always wrong.
The fourth ("none") is the original suite below, where the demonstrator is the teacher.
In two more the demonstrator's own way is right and the teacher's way does not suit a small
student: the teacher does a sum in its head ("capacity"), or uses the same tools in an order
that passes a negative number out of domain ("alternatives"). The last ("forgetting") is
"hidden" with a warm start that also learned skills the teacher never shows.

In the original suite, in-domain (ID) families are what the student trains on.
Out-of-domain (OOD) families use the same tools and the same words (every word of every test
question occurs in its condition's training questions, so no test hangs on an embedding the
student never trained), shifted mildly (a tiny student generalizes only within what its
training spans, so a big shift would put every method at 0%):
  - ood_total_four:   a total of exactly four numbers; ID totals have two, three or five,
                      so four is an unseen length inside the seen range.
  - ood_big_numbers:  the ID "boxes" story with 4-digit pen counts; ID boxes have 1 to 3
                      digits, while other ID stories (apples, cups, heights) have 1 to 4.
  - ood_area_cost:    the "square garden" story followed by the "cloth" story's price per
                      square meter: a new composition (power, then multiply) of phrases seen apart.
  - ood_three_steps:  the "shirts" story followed by the "are sold ... left" phrase: three
                      dependent calls (add, multiply, subtract).
  - ood_four_steps:   the same, the shirts left then packed in cartons (modulo): four
                      dependent calls, where no ID family takes more than three.
Some families admit two valid strategies (sum_numbers versus a chain of add; power(x, 2)
versus multiply(x, x)), so strict replication of the teacher and flexible matching differ.
"""
import functools
import math
import random
import re
import sys
from dataclasses import dataclass, field, replace

import tools

SYSTEM_PROMPT = "Solve the problem with the tools. Put the final answer in \\boxed{}."
# The authors' prompt (their verl data): one user turn, no system message; the chat template
# lists the tools.
AUTHORS_PROMPT = ("Question: {}\n\nIf you have got the answer, enclose it within \\boxed{{}} "
                  "with latex format.")


def prompt(question: str, authors: bool = False) -> list[dict]:
    """The chat messages a student (and the teacher) start from: the tiny student's short
    system prompt and the question, or, for real models (`authors`), the authors' prompt."""
    if authors:
        return [{"role": "user", "content": AUTHORS_PROMPT.format(question)}]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


@dataclass
class Problem:
    id: str
    question: str
    answer: str       # the gold answer: the right plan run through the tools
    split: str
    family: str
    plan: list = field(default_factory=list)  # the teacher's turns of calls, "#k" = k-th result
    # the weak demonstrator's habit, where it picks other tools than the teacher
    habit: list | None = None
    # the plan the demonstrator wrote down (the teacher's or the habit); None: plan
    demo: list | None = None


# ------------------------------------------------------------------------- the families
# Each family: rng, digits-range -> (question, plan). `alt` plans (other valid strategies)
# are not stored: the student finds them or not; the teacher has one consistent style.

NAMES = ["Ann", "Tom", "Mia", "Ben", "Zoe", "Sam"]


def num(rng: random.Random, lo: int, hi: int) -> int:
    """A number in [lo, hi] whose digit count is uniform, so short numbers are not rare."""
    digits = rng.randint(len(str(lo)), len(str(hi)))
    return rng.randint(max(lo, 10 ** (digits - 1)), min(hi, 10 ** digits - 1))


def add_more(rng, lo, hi):
    n, a, b = rng.choice(NAMES), num(rng, lo, hi), num(rng, lo, hi)
    return (f"{n} has {a} apples and buys {b} more. How many apples does {n} have?",
            [[("add", {"a": a, "b": b})]])


def sold(rng, lo, hi):
    a = num(rng, max(lo, 10), hi)
    b = num(rng, 1, a)
    return (f"A store has {a} cups. {b} cups are sold. How many cups are left?",
            [[("subtract", {"a": a, "b": b})]])


def boxes(rng, lo, hi):
    a, b = num(rng, lo, hi), num(rng, 2, 30)
    return (f"A box holds {a} pens. How many pens are in {b} boxes?",
            [[("multiply", {"a": a, "b": b})]])


def share(rng, lo, hi):
    a, b = num(rng, lo, hi), num(rng, 3, 9)
    q = (f"{a} dollars are shared equally by {b} friends. How much does each friend get, "
         "rounded to 2 decimals?")
    return q, [[("divide", {"a": a, "b": b})], [("round_number", {"x": "#0", "digits": 2})]]


def total(rng, lo, hi, sizes=(2, 3, 5)):
    n, xs = rng.choice(NAMES), [num(rng, lo, hi) for _ in range(rng.choice(sizes))]
    listed = ", ".join(map(str, xs[:-1])) + f" and {xs[-1]}"
    return (f"{n} scored {listed} points. How many points is that in total?",
            [[("sum_numbers", {"numbers": xs})]])


def square_area(rng, lo, hi):
    a = num(rng, max(lo, 2), hi)
    return (f"A square garden has sides of {a} meters. What is its area?",
            [[("power", {"base": a, "exponent": 2})]])


def shirts(rng, lo, hi):
    a, b, c = num(rng, lo, hi), num(rng, lo, hi), num(rng, 2, 30)
    q = f"A shop makes {a} red and {b} blue shirts a day. How many shirts does it make in {c} days?"
    return q, [[("add", {"a": a, "b": b})], [("multiply", {"a": "#0", "b": c})]]


def average(rng, lo, hi):
    xs = [num(rng, lo, hi) for _ in range(3)]
    q = (f"The temperatures were {xs[0]}, {xs[1]} and {xs[2]} degrees. What is the average, "
         "rounded down?")
    return q, [[("sum_numbers", {"numbers": xs})], [("divide", {"a": "#0", "b": 3})],
               [("floor", {"x": "#1"})]]


def cartons(rng, lo, hi):
    a, b = num(rng, max(lo, 13), hi), num(rng, 6, 12)
    return (f"{a} eggs are packed in cartons of {b}. How many eggs are left over?",
            [[("modulo", {"a": a, "b": b})]])


def side(rng, lo, hi):
    a = num(rng, max(lo, 2), hi) ** 2
    return (f"A square field has an area of {a} square meters. How long is its side?",
            [[("sqrt", {"x": a})]])


def gap(rng, lo, hi):
    a, b = num(rng, lo, hi), num(rng, lo, hi)
    q = (f"One city is {a} meters high and another is {b} meters high. "
         "How far apart are their heights?")
    return q, [[("subtract", {"a": a, "b": b})], [("abs_value", {"x": "#0"})]]


def cloth(rng, lo, hi):
    a, c = num(rng, max(lo, 2), hi), num(rng, 2, 30)
    q = f"Each square meter of cloth costs {c} dollars. What do {a} square meters cost?"
    return q, [[("multiply", {"a": a, "b": c})]]


def ood_total_four(rng, lo, hi):
    return total(rng, lo, hi, sizes=(4,))


def ood_area_cost(rng, lo, hi):
    a, c = num(rng, max(lo, 2), hi), num(rng, 2, 30)
    q = (f"A square garden has sides of {a} meters. Each square meter costs {c} dollars. "
         "What does the garden cost?")
    return q, [[("power", {"base": a, "exponent": 2})], [("multiply", {"a": "#0", "b": c})]]


def ood_three_steps(rng, lo, hi):
    a, b, c = num(rng, lo, hi), num(rng, lo, hi), num(rng, 2, 30)
    d = num(rng, 1, (a + b) * c)
    q = f"A shop makes {a} red and {b} blue shirts a day. {d} of the shirts it makes in {c} " \
        "days are sold. How many shirts are left?"
    return q, [[("add", {"a": a, "b": b})], [("multiply", {"a": "#0", "b": c})],
               [("subtract", {"a": "#1", "b": d})]]


def ood_four_steps(rng, lo, hi):
    q, plan = ood_three_steps(rng, lo, hi)
    e = num(rng, 6, 12)
    q = q.replace("How many shirts are left?",
                  f"The shirts that are left are packed in cartons of {e}. "
                  "How many shirts are left over?")
    return q, plan + [[("modulo", {"a": "#2", "b": e})]]


ID_FAMILIES = {f.__name__: f for f in [add_more, sold, boxes, share, total, square_area,
                                       shirts, average, cartons, side, gap, cloth]}
OOD_FAMILIES = {"ood_total_four": ood_total_four, "ood_area_cost": ood_area_cost,
                "ood_big_numbers": boxes, "ood_three_steps": ood_three_steps,
                "ood_four_steps": ood_four_steps}
RANGES = {"add_more": (1, 9999), "sold": (1, 9999), "gap": (1, 9999),  # 1 to 4 digits
          "ood_big_numbers": (1000, 9999)}
DEFAULT_RANGE = (1, 999)  # 1 to 3 digits



# ------------------------------------------------------------- habits: the method's lesson
# A weak demonstrator (playing a pretrained student) picks some tools by a surface habit
# instead of by what the question asks. Each habit family returns (question, the right plan,
# the habit's plan or None where the habit agrees with it); `numbers` sets whether the outcome
# can tell the two apart: "hidden" (never: the habit's answer is right too), "free" (as the
# numbers fall) or "exposed" (always: the habit's answer is wrong).

ITEMS = ["apples", "pens", "eggs", "books", "cups", "shirts"]
# The habit: the container's noun picks the rounding tool; the wording should.
CONTAINERS = {"box": "floor", "crate": "ceil", "bag": "round_number"}
PLURAL = {"box": "boxes", "crate": "crates", "bag": "bags"}
WORDINGS = {"floor": "How many full {c} are there?",
            "ceil": "How many {c} are needed for all of them?",
            "round_number": "How many {c} is that, to the nearest whole {one}?"}


def outcomes_differ(plan: list, habit: list) -> bool:
    return run_plan(plan)[1] != run_plan(habit)[1]


def packing(rng: random.Random, numbers: str, exposed_only: bool = False):
    """Divide, then round as the wording says (floor, ceil or round_number); the habit rounds
    by the container (a box is floored, a crate ceiled, a bag rounded)."""
    container = rng.choice(list(CONTAINERS))
    wording = rng.choice([w for w in WORDINGS if not exposed_only or w != CONTAINERS[container]])
    b = rng.randint(3, 12)
    plan = lambda tool: [[("divide", {"a": a, "b": b})], [(tool, {"x": "#0"})]]  # noqa: E731
    habit = CONTAINERS[container] if CONTAINERS[container] != wording else None
    while True:
        # A multiple of b divides evenly, so every rounding agrees. Never exactly x.5, where
        # round_number's banker's rounding would surprise a reader.
        a = b * rng.randint(2, 99) if habit and numbers == "hidden" else rng.randint(b + 1, 999)
        if (2 * a) % b == 0 and a % b:
            continue
        if numbers != "exposed" or outcomes_differ(plan(wording), plan(habit)):
            break
    c = PLURAL[container]
    q = (f"{a} {rng.choice(ITEMS)} are packed in {c} of {b}. "
         + WORDINGS[wording].format(c=c, one=container))
    return q, plan(wording), plan(habit) if habit else None


def heights(rng: random.Random, numbers: str, exposed_only: bool = False):
    """subtract, then abs_value: how far apart two heights are. The habit skips abs_value for
    towers (it thinks of the first as the taller); hidden, the first tower is the taller."""
    place = "tower" if exposed_only else rng.choice(["tower", "hill"])
    a, b = num(rng, 1, 9999), num(rng, 1, 9999)
    while a == b:
        b = num(rng, 1, 9999)
    if place == "tower" and numbers != "free" and (a > b) != (numbers == "hidden"):
        a, b = b, a
    plan = [[("subtract", {"a": a, "b": b})], [("abs_value", {"x": "#0"})]]
    habit = [[("subtract", {"a": a, "b": b})]] if place == "tower" else None
    q = (f"A red {place} is {a} meters high and a blue {place} is {b} meters high. "
         "How far apart are their heights?")
    return q, plan, habit


def ood_packing(rng, numbers):
    return packing(rng, "exposed", exposed_only=True)


def ood_heights(rng, numbers):
    return heights(rng, "exposed", exposed_only=True)


def ood_climb(rng, numbers):
    """Four calls where no training family takes more than two: the towers' gap (the abs_value
    habit exposed) covered with crates (ceil, as both wording and container say), in words
    of the training questions only."""
    _, plan, habit = heights(rng, "exposed", exposed_only=True)
    c = rng.randint(3, 12)
    a, b = plan[0][0][1]["a"], plan[0][0][1]["b"]
    q = (f"A red tower is {a} meters high and a blue tower is {b} meters high. How many crates "
         f"of {c} meters are needed for all of the meters their heights are apart?")
    # after subtract #0, abs_value #1
    tail = [[("divide", {"a": "#1", "b": c})], [("ceil", {"x": "#2"})]]
    return q, plan + tail, habit + [[("divide", {"a": "#0", "b": c})], [("ceil", {"x": "#1"})]]


# ----------------------------------------------- the student's own way: two conditions
# Where the teacher's way is right for the teacher but not for a small student. The
# demonstrator (the pretrained student) has its own valid way and takes it on HABIT_RATE of
# the problems; the teacher always takes its own. Each family returns (question, the
# teacher's plan, the student's way), as a habit family does.
#   capacity      the teacher adds two one-digit numbers in its head and writes the sum into
#                 its next call (others it adds with the add tool, as the student always
#                 does). In domain those sums stay below 10; out of domain they reach 10 to
#                 18: sums the student never did in its head, and the add tool does (its
#                 results in domain run to 38, of numbers to 19).
#                 Set equality (MENTOR) and strict give the student's way no match ({add,
#                 multiply} is not the teacher's {multiply}); f1 gives it 2/3, overlap all.
#   alternatives  the teacher subtracts what is sold, then adds what is bought; the student
#                 may add first: the same tools (set matching cannot tell them apart), another
#                 order (strict can). In domain both orders stay positive; out of domain more
#                 is sold than the store had, and only the teacher's order passes a negative
#                 number from one call to the next, which the student never wrote in training.
# Numbers stay at 20 or below: the tiny student copies a number into a later call reliably
# only from a small range it has copied there before (docs/LOG.md, the feasibility checks).

SMALL_SUMS = [(a, b) for a in range(1, 10) for b in range(1, 10) if a + b < 10]
CARRIED_SUMS = [(a, b) for a in range(1, 10) for b in range(1, 10) if a + b >= 10]


def summands(rng: random.Random, ood: bool) -> tuple[int, int, bool]:
    """Two numbers to add and whether the teacher adds them in its head (both one digit).
    Out of domain: one digit each, their sum 10 or more. In domain: a third one digit each
    with a sum below 10, a third one digit and one of two (to 19), a third two digits each."""
    kind = 0 if ood else rng.randrange(3)
    if kind == 0:
        a, b = rng.choice(CARRIED_SUMS if ood else SMALL_SUMS)
    else:
        a, b = rng.randint(10, 19), rng.randint(10 if kind == 2 else 1, 19)
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
    return a, b, kind == 0


def cups_made(rng: random.Random, ood: bool):
    (a, b, head), c = summands(rng, ood), rng.randint(2, 30)
    q = f"A shop makes {a} red and {b} blue cups a day. How many cups does it make in {c} days?"
    own = [[("add", {"a": a, "b": b})], [("multiply", {"a": "#0", "b": c})]]
    return (q, [[("multiply", {"a": a + b, "b": c})]], own) if head else (q, own, None)


def shared_sum(rng: random.Random, ood: bool):
    (a, b, head), c = summands(rng, ood), rng.randint(3, 30)
    q = (f"{a} and {b} dollars are shared equally by {c} friends. How much does each friend "
         "get, rounded to 2 decimals?")
    own = [[("add", {"a": a, "b": b})], [("divide", {"a": "#0", "b": c})],
           [("round_number", {"x": "#1", "digits": 2})]]
    teacher = [[("divide", {"a": a + b, "b": c})], [("round_number", {"x": "#0", "digits": 2})]]
    return (q, teacher, own) if head else (q, own, None)


def restock(rng: random.Random, ood: bool):
    item, a, b = rng.choice(ITEMS), rng.randint(2, 19), rng.randint(1, 20)
    c = rng.randint(a + 1, min(a + b, 20)) if ood else rng.randint(1, a - 1)
    q = f"A store has {a} {item} and buys {b} more. {c} {item} are sold. How many {item} are left?"
    return (q, [[("subtract", {"a": a, "b": c})], [("add", {"a": "#0", "b": b})]],
            [[("add", {"a": a, "b": b})], [("subtract", {"a": "#0", "b": c})]])


OWN_WAY = {name: functools.partial(fn, ood=ood) for fn in (cups_made, shared_sum, restock)
           for name, ood in ((fn.__name__, False), (f"ood_{fn.__name__}", True))}

HABIT_FAMILIES = {"packing": packing, "heights": heights}
HABIT_OOD = {"ood_packing": ood_packing, "ood_heights": ood_heights, "ood_climb": ood_climb}
HABIT_RATE = 0.65  # how often the demonstrator follows its habit where the habit applies
WRONG_RATE = 0.2   # "wrong": how often the teacher's tools are wrong on the packing family

# Conditions: what the teacher's tools can teach that the outcome cannot, and where the
# teacher's way is not the student's.
#   hidden        the habit's answer is right on every training problem, wrong out of domain
#   refuted       the same habit, on numbers as they fall: the outcome refutes it on most
#   wrong         hidden, but the teacher's rounding tool is wrong on 20% of packing problems
#   none          the original suite: the demonstrator is the teacher, no habit to unlearn
#   capacity      the teacher skips a call the student needs
#   alternatives  the student's own order of the teacher's tools is the robust one
#   forgetting    hidden, and a warm start that also learned the original suite's ID families,
#                 which the teacher never shows: the "warm" split (its problems) and
#                 "test_retain" (their test, the original suite's test_id) measure what
#                 training on the teacher's data keeps of them
FAMILIES = {  # condition -> (ID families, OOD families)
    "none": (list(ID_FAMILIES), list(OOD_FAMILIES)),
    "capacity": (["cups_made", "shared_sum"],
                 ["ood_cups_made", "ood_shared_sum"]),
    "alternatives": (["restock"], ["ood_restock"]),
}
CONDITIONS = ("hidden", "refuted", "wrong", "none", "capacity", "alternatives", "forgetting")
WARM_PROBLEMS = 400  # "forgetting": the warm start's problems of the skills the teacher skips

# ----------------------------------------------------------------------- running a plan

def run_plan(plan: list) -> tuple[list[list[dict]], str]:
    """Run a plan through the tools. Returns the turns of executed calls, each call
    {"name", "arguments" (references resolved), "result"}, and the final answer text."""
    results, turns = [], []
    for turn in plan:
        done = []
        for name, args in turn:
            # A reference takes the *text* the tool printed, as a model reading it would.
            args = {k: float_or_int(results[int(v[1:])]) if isinstance(v, str) else v
                    for k, v in args.items()}
            result = tools.call_tool({"name": name, "arguments": args})
            if result.startswith("error"):
                raise ValueError(f"plan step {name}({args}) failed: {result}")
            results.append(result)
            done.append({"name": name, "arguments": args, "result": result})
        turns.append(done)
    return turns, results[-1]


def float_or_int(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def make_problem(condition: str, family: str, rng: random.Random, split: str,
                 index: int) -> Problem:
    """One problem of `family` under `condition`: the gold answer from the right plan; the
    teacher's plan (wrong on some packing problems of the "wrong" condition's training split);
    the habit's plan and the demonstrator's (the habit on HABIT_RATE of the problems it applies
    to)."""
    if family in HABIT_FAMILIES or family in HABIT_OOD:
        numbers = "free" if condition == "refuted" else "hidden"
        question, plan, habit = {**HABIT_FAMILIES, **HABIT_OOD}[family](rng, numbers)
    elif family in OWN_WAY:
        question, plan, habit = OWN_WAY[family](rng)
    else:
        fn = OOD_FAMILIES[family] if family.startswith("ood_") else ID_FAMILIES[family]
        question, plan = fn(rng, *RANGES.get(family, DEFAULT_RANGE))
        habit = None
    answer = run_plan(plan)[1]
    demo = habit if habit and rng.random() < HABIT_RATE else None
    if (condition == "wrong" and split == "train" and family == "packing"
            and rng.random() < WRONG_RATE):
        # A teacher that rounds wrongly: the habit's tool where there is one, else another one
        # (the demonstrator keeps writing its own plan, the right one or its habit)
        right = plan[1][0][0]
        tool = (habit[1][0][0] if habit
                else rng.choice([t for t in CONTAINERS.values() if t != right]))
        plan, demo = [plan[0], [(tool, plan[1][0][1])]], demo or plan
    return Problem(f"{split}-{index}", question, answer, split, family, plan, habit, demo)


def make_split(condition: str, split: str, families: list[str], count: int, seed: int,
               exclude: set[str]) -> list[Problem]:
    """`count` distinct problems, families round-robin, none whose question is in `exclude`."""
    rng = random.Random(seed)
    problems, seen = [], set(exclude)
    for _ in range(100 * count):  # a family too small for `count` fails loudly, never hangs
        if len(problems) == count:
            return problems
        p = make_problem(condition, families[len(problems) % len(families)], rng, split,
                         len(problems))
        if p.question not in seen:
            seen.add(p.question)
            problems.append(p)
    raise ValueError(f"{split}: could not draw {count} distinct problems from {families}")


def benchmark(condition: str = "hidden", n_train: int = 4000, n_test: int = 300,
              seed: int = 0) -> dict[str, list[Problem]]:
    """The fixed ID and OOD test sets and a training set of `n_train` problems, disjoint, of
    one of CONDITIONS ("forgetting" adds its "warm" and "test_retain" splits).

    Test sets depend only on the condition, `seed` and `n_test`, so every training-set size is
    scored on the same test problems."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    if condition == "forgetting":
        suite, skills = (benchmark(c, n_train, n_test, seed) for c in ("hidden", "none"))
        warm = [replace(p, split="warm", id=f"warm-{i}")
                for i, p in enumerate(skills["train"][:WARM_PROBLEMS])]
        retain = [replace(p, split="test_retain", id=f"test_retain-{i}")
                  for i, p in enumerate(skills["test_id"])]
        return {**suite, "warm": warm, "test_retain": retain}
    id_families, ood_families = FAMILIES.get(condition, (list(HABIT_FAMILIES), list(HABIT_OOD)))
    test_id = make_split(condition, "test_id", id_families, n_test, seed + 1, set())
    test_ood = make_split(condition, "test_ood", ood_families, n_test, seed + 2,
                          {p.question for p in test_id})
    held_out = {p.question for p in test_id + test_ood}
    train = make_split(condition, "train", id_families, n_train, seed + 3, held_out)
    return {"train": train, "test_id": test_id, "test_ood": test_ood}


# ------------------------------------------------------------------------ answer checking

NUMBER_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


def to_number(text: str) -> float | None:
    """'1,234', '1234.0', ' $1234 ' -> 1234.0; None if the text is not a number."""
    t = str(text).strip().replace(",", "").replace("$", "").rstrip(".")
    return float(t) if NUMBER_RE.match(t) else None


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", str(text).lower()).split())


def is_correct(pred: str | None, gold, rel_tol: float = 1e-4) -> bool:
    """Numeric answers equal within a relative tolerance; answers in LaTeX or with a fraction
    (\\frac{3}{4}, 2\\sqrt{2}, 3/4) equal as mathematics when math-verify is installed; other
    answers equal after normalising case, whitespace and punctuation."""
    if pred is None:
        return False
    p, g = to_number(pred), to_number(gold)
    if p is not None and g is not None:
        return math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-9)
    if any(c in pred + str(gold) for c in "\\^{}/"):
        same = same_math(pred, str(gold))
        if same is not None:
            return same
    return normalize(pred) == normalize(gold) and normalize(gold) != ""


NO_MATH_VERIFY = ("note: LaTeX answers are compared as text; pip install math-verify to compare "
                  "them as mathematics")


def same_math(pred: str, gold: str) -> bool | None:
    """Whether two answers are the same mathematics (math-verify, the authors' checker); None
    when math-verify is not installed (a note says so, once)."""
    try:
        from math_verify import parse, verify
    except ImportError:
        note_once(NO_MATH_VERIFY)
        return None
    if len(pred) > 500:  # a model's runaway box: not worth a parser's time
        return False
    try:
        return verify(parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{pred}}}"))
    except Exception:  # math-verify's own timeouts and parse failures: not the same answer
        return False


@functools.cache
def note_once(message: str) -> None:
    """Print `message` to stderr the first time only."""
    print(message, file=sys.stderr)


def extract_answer(text: str) -> str | None:
    """The contents of the last `\\boxed{...}` in `text` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None  # never closed
