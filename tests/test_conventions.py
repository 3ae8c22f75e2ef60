"""The convention tables take every attribute name that the conventions' own packages define from them.

A child interpreter marks every name constant of ``opentelemetry-semantic-conventions`` (GenAI, error)
and ``openinference-semantic-conventions`` before ``otel_arthur.conventions`` is imported: a name
the tables took from a package carries the mark, a typed one does not. Equal strings alone would not
tell the two apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

MARK = "from-library:"

PROBE = textwrap.dedent(
    """
    import json

    from openinference.semconv import trace
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes
    from opentelemetry.semconv.attributes import error_attributes

    MARK = %r
    library = set()
    for holder in (gen_ai_attributes, error_attributes, trace.SpanAttributes, trace.MessageAttributes,
                   trace.ToolCallAttributes):
        for constant, value in list(vars(holder).items()):
            if constant.isupper() and isinstance(value, str):
                library.add(value)
                setattr(holder, constant, MARK + value)

    from otel_arthur import conventions as c

    names = {}
    for table in (c.GenAI, c.Traceloop, c.LegacyOpenLLMetry, c.OpenInference):
        for constant, value in vars(table).items():
            if constant.isupper() and isinstance(value, str) and not constant.startswith("PART_"):
                names[f"{table.__name__}.{constant}"] = value
    for row in c.CONVENTIONS:
        keys = [row.marker, row.input_messages, row.output_messages, row.system_instructions,
                *(key for keys in row.scalars.values() for key in keys), *row.json_sources]
        if row.message_infix:
            keys += [row.tool_call_keys.name, row.tool_call_keys.arguments, row.tool_call_keys.id]
        names.update((f"{row.name}[{i}]", key) for i, key in enumerate(keys) if key)
    content = c.CONTENT_ATTRIBUTES
    names.update((f"CONTENT_ATTRIBUTES[{i}]", key) for i, key in enumerate(content.inputs + content.outputs))
    print(json.dumps({"library": sorted(library), "names": names}))
    """
) % MARK

# Typed although a package has the same string: OpenLLMetry's legacy prefixes gen_ai.prompt.{i}.* and
# gen_ai.completion.{i}.*, where the semconv's deprecated gen_ai.prompt / gen_ai.completion were one
# attribute each.
SAME_STRING_OTHER_MEANING = {"gen_ai.prompt", "gen_ai.completion"}


def test_every_name_a_package_defines_comes_from_it():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)
    library, names = set(probe["library"]), probe["names"]

    typed = {where: name for where, name in names.items() if not name.startswith(MARK)}
    assert {where: name for where, name in typed.items()
            if name in library and name not in SAME_STRING_OTHER_MEANING} == {}
    assert all(name[len(MARK):] in library for name in names.values() if name.startswith(MARK))
    # The GenAI and OpenInference names the mapper reads, among them, come from the packages.
    for where in ("GenAI.OPERATION_NAME", "GenAI.INPUT_MESSAGES", "GenAI.PROVIDER_NAME", "GenAI.ERROR_TYPE",
                  "LegacyOpenLLMetry.USAGE_PROMPT_TOKENS", "OpenInference.SPAN_KIND",
                  "openinference[0]", "genai[0]"):  # the rows' markers
        assert names[where].startswith(MARK), where
    # What stays typed is what neither package defines; the OpenInference message infix agrees with it.
    assert set(typed.values()) >= {"traceloop.span.kind", "llm.request.type", "gen_ai.usage.total_tokens"}
    infix = names["OpenInference.MESSAGE_INFIX"].lstrip(".")
    assert {f"{infix}.{key}" for key in ("role", "content", "tool_calls", "tool_call_id")} <= library

