"""The gateway's Responses API (`/v1/responses`) through the official OpenAI Python SDK, used as an
application (or Codex) would: against the built-in `mock` model, `claude` (an Anthropic-kind
provider) and `upstream-gpt` (an OpenAI-kind provider), the last two served by `mock-provider`.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import openai
import pytest

if TYPE_CHECKING:
    from conftest import Key, Stack

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

MODELS = ["mock", "claude", "upstream-gpt"]
# The providers behind `mock-provider` call a tool when asked about the weather; the built-in
# mock does not call tools.
TOOL_MODELS = ["claude", "upstream-gpt"]


def nonce() -> str:
    """A prompt no other test sends, so cache and rate-limit state never leak between tests."""
    return f"nonce{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("model", MODELS)
def test_create_returns_output_text_status_and_usage(client: openai.OpenAI, model: str):
    words = nonce()
    response = client.responses.create(
        model=model, instructions="You are terse.", input=f"hello {words}", max_output_tokens=200
    )
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.error is None
    assert response.instructions == "You are terse."
    assert words in response.output_text
    assert [item.type for item in response.output] == ["message"]
    assert response.output[0].content[0].type == "output_text"
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


@pytest.mark.parametrize("model", MODELS)
def test_stream_helper_assembles_the_same_response_as_the_plain_call(
    client: openai.OpenAI, model: str
):
    words = nonce()
    deltas = []
    with client.responses.stream(model=model, input=f"stream {words}") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert final.status == "completed"
    assert "".join(deltas) == final.output_text
    assert words in final.output_text
    assert final.usage.output_tokens > 0
    # The streamed response was stored: retrieving it gives the same object.
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_raw_stream_has_the_full_event_sequence(client: openai.OpenAI):
    events = list(client.responses.create(model="mock", input=f"raw {nonce()}", stream=True))
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[-1].response.status == "completed"


@pytest.mark.parametrize("model", TOOL_MODELS)
def test_function_calling_round_trip(client: openai.OpenAI, model: str):
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.responses.create(model=model, input=[question], tools=[WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    answer = client.responses.create(
        model=model,
        tools=[WEATHER_TOOL],
        input=[
            question,
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"},
        ],
    )
    assert answer.status == "completed"
    assert answer.output_text


def test_streamed_function_call_arguments_assemble(client: openai.OpenAI):
    with client.responses.stream(
        model="upstream-gpt", input="What is the weather in Paris?", tools=[WEATHER_TOOL]
    ) as stream:
        final = stream.get_final_response()
    call = next(item for item in final.output if item.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Paris"}


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, stack: Stack):
    words = nonce()
    first = client.responses.create(model="upstream-gpt", input=f"remember {words}")
    second = client.responses.create(
        model="upstream-gpt", input="what did I say", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    sent = stack.mock_stats()["last_request"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == f"remember {words}"
    assert sent[1]["content"] == first.output_text
    assert sent[2]["content"] == "what did I say"


def test_retrieve_and_delete(client: openai.OpenAI):
    created = client.responses.create(model="mock", input=f"keep {nonce()}")
    retrieved = client.responses.retrieve(created.id)
    assert retrieved.id == created.id
    assert retrieved.output_text == created.output_text
    assert client.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(created.id)
    assert caught.value.body["type"] == "invalid_request_error"


def test_another_tenant_cannot_read_a_stored_response(
    client: openai.OpenAI, stack: Stack, make_client
):
    created = client.responses.create(model="mock", input=f"private {nonce()}")
    other = make_client(stack.create_key("responses-other-tenant", "--tenant", "other").secret)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    assert client.responses.retrieve(created.id).id == created.id


def test_json_schema_format_gives_parseable_output(client: openai.OpenAI):
    answer = '{"x": 1, "y": 2}'
    response = client.responses.create(
        model="mock",
        input=f"mock-answers: {json.dumps([answer])}",
        text={
            "format": {
                "type": "json_schema",
                "name": "point",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                    "required": ["x", "y"],
                    "additionalProperties": False,
                },
            }
        },
    )
    assert json.loads(response.output_text) == {"x": 1, "y": 2}


def test_unsupported_tool_raises_bad_request_error(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="mock", input="hi", tools=[{"type": "web_search"}])
    assert caught.value.body["param"] == "tools[0].type"
    assert "web_search" in caught.value.body["message"]


def test_unknown_previous_response_raises_bad_request_error(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="mock", input="hi", previous_response_id="resp_nope")
    assert caught.value.body["param"] == "previous_response_id"


def test_unknown_model_raises_not_found_error(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input="hi")
    assert caught.value.body["code"] == "model_not_found"


def test_wrong_key_raises_authentication_error(make_client):
    with pytest.raises(openai.AuthenticationError):
        make_client("not-a-key").responses.create(model="mock", input="hi")


def test_upstream_rate_limit_raises_rate_limit_error(client: openai.OpenAI):
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="upstream-ratelimited-responses", input="hi")


def test_a_stream_cut_upstream_ends_with_error_and_response_failed(client: openai.OpenAI):
    # As from OpenAI, a failure mid-stream is an `error` event then `response.failed`, which the
    # SDK yields as typed events (it raises only for errors before the stream starts).
    events = list(client.responses.create(model="upstream-cut", input="hi", stream=True))
    assert [event.type for event in events[-2:]] == ["error", "response.failed"]
    assert events[-2].message
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.code == "server_error"
    assert [event.sequence_number for event in events] == list(range(len(events)))
