"""The row formats datasets are written in, and how they are read back.

SFT rows: prompt_completion, messages, alpaca or sharegpt. Preference rows (DPO, KTO):
prompt_completion or messages. Curation writes rows with `sft_row` and `pref_row`; training
reads them with `training_rows` (the columns TRL expects) and evaluation with `to_example`
(a prompt, its reference completion and its tests), both converting alpaca and sharegpt the same way.

A row whose run carried tests (Python statements that check an answer) has them in a top-level
`tests` list, in every format; training never passes that key to TRL. A messages row made from a
run's recorded exchange holds its tool calls and tool results, and the tools offered under `tools`
(OpenAI format, learning/runs/messages.py); training hands TRL that list as JSON text, which TRL
passes to the chat template.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from learning.errors import InvalidInput
from learning.runs.messages import answer_text

SftFormat = Literal["prompt_completion", "messages", "alpaca", "sharegpt"]
PrefFormat = Literal["prompt_completion", "messages"]
SFT_FORMATS = ("prompt_completion", "messages", "alpaca", "sharegpt")
PREF_FORMATS = ("prompt_completion", "messages")  # TRL takes both for DPO and KTO

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


# ---- writing ------------------------------------------------------------------------------


def with_tests(row: dict[str, Any], tests: list[str] | None) -> dict[str, Any]:
    """The row with its run's tests under `tests` (unchanged when the run has none)."""
    if tests:
        row["tests"] = list(tests)
    return row


def sft_row(fmt: str, prompt: str, completion: str, instruction_only: str, input_: str) -> dict[str, Any]:
    """One training row in a format. alpaca puts the prompt without the input block in
    'instruction' and the run's input in 'input'."""
    if fmt == "prompt_completion":
        return {"prompt": prompt, "completion": completion}
    if fmt == "messages":
        return {
            "messages": [{"role": "user", "content": prompt.rstrip()}, {"role": "assistant", "content": completion}]
        }
    if fmt == "alpaca":
        return {"instruction": instruction_only.rstrip(), "input": input_, "output": completion}
    return {"conversations": [{"from": "human", "value": prompt.rstrip()}, {"from": "gpt", "value": completion}]}


def pref_row(fmt: str, kind: str, prompt: str, first: str, second: str | bool) -> dict[str, Any]:
    """A DPO row (prompt, chosen, rejected) or a KTO row (prompt, completion, label)."""
    if fmt == "messages":
        p = [{"role": "user", "content": prompt.rstrip()}]
        if kind == "dpo":
            return {
                "prompt": p,
                "chosen": [{"role": "assistant", "content": first}],
                "rejected": [{"role": "assistant", "content": second}],
            }
        return {"prompt": p, "completion": [{"role": "assistant", "content": first}], "label": second}
    if kind == "dpo":
        return {"prompt": prompt, "chosen": first, "rejected": second}
    return {"prompt": prompt, "completion": first, "label": second}


# ---- reading ------------------------------------------------------------------------------


def alpaca_prompt(row: dict[str, Any]) -> str:
    """An alpaca row's prompt: the instruction, then the input block when there is one."""
    return row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "") + "\n"


def sharegpt_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A sharegpt row's conversation as chat messages."""
    return [
        {"role": SHAREGPT_ROLES.get(t.get("from"), "user"), "content": t.get("value", "")} for t in row["conversations"]
    ]


def as_text(value: Any) -> str:
    """A prompt or completion as text: strings as they are, chat messages joined by their contents."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(m.get("content") or "") for m in value if isinstance(m, dict))
    raise InvalidInput(f"Expected a string or a list of messages, got {type(value).__name__}.")


def row_tests(row: dict[str, Any]) -> list[str]:
    """The tests a row carries (its run's, under `tests`); [] when it has none or they are not a
    list of strings."""
    tests = row.get("tests")
    if isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
        return tests
    return []


def to_example(row: dict[str, Any]) -> dict[str, Any]:
    """A test row as {prompt, completion, tests}, from any SFT format learnloop writes (converted
    the way training converts it): prompt/completion, messages, alpaca, sharegpt. A chat prompt
    stays a list of messages (rendered with the tokenizer's chat template); tests is [] when the
    row carries none."""
    return {**_prompt_completion(row), "tests": row_tests(row)}


def _prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    if "conversations" in row:
        row = {"messages": sharegpt_messages(row)}
    if "messages" in row:
        msgs = row["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise InvalidInput("A messages row must end with the assistant's answer.")
        return {"prompt": chat_messages(msgs[:-1]), "completion": answer_text(msgs[-1])}
    if "instruction" in row and "output" in row:
        return {"prompt": alpaca_prompt(row), "completion": row["output"]}
    if "prompt" not in row or "completion" not in row:
        raise InvalidInput(
            "Test rows need an SFT format: prompt/completion, messages, alpaca or sharegpt "
            "(preference datasets are not evaluated)."
        )
    return {"prompt": row["prompt"], "completion": as_text(row["completion"])}


def training_rows(rows: list[dict[str, Any]], fmt: str, method: str) -> list[dict[str, Any]]:
    """Rows in the columns TRL expects: prompt/completion or messages (sft), prompt/chosen/rejected (dpo),
    prompt/completion/label (kto). Alpaca and ShareGPT rows are converted."""
    if method == "dpo":
        return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    if method == "kto":
        return [{"prompt": r["prompt"], "completion": r["completion"], "label": bool(r["label"])} for r in rows]
    if fmt == "alpaca":
        return [{"prompt": alpaca_prompt(r), "completion": r["output"]} for r in rows]
    if fmt == "sharegpt":
        return [{"messages": sharegpt_messages(r)} for r in rows]
    if fmt == "messages":
        offered = any(r.get("tools") for r in rows)  # then every row has the column (TRL reads it per row)
        return [
            {"messages": chat_messages(r["messages"]), **({"tools": tools_text(r)} if offered else {})} for r in rows
        ]
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates take them: a tool call's arguments as the object its JSON text
    holds, as serving runtimes (vLLM, llama.cpp) hand them to the template, so training renders
    a call as serving does (Qwen's and Llama's templates write `arguments | tojson`: the text
    would come out quoted twice). Arguments that are not a JSON object stay text."""
    return [_parsed_calls(m) if m.get("tool_calls") else m for m in messages]


def _parsed_calls(message: dict[str, Any]) -> dict[str, Any]:
    calls = []
    for call in message["tool_calls"]:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = arguments
        calls.append({**call, "function": {**function, "arguments": parsed if isinstance(parsed, dict) else arguments}})
    return {**message, "tool_calls": calls}


def tools_text(row: dict[str, Any]) -> str | None:
    """A row's tools as the JSON text TRL's SFTTrainer takes in its `tools` column (text, so
    datasets does not merge the schemas of different tools into one), or None."""
    return json.dumps(row["tools"], ensure_ascii=False) if row.get("tools") else None
