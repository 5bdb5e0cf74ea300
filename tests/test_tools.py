"""tools.py: the twelve tools, their schemas, the <tool_call> parser and the safe executor."""
import json
import random
import time

import pytest

import tools

TWELVE = ["add", "subtract", "multiply", "divide", "sum_numbers", "floor", "ceil",
          "round_number", "power", "sqrt", "abs_value", "modulo"]

# One valid argument object per tool (used for schema validation and never-raises checks).
GOOD_ARGS = {
    "add": {"a": 1, "b": 2}, "subtract": {"a": 5, "b": 3}, "multiply": {"a": 2, "b": 3},
    "divide": {"a": 1, "b": 4}, "sum_numbers": {"numbers": [1, 2, 3]}, "floor": {"x": 2.5},
    "ceil": {"x": 2.5}, "round_number": {"x": 3.14159, "digits": 2},
    "power": {"base": 2, "exponent": 3}, "sqrt": {"x": 9}, "abs_value": {"x": -4},
    "modulo": {"a": 7, "b": 3},
}


def tc(obj) -> str:
    """A Hermes/Qwen-style tool call block."""
    return f"<tool_call>\n{json.dumps(obj)}\n</tool_call>"


def run(name, **arguments) -> str:
    return tools.call_tool({"name": name, "arguments": arguments})


# ------------------------------------------------------------------ registry and schemas

def test_exactly_the_twelve_tools_in_order():
    assert list(tools.TOOLS) == TWELVE
    assert [s["function"]["name"] for s in tools.schemas()] == TWELVE


def test_schemas_are_openai_function_format_and_json_schema():
    for s in tools.schemas():
        assert s["type"] == "function"
        fn = s["function"]
        assert fn["name"] in TWELVE
        assert isinstance(fn["description"], str) and fn["description"]
        params = fn["parameters"]
        assert params["type"] == "object"
        props = params["properties"]
        assert isinstance(props, dict) and props
        for key, prop in props.items():
            assert prop["type"] in {"number", "integer", "array"}, (fn["name"], key)
            assert isinstance(prop.get("description"), str) and prop["description"]
            if prop["type"] == "array":
                assert prop["items"] == {"type": "number"}
        assert set(params.get("required", [])) <= set(props)
        json.dumps(s)  # serialisable, as a chat template needs


def test_schema_details_of_a_few_tools():
    by_name = {s["function"]["name"]: s["function"]["parameters"] for s in tools.schemas()}
    assert by_name["add"]["properties"].keys() == {"a", "b"}
    assert sorted(by_name["add"]["required"]) == ["a", "b"]
    assert by_name["sum_numbers"]["properties"]["numbers"]["type"] == "array"
    # digits has a default, so it is optional and an integer
    assert by_name["round_number"]["properties"]["digits"]["type"] == "integer"
    assert by_name["round_number"]["required"] == ["x"]


def test_schemas_validate_with_jsonschema():
    jsonschema = pytest.importorskip("jsonschema")
    for s in tools.schemas():
        params = s["function"]["parameters"]
        jsonschema.Draft202012Validator.check_schema(params)
        v = jsonschema.Draft202012Validator(params)
        good = GOOD_ARGS[s["function"]["name"]]
        assert v.is_valid(good)
        assert tools.check(s["function"]["name"], good) is None
        bad = {k: "not a number" for k in good}
        assert not v.is_valid(bad)
        assert not v.is_valid({})  # every tool has a required argument
        assert tools.check(s["function"]["name"], bad) is not None


def test_adding_a_tool_is_one_decorated_function():
    @tools.tool
    def triple(x: float) -> float:
        """
        Multiply a number by three.

        Args:
            x: The number.
        """
        return 3 * x

    try:
        names = [s["function"]["name"] for s in tools.schemas()]
        assert names[-1] == "triple" and names[:-1] == TWELVE
        schema = tools.schemas()[-1]
        assert schema["function"]["description"] == "Multiply a number by three."
        assert schema["function"]["parameters"]["properties"]["x"]["type"] == "number"
        assert schema["function"]["parameters"]["required"] == ["x"]
        assert run("triple", x=2) == "6"
        [call] = tools.parse_tool_calls(tc({"name": "triple", "arguments": {"x": 1.5}}))
        assert call["error"] is None
        assert tools.call_tool(call) == "4.5"
        assert tools.call_tool({"name": "triple", "arguments": {"x": "2"}}).startswith("error")
    finally:
        tools.TOOLS.pop("triple", None)
        tools.SCHEMAS.pop("triple", None)
    assert list(tools.TOOLS) == TWELVE and len(tools.schemas()) == 12
    assert tools.call_tool({"name": "triple",
                            "arguments": {"x": 2}}).startswith("error: unknown tool")


# ------------------------------------------------------------------------------ parsing

def test_qwen_hermes_style_with_newlines():
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    assert tools.parse_tool_calls(text) == [{"name": "add", "arguments": {"a": 1, "b": 2},
                                             "error": None}]
    assert tools.call_tool(tools.parse_tool_calls(text)[0]) == "3"


def test_several_calls_in_one_turn_with_text_around():
    text = ("I need three things.\n" + tc({"name": "add", "arguments": {"a": 1, "b": 2}}) +
            "\nthen\n" + tc({"name": "multiply", "arguments": {"a": 4, "b": 5}}) +
            tc({"name": "sqrt", "arguments": {"x": 16}}) + "\nDone, waiting for results.")
    calls = tools.parse_tool_calls(text)
    assert [c["name"] for c in calls] == ["add", "multiply", "sqrt"]
    assert all(c["error"] is None for c in calls)
    assert [tools.call_tool(c) for c in calls] == ["3", "20", "4"]


def test_no_calls():
    assert tools.parse_tool_calls("The answer is \\boxed{3}.") == []
    assert tools.parse_tool_calls("") == []


def test_arguments_as_json_string_openai_convention():
    [call] = tools.parse_tool_calls(tc({"name": "add", "arguments": json.dumps({"a": 1, "b": 2})}))
    assert call == {"name": "add", "arguments": {"a": 1, "b": 2}, "error": None}
    [bad] = tools.parse_tool_calls(tc({"name": "add", "arguments": "{a: 1"}))
    assert bad["error"] == "arguments must be a JSON object"
    [empty] = tools.parse_tool_calls(tc({"name": "add", "arguments": "  "}))
    assert empty["arguments"] == {} and empty["error"] == "missing argument 'a' for add"


def test_parameters_key_is_accepted():
    [call] = tools.parse_tool_calls(tc({"name": "sqrt", "parameters": {"x": 25}}))
    assert call["error"] is None and tools.call_tool(call) == "5"


@pytest.mark.parametrize("body, error_start", [
    ('{"name": "add", "arguments": {"a": 1, "b": 2}', "tool call is not a JSON object"),  # bad JSON
    ("add(1, 2)", "tool call is not a JSON object"),
    ("[1, 2]", "tool call is not a JSON object"),
    ('"add"', "tool call is not a JSON object"),
    ("", "tool call is not a JSON object"),
    ('{"arguments": {"a": 1, "b": 2}}', "missing tool name"),
    ('{"name": "", "arguments": {}}', "missing tool name"),
    ('{"name": ["add"], "arguments": {"a": 1, "b": 2}}', "missing tool name"),
    ('{"name": 7, "arguments": {}}', "missing tool name"),
    ('{"name": "calculator", "arguments": {"a": 1}}', "unknown tool 'calculator'"),
    ('{"name": "add", "arguments": {"a": "1", "b": 2}}', "argument 'a' must be a number"),
    ('{"name": "add", "arguments": {"a": 1}}', "missing argument 'b' for add"),
    ('{"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}}', "unexpected argument 'c' for add"),
    ('{"name": "add", "arguments": [1, 2]}', "arguments must be a JSON object"),
    ('{"name": "add", "arguments": null}', "arguments must be a JSON object"),
    ('{"name": "sum_numbers", "arguments": {"numbers": 5}}', "argument 'numbers' must be a list"),
    ('{"name": "sum_numbers", "arguments": {"numbers": [1, "2"]}}',
     "argument 'numbers' must hold only numbers"),
    ('{"name": "round_number", "arguments": {"x": 1.5, "digits": 1.5}}',
     "argument 'digits' must be an integer"),
    ('{"name": "add", "arguments": {"a": true, "b": 2}}', "argument 'a' must be a number"),
    ('{"name": "add", "arguments": {"a": NaN, "b": 2}}', "argument 'a' must be a number"),
    ('{"name": "add", "arguments": {"a": Infinity, "b": 2}}', "argument 'a' must be a number"),
    ('{"name": "add", "arguments": {"a": -Infinity, "b": 2}}', "argument 'a' must be a number"),
    ('{"name": "add", "arguments": {"a": 1e400, "b": 2}}', "argument 'a' must be a number"),
    ('{"name": "add", "arguments": {"a": 1' + "0" * 400 + ', "b": 2}}',
     "argument 'a' must be a number"),
    # RecursionError
    pytest.param("[" * 1500 + "]" * 1500, "tool call is not a JSON object", id="deep-nesting"),
])
def test_bad_calls_give_an_error_never_an_exception(body, error_start):
    calls = tools.parse_tool_calls(f"text <tool_call>\n{body}\n</tool_call> more")
    assert len(calls) == 1
    assert calls[0]["error"].startswith(error_start)
    result = tools.call_tool(calls[0])
    assert result == f"error: {calls[0]['error']}"


def test_a_name_that_is_not_a_string_is_dropped():
    for name in (["add"], {"n": "add"}, 7, True, None):
        [call] = tools.parse_tool_calls(tc({"name": name, "arguments": {"a": 1, "b": 2}}))
        assert call["name"] is None and call["error"] == "missing tool name"


def test_unclosed_tag_at_the_end():
    good = tc({"name": "add", "arguments": {"a": 1, "b": 2}})
    calls = tools.parse_tool_calls(good + '\n<tool_call>\n{"name": "multiply", '
                                          '"arguments": {"a": 2')
    assert [c["error"] for c in calls] == [None, "unclosed <tool_call>"]
    # a complete JSON body whose tag never closes is not run either (generation was cut)
    calls = tools.parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}\n')
    assert len(calls) == 1 and calls[0]["error"] == "unclosed <tool_call>"
    assert tools.call_tool(calls[0]) == "error: unclosed <tool_call>"
    assert tools.parse_tool_calls("<tool_call>")[0]["error"] == "unclosed <tool_call>"


def test_an_unclosed_call_does_not_swallow_the_next_turns_call():
    # Rollout text is the turns joined by "\n"; the first turn hit EOS inside its call.
    turns = ['<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}',
             '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>']
    joined = tools.parse_tool_calls("\n".join(turns))
    assert joined == [{"name": None, "arguments": {}, "error": "unclosed <tool_call>"},
                      {"name": "add", "arguments": {"a": 2, "b": 3}, "error": None}]
    # as the rollout saw them
    assert joined == [c for turn in turns for c in tools.parse_tool_calls(turn)]
    # the same inside one turn, and a run of unclosed tags is one unclosed call each
    assert [c["error"] for c in tools.parse_tool_calls("<tool_call>{<tool_call><tool_call>")] == \
           ["unclosed <tool_call>"] * 3


# "Quickly" below is CPU time of this process (not wall time, which a busy machine stretches),
# bounded far below what a quadratic parse or a computed power of 10**9 digits would take.

def test_huge_body_is_refused_quickly():
    body = json.dumps({"name": "sum_numbers", "arguments": {"numbers": [1] * 100_000}})
    start = time.process_time()
    [call] = tools.parse_tool_calls(f"<tool_call>{body}</tool_call>")
    assert call["error"] == "tool call too long"
    [call] = tools.parse_tool_calls("<tool_call>" + "x" * 1_000_000)  # huge and unclosed
    assert call["error"] == "unclosed <tool_call>"
    assert time.process_time() - start < 2


def test_fuzz_garbage_and_truncations_never_raise():
    rng = random.Random(1234)
    valid = "".join(tc({"name": n, "arguments": a}) for n, a in GOOD_ARGS.items())
    alphabet = list('{}[]":,<>/\\ \n0123456789.-eEaNtrufl') + ["<tool_call>", "</tool_call>",
                                                                  "null", "NaN", "Infinity",
                                                                  '"name"', '"arguments"']
    texts = [valid[:i] for i in range(0, len(valid), 7)]  # every truncation point (step 7)
    for _ in range(300):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))))
        chars = list(valid)
        for _ in range(rng.randint(1, 10)):  # random mutations of valid calls
            i = rng.randrange(len(chars))
            chars[i] = rng.choice(alphabet)
        texts.append("".join(chars))
    for text in texts:
        calls = tools.parse_tool_calls(text)
        for call in calls:
            assert set(call) == {"name", "arguments", "error"}
            assert call["name"] is None or isinstance(call["name"], str)
            result = tools.call_tool(call)
            assert isinstance(result, str) and result
            if call["error"]:
                assert result.startswith("error: ")
    # the untouched text parses into twelve valid calls
    assert [c["error"] for c in tools.parse_tool_calls(valid)] == [None] * 12


# ---------------------------------------------------------------------------- executing

@pytest.mark.parametrize("name, arguments, expected", [
    ("add", {"a": 1.5, "b": 1.5}, "3"),
    ("add", {"a": 2, "b": 3}, "5"),
    ("add", {"a": 0.1, "b": 0.2}, "0.3"),
    ("subtract", {"a": 3, "b": 10}, "-7"),
    ("multiply", {"a": 23, "b": 17}, "391"),
    ("multiply", {"a": 2.5, "b": 4}, "10"),
    ("divide", {"a": 1, "b": 3}, "0.3333333333"),
    ("divide", {"a": 2, "b": 3}, "0.6666666667"),
    ("divide", {"a": 10, "b": 4}, "2.5"),
    ("divide", {"a": 12, "b": 4}, "3"),
    ("sum_numbers", {"numbers": [0.1, 0.2, 0.3]}, "0.6"),
    ("sum_numbers", {"numbers": [1, 2, 3, 4]}, "10"),
    ("sum_numbers", {"numbers": []}, "0"),
    ("floor", {"x": 2.7}, "2"),
    ("floor", {"x": -2.5}, "-3"),
    ("ceil", {"x": 2.1}, "3"),
    ("ceil", {"x": -2.5}, "-2"),
    ("round_number", {"x": 3.14159, "digits": 2}, "3.14"),
    ("round_number", {"x": 3.7}, "4"),
    ("round_number", {"x": 2.5}, "2"),  # Python rounds half to even
    ("round_number", {"x": 1.23456789, "digits": 10}, "1.23456789"),
    ("round_number", {"x": 1.26, "digits": 1.0}, "1.3"),  # an integral float is an integer
    ("power", {"base": 2, "exponent": 10}, "1024"),
    ("power", {"base": 2, "exponent": -1}, "0.5"),
    ("power", {"base": -2, "exponent": 3}, "-8"),
    ("power", {"base": 9, "exponent": 0.5}, "3"),
    ("power", {"base": 0, "exponent": 0}, "1"),
    ("power", {"base": 10, "exponent": 15}, "1000000000000000"),
    ("sqrt", {"x": 144}, "12"),
    ("sqrt", {"x": 2}, "1.414213562"),
    ("abs_value", {"x": -3.5}, "3.5"),
    ("abs_value", {"x": 4}, "4"),
    ("modulo", {"a": 17, "b": 5}, "2"),
    ("modulo", {"a": -7, "b": 3}, "2"),
    ("modulo", {"a": 7.5, "b": 2}, "1.5"),
    ("add", {"a": 1e15, "b": 0}, "1000000000000000"),
])
def test_results(name, arguments, expected):
    assert tools.call_tool({"name": name, "arguments": arguments}) == expected


@pytest.mark.parametrize("name, arguments, error", [
    ("divide", {"a": 1, "b": 0}, "error: division by zero"),
    ("divide", {"a": 0, "b": 0.0}, "error: division by zero"),
    ("modulo", {"a": 5, "b": 0}, "error: modulo by zero"),
    ("sqrt", {"x": -1}, "error: square root of a negative number"),
    ("power", {"base": -8, "exponent": 1 / 3}, "error: negative base with a fractional exponent"),
    ("power", {"base": -2, "exponent": 0.5}, "error: negative base with a fractional exponent"),
    ("power", {"base": 0, "exponent": -1}, "error: zero to a negative power"),
    ("power", {"base": 10, "exponent": 16}, "error: result too large"),
    ("power", {"base": 0.5, "exponent": -1e9}, "error: result too large"),
    ("round_number", {"x": 1.5, "digits": 11}, "error: digits must be between 0 and 10"),
    ("round_number", {"x": 1.5, "digits": -1}, "error: digits must be between 0 and 10"),
    ("add", {"a": 1e15, "b": 1e15}, "error: result too large"),           # result above MAX_ABS
    ("multiply", {"a": 1e8, "b": 1e8}, "error: result too large"),
    ("sum_numbers", {"numbers": [1e15] * 2}, "error: result too large"),
])
def test_tool_errors(name, arguments, error):
    assert tools.call_tool({"name": name, "arguments": arguments}) == error


def test_inputs_above_max_abs_and_non_numbers_are_rejected():
    assert tools.MAX_ABS == 1e15
    for args in [{"a": 2e15, "b": 0}, {"a": -2e15, "b": 0}, {"a": 10 ** 400, "b": 0},
                 {"a": float("nan"), "b": 0}, {"a": float("inf"), "b": 0}, {"a": True, "b": 1},
                 {"a": None, "b": 1}, {"a": "1", "b": 1}, {"a": [1], "b": 1}]:
        result = tools.call_tool({"name": "add", "arguments": args})
        assert result.startswith("error: argument 'a' must be a number"), args
    assert (run("sum_numbers", numbers=[1, True])
            == "error: argument 'numbers' must hold only numbers")
    assert (run("sum_numbers", numbers=[1, 2e15])
            == "error: argument 'numbers' must hold only numbers")
    assert run("round_number", x=1.5, digits=True).startswith(
        "error: argument 'digits' must be an integer")
    assert run("round_number", x=1.5, digits=10 ** 6) == "error: digits must be between 0 and 10"


def test_power_with_a_huge_exponent_is_refused_quickly():
    start = time.process_time()
    assert run("power", base=10, exponent=10 ** 9) == "error: result too large"
    assert run("power", base=-3, exponent=10 ** 12) == "error: result too large"
    assert run("power", base=1, exponent=10 ** 12) == "1"
    assert run("power", base=0.1, exponent=10 ** 9) == "0"  # underflows to zero, harmless
    assert time.process_time() - start < 0.5


def test_a_100k_element_sum_is_refused_quickly():
    start = time.process_time()
    result = run("sum_numbers", numbers=list(range(100_000)))
    assert result == f"error: argument 'numbers' must be a list of at most {tools.MAX_LIST} numbers"
    assert time.process_time() - start < 0.5
    assert run("sum_numbers", numbers=[1] * tools.MAX_LIST) == "1000"  # the limit itself is fine


def test_nan_from_json_is_an_error():
    parsed = json.loads('{"a": NaN, "b": 1}')  # json.loads accepts NaN and Infinity
    assert tools.call_tool({"name": "add", "arguments": parsed}).startswith("error")
    parsed = json.loads('{"numbers": [1, Infinity]}')
    assert tools.call_tool({"name": "sum_numbers", "arguments": parsed}).startswith("error")


def test_call_tool_never_raises_on_odd_calls():
    for call in [{}, {"name": None}, {"name": "add"}, {"name": "add", "arguments": None},
                 {"name": "add", "arguments": "a=1"}, {"name": 3, "arguments": {}},
                 {"name": "add", "arguments": {"a": 1, "b": 2}, "error": "bad JSON"}]:
        assert tools.call_tool(call).startswith("error: ")
    # a parsed call carrying an error is never run, even if its name and arguments look fine
    assert tools.call_tool({"name": "add", "arguments": {"a": 1, "b": 2},
                            "error": "bad JSON"}) == "error: bad JSON"


def test_format_number():
    assert tools.format_number(3.0) == "3"
    assert tools.format_number(-0.0) == "0"
    assert tools.format_number(7) == "7"
    assert tools.format_number(1 / 3) == "0.3333333333"
    assert tools.format_number(1e15) == "1000000000000000"
    assert tools.format_number(2.5e-12) == "2.5e-12"
