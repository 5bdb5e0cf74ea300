"""The tiny in-process tool runtime: the twelve math tools, their schemas, the parser
for `<tool_call>` blocks and a safe executor.

Data flow: model text -> parse_tool_calls(text) -> [{"name", "arguments", "error"}]
-> call_tool(call) -> the text the model sees as the tool's answer.

A tool is one decorated function; its OpenAI-format schema comes from the signature and
the Google-style docstring (transformers.utils.get_json_schema). Model text is never run:
arguments are parsed as JSON, checked against the schema, and bounded in size.
"""
import json
import math
import re
from typing import Any, Callable

from transformers.utils import get_json_schema

# largest magnitude a tool accepts or returns: keeps answers exact-ish and cheap
MAX_ABS = 1e15
MAX_LIST = 1000      # longest list sum_numbers accepts
MAX_CALL_CHARS = 4000  # longest <tool_call> body we try to parse as JSON

TOOLS: dict[str, Callable] = {}
SCHEMAS: dict[str, dict] = {}


def tool(fn: Callable) -> Callable:
    """Register `fn` as a tool; its schema is derived from its signature and docstring."""
    TOOLS[fn.__name__] = fn
    SCHEMAS[fn.__name__] = get_json_schema(fn)
    return fn


def schemas() -> list[dict]:
    """The OpenAI-format schemas of all registered tools, in registration order."""
    return list(SCHEMAS.values())


# ---------------------------------------------------------------------------- the tools

@tool
def add(a: float, b: float) -> float:
    """
    Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


@tool
def subtract(a: float, b: float) -> float:
    """
    Subtract b from a.

    Args:
        a: The number to subtract from.
        b: The number to subtract.
    """
    return a - b


@tool
def multiply(a: float, b: float) -> float:
    """
    Multiply two numbers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


@tool
def divide(a: float, b: float) -> float:
    """
    Divide a by b.

    Args:
        a: The dividend.
        b: The divisor (not zero).
    """
    if b == 0:
        raise ValueError("division by zero")
    return a / b


@tool
def sum_numbers(numbers: list[float]) -> float:
    """
    Add up a list of numbers.

    Args:
        numbers: The numbers to add.
    """
    return math.fsum(numbers)


@tool
def floor(x: float) -> int:
    """
    Round a number down to the nearest integer.

    Args:
        x: The number.
    """
    return math.floor(x)


@tool
def ceil(x: float) -> int:
    """
    Round a number up to the nearest integer.

    Args:
        x: The number.
    """
    return math.ceil(x)


@tool
def round_number(x: float, digits: int = 0) -> float:
    """
    Round a number to a given number of decimal places.

    Args:
        x: The number.
        digits: How many decimal places to keep (0 to 10).
    """
    if not 0 <= digits <= 10:
        raise ValueError("digits must be between 0 and 10")
    return round(x, int(digits))


@tool
def power(base: float, exponent: float) -> float:
    """
    Raise base to the power exponent.

    Args:
        base: The base.
        exponent: The exponent.
    """
    if base == 0 and exponent < 0:
        raise ValueError("zero to a negative power")
    if base < 0 and exponent != int(exponent):
        raise ValueError("negative base with a fractional exponent")
    # Estimate the size from logarithms first, so power(10, 10**9) is refused, not computed.
    if base != 0 and exponent * math.log10(abs(base)) > math.log10(MAX_ABS):
        raise ValueError("result too large")
    return float(base) ** exponent


@tool
def sqrt(x: float) -> float:
    """
    The square root of a number.

    Args:
        x: A number that is not negative.
    """
    if x < 0:
        raise ValueError("square root of a negative number")
    return math.sqrt(x)


@tool
def abs_value(x: float) -> float:
    """
    The absolute value of a number.

    Args:
        x: The number.
    """
    return abs(x)


@tool
def modulo(a: float, b: float) -> float:
    """
    The remainder of a divided by b.

    Args:
        a: The dividend.
        b: The divisor (not zero).
    """
    if b == 0:
        raise ValueError("modulo by zero")
    return a % b


# ----------------------------------------------------------------- parsing and checking

def is_number(v: Any) -> bool:
    # abs() first: math.isfinite(10**400) raises OverflowError, an int/float comparison never does.
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= MAX_ABS
            and math.isfinite(v))


def check(name: Any, arguments: Any) -> str | None:
    """Why a call of tool `name` with `arguments` is invalid, or None if it fits the schema."""
    if not isinstance(name, str) or not name:
        return "missing tool name"
    if name not in SCHEMAS:
        return f"unknown tool '{name[:50]}'"
    if not isinstance(arguments, dict):
        return "arguments must be a JSON object"
    params = SCHEMAS[name]["function"]["parameters"]
    props = params.get("properties", {})
    for key in arguments:
        if key not in props:
            return f"unexpected argument '{str(key)[:50]}' for {name}"
    for key in params.get("required", []):
        if key not in arguments:
            return f"missing argument '{key}' for {name}"
    for key, value in arguments.items():
        kind = props[key]["type"]
        if kind == "number" and not is_number(value):
            return f"argument '{key}' must be a number of magnitude at most {MAX_ABS:g}"
        if kind == "integer" and not (is_number(value) and float(value).is_integer()):
            return f"argument '{key}' must be an integer"
        if kind == "array":
            if not isinstance(value, list) or len(value) > MAX_LIST:
                return f"argument '{key}' must be a list of at most {MAX_LIST} numbers"
            if not all(is_number(v) for v in value):
                return f"argument '{key}' must hold only numbers"
    return None


# A block ends at </tool_call>, or, left unclosed, just before the next <tool_call> or at the
# end of the text. Stopping at the next <tool_call> matters for rollout text (turns joined by
# "\n"): a turn cut off inside a call must not swallow the next turn's call, so the joined
# text parses to the same calls as the turns one by one.
CALL_RE = re.compile(r"<tool_call>((?:(?!<tool_call>).)*?)(?:</tool_call>|(?=<tool_call>)|$)",
                     re.DOTALL)


def parse_tool_calls(text: str) -> list[dict]:
    """Every `<tool_call>...</tool_call>` block in `text`, in order.

    Returns a list of {"name", "arguments", "error"}; `error` is None for a valid call and a
    short reason otherwise (bad JSON, no name, unknown tool, arguments not fitting the
    schema, a block never closed: one that runs into the next `<tool_call>` or the end of
    the text). Never raises.
    """
    calls = []
    for match in CALL_RE.finditer(text):
        body = match.group(1).strip()
        call = {"name": None, "arguments": {}, "error": None}
        if not match.group(0).endswith("</tool_call>"):
            call["error"] = "unclosed <tool_call>"
        elif len(body) > MAX_CALL_CHARS:
            call["error"] = "tool call too long"
        else:
            try:
                obj = json.loads(body)
            except (json.JSONDecodeError, RecursionError):
                obj = None
            if not isinstance(obj, dict):
                call["error"] = "tool call is not a JSON object"
            else:
                name = obj.get("name")
                call["name"] = name if isinstance(name, str) else None  # never a list/dict/number
                args = obj.get("arguments", obj.get("parameters", {}))
                if isinstance(args, str):  # the OpenAI convention: arguments as a JSON string
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except (json.JSONDecodeError, RecursionError):
                        args = None
                call["arguments"] = args
                call["error"] = check(call["name"], args)
        calls.append(call)
    return calls


def format_number(x: float) -> str:
    """Integers without a trailing .0, other floats in a short, stable form."""
    if float(x).is_integer():
        return str(int(x))
    return format(x, ".10g")


def call_tool(call: dict) -> str:
    """Run one parsed call; return the result text or 'error: <reason>'. Never raises."""
    error = call.get("error") or check(call.get("name"), call.get("arguments"))
    if error:
        return f"error: {error}"
    try:
        result = TOOLS[call["name"]](**call["arguments"])
    except (ValueError, OverflowError, ZeroDivisionError, TypeError) as e:
        return f"error: {e}"
    if not is_number(result):
        return "error: result too large"
    return format_number(result)
