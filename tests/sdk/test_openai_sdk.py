"""The gateway through the official OpenAI Python SDK, used exactly as an application would.

Every test talks to a real `gateway-local` (see conftest.py), which serves the built-in `mock`
models itself and reaches `claude` / `upstream-gpt` through `mock-provider` impersonating the
Anthropic and OpenAI APIs.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
import uuid

from typing import TYPE_CHECKING

import openai
import pytest

if TYPE_CHECKING:
    from conftest import Key, Stack

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def unique_words() -> str:
    """A prompt no other test sends, so cache and rate-limit state never leak between tests."""
    return f"nonce{uuid.uuid4().hex[:12]}"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def collect_stream(stream) -> tuple[str, list]:
    """The concatenated content deltas of a chat stream, and all its chunks."""
    chunks = list(stream)
    text = "".join(
        choice.delta.content or "" for chunk in chunks for choice in chunk.choices
    )
    return text, chunks


def as_f32(values) -> list[float]:
    """Values rounded to float32, the precision the gateway computes embeddings in."""
    return [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# --- the built-in mock chat model ---------------------------------------------------------------


def test_chat_completion_returns_answer_usage_and_model(stack: Stack, key: Key):
    # A client built exactly as the SDK's docs show: only base_url and api_key.
    with openai.OpenAI(base_url=stack.base_url, api_key=key.secret) as plain_client:
        completion = plain_client.chat.completions.create(
            model="mock", messages=user("Hello there gateway")
        )

    assert completion.object == "chat.completion"
    assert completion.model == "mock"
    assert completion.id
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Mock answer to: Hello there gateway"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 3
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == 9


def test_chat_completion_honours_max_tokens_and_reports_length(client: openai.OpenAI):
    completion = client.chat.completions.create(
        model="mock", messages=user("one two three four five"), max_tokens=4
    )
    assert completion.choices[0].message.content == "Mock answer to: one"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 4


def test_response_headers_name_provider_model_cost_and_request_id(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model="mock", messages=user("price me please")
    )
    completion = raw.parse()
    assert raw.status_code == 200
    assert raw.headers["x-request-id"]
    assert raw.headers["x-gateway-provider"] == "mock"
    assert raw.headers["x-gateway-model"] == "mock"
    # No temperature 0 and no opt-in header: the cache is not consulted.
    assert raw.headers["x-gateway-cache"] == "BYPASS"
    # price: 0.1 USD per million input tokens, 0.4 per million output tokens.
    usage = completion.usage
    expected = (usage.prompt_tokens * 0.1 + usage.completion_tokens * 0.4) / 1e6
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected, rel=1e-6)


def test_model_list_offers_configured_models(client: openai.OpenAI):
    ids = {model.id for model in client.models.list()}
    assert {"mock", "mock-embed", "claude", "upstream-gpt"} <= ids


CHAT_MODELS = ["mock", "claude", "upstream-gpt"]
PLAIN_ANSWER_PREFIX = {"mock": "Mock answer to: ", "claude": "echo: ", "upstream-gpt": "echo: "}


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_streamed_chat_concatenates_to_plain_answer_and_ends_with_usage(
    client: openai.OpenAI, model: str
):
    messages = user("stream these words to me")
    plain = client.chat.completions.create(model=model, messages=messages)
    assert plain.choices[0].message.content == PLAIN_ANSWER_PREFIX[model] + "stream these words to me"

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, chunks = collect_stream(stream)

    assert text == plain.choices[0].message.content
    assert len(chunks) >= 3, "expected the answer in several deltas, then finish and usage"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.model == plain.model for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    first_delta = chunks[0].choices[0].delta
    assert first_delta.role == "assistant"
    finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert finishes == ["stop"]
    # Only the final chunk carries usage, and it has no choices.
    assert [chunk.usage is not None for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]
    assert final.choices == []
    assert final.usage.prompt_tokens == plain.usage.prompt_tokens
    assert final.usage.completion_tokens == plain.usage.completion_tokens
    assert final.usage.total_tokens == plain.usage.total_tokens


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_streamed_chat_without_include_usage_sends_no_usage_chunk(
    client: openai.OpenAI, model: str
):
    stream = client.chat.completions.create(
        model=model, messages=user("no usage for me"), stream=True
    )
    text, chunks = collect_stream(stream)
    assert text == PLAIN_ANSWER_PREFIX[model] + "no usage for me"
    assert chunks
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks), "a choice-less (usage) chunk was sent"


def test_sdk_stream_helper_assembles_final_completion(client: openai.OpenAI):
    """`client.chat.completions.stream()` accumulates chunks itself; it must accept ours."""
    with client.chat.completions.stream(
        model="mock", messages=user("helper assembles this"), stream_options={"include_usage": True}
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == "Mock answer to: helper assembles this"
    assert final.choices[0].message.content == "Mock answer to: helper assembles this"
    assert final.choices[0].finish_reason == "stop"
    assert final.usage.completion_tokens == 6


# --- embeddings ---------------------------------------------------------------------------------


EMBED_TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a quick brown fox leaps over a sleepy dog",
    "quarterly revenue grew in the enterprise segment",
]


def test_embeddings_with_sdk_default_base64_are_unit_vectors_and_similar_texts_closer(
    client: openai.OpenAI,
):
    raw = client.embeddings.with_raw_response.create(model="mock-embed", input=EMBED_TEXTS)
    # The SDK asked for base64 on the wire (its default) and the gateway honoured it ...
    wire = json.loads(raw.text)
    assert all(isinstance(item["embedding"], str) for item in wire["data"])
    # ... and the SDK decoded it back into floats.
    response = raw.parse()

    assert response.model == "mock-embed"
    assert [item.index for item in response.data] == [0, 1, 2]
    vectors = [item.embedding for item in response.data]
    for vector in vectors:
        assert len(vector) == 256
        assert all(isinstance(x, float) for x in vector)
        assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)
    related = cosine(vectors[0], vectors[1])
    unrelated = cosine(vectors[0], vectors[2])
    assert related > unrelated
    assert related > 0.3
    assert response.usage.prompt_tokens == sum(len(t.split()) for t in EMBED_TEXTS)


def test_embeddings_float_format_gives_the_same_vectors_as_base64(client: openai.OpenAI):
    default = client.embeddings.create(model="mock-embed", input=EMBED_TEXTS)
    raw = client.embeddings.with_raw_response.create(
        model="mock-embed", input=EMBED_TEXTS, encoding_format="float"
    )
    assert all(isinstance(item["embedding"], list) for item in json.loads(raw.text)["data"])
    floats = raw.parse()
    for from_base64, from_float in zip(default.data, floats.data):
        # Both encode the same float32 values, so they agree exactly at float32 precision.
        assert as_f32(from_float.embedding) == as_f32(from_base64.embedding)


def test_embeddings_honour_dimensions(client: openai.OpenAI):
    response = client.embeddings.create(model="mock-embed", input="shorter vector", dimensions=64)
    vector = response.data[0].embedding
    assert len(vector) == 64
    assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)


# --- Anthropic provider (through the mock Anthropic API) ----------------------------------------


def test_claude_completion_translates_system_prompt_and_reports_usage(
    client: openai.OpenAI, stack: Stack
):
    completion = client.chat.completions.create(
        model="claude",
        messages=[
            {"role": "system", "content": "Be very brief please"},
            {"role": "user", "content": "hello from the sdk"},
        ],
    )

    text = completion.choices[0].message.content
    assert text.startswith("[system: Be very brief] ")
    assert text == "[system: Be very brief] echo: hello from the sdk"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 4 + 4  # system words + user words
    assert completion.usage.completion_tokens == len(text.split())
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )

    # What reached the upstream: Anthropic's shape, its model name and the configured credential.
    stats = stack.mock_stats()
    upstream = stats["last_request"]
    assert upstream["model"] == "claude-test"
    assert upstream["system"] in ("Be very brief please", [{"type": "text", "text": "Be very brief please"}])
    assert all(message["role"] != "system" for message in upstream["messages"])
    assert stats["last_headers"]["x-api-key"] == stack.upstream_key


def test_claude_streamed_completion_matches_plain_and_reports_usage(client: openai.OpenAI):
    messages = [
        {"role": "system", "content": "Answer like a pirate"},
        {"role": "user", "content": "stream from claude please"},
    ]
    plain = client.chat.completions.create(model="claude", messages=messages)
    stream = client.chat.completions.create(
        model="claude",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, chunks = collect_stream(stream)

    assert text == "[system: Answer like a] echo: stream from claude please"
    assert text == plain.choices[0].message.content
    finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_claude_tool_call_comes_back_as_openai_tool_calls(client: openai.OpenAI, stack: Stack):
    completion = client.chat.completions.create(
        model="claude",
        messages=user("What is the weather in Paris today?"),
        tools=[WEATHER_TOOL],
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # The OpenAI tool was translated to Anthropic's shape on the way up.
    tools = stack.mock_stats()["last_request"]["tools"]
    assert tools[0]["name"] == "get_weather"
    assert tools[0]["input_schema"] == WEATHER_TOOL["function"]["parameters"]


def test_claude_tool_result_round_trip_reaches_anthropic_as_tool_result(
    client: openai.OpenAI, stack: Stack
):
    question = user("What is the weather in Paris?")
    first = client.chat.completions.create(model="claude", messages=question, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]

    answer = client.chat.completions.create(
        model="claude",
        messages=[
            *question,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny and warm"},
        ],
        tools=[WEATHER_TOOL],
    )
    # The mock answers by echoing the last user turn, which carries the tool result.
    assert answer.choices[0].message.content == "echo: sunny and warm"
    assert answer.choices[0].finish_reason == "stop"

    upstream = stack.mock_stats()["last_request"]["messages"]
    assert [m["role"] for m in upstream] == ["user", "assistant", "user"]
    tool_use = upstream[1]["content"][-1]
    assert tool_use["type"] == "tool_use"
    assert tool_use["name"] == "get_weather"
    assert tool_use["input"] == {"city": "Paris"}
    tool_result = upstream[2]["content"][0]
    assert tool_result["type"] == "tool_result"
    assert tool_result["tool_use_id"] == tool_use["id"]


def test_claude_streamed_tool_call_assembles_json_arguments(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="claude",
        messages=user("weather in Paris?"),
        tools=[WEATHER_TOOL],
        stream=True,
    )
    name, arguments, finishes = None, "", []
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                assert call.index == 0
                if call.function and call.function.name:
                    name = call.function.name
                if call.function and call.function.arguments:
                    arguments += call.function.arguments
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "Paris"}
    assert finishes == ["tool_calls"]


def test_sdk_stream_helper_assembles_claude_tool_call(client: openai.OpenAI):
    with client.chat.completions.stream(
        model="claude", messages=user("weather in Paris please"), tools=[WEATHER_TOOL]
    ) as stream:
        done = [event for event in stream if event.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [(event.name, json.loads(event.arguments)) for event in done] == [
        ("get_weather", {"city": "Paris"})
    ]
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [call.function.name for call in choice.message.tool_calls] == ["get_weather"]
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}


# --- OpenAI-compatible provider (through the mock OpenAI API) -----------------------------------


def test_openai_provider_forwards_extra_body_fields_and_rewrites_model(
    client: openai.OpenAI, stack: Stack
):
    extra = {
        "vendor_specific_flag": True,
        "vendor_options": {"beam": [1, 2, 3], "mode": "fancy"},
    }
    completion = client.chat.completions.create(
        model="upstream-gpt",
        messages=user("forward my extras"),
        extra_body=extra,
    )
    assert completion.choices[0].message.content == "echo: forward my extras"
    assert completion.usage.total_tokens > 0

    stats = stack.mock_stats()
    upstream = stats["last_request"]
    assert upstream["model"] == "gpt-test"
    assert upstream["vendor_specific_flag"] is True
    assert upstream["vendor_options"] == extra["vendor_options"]
    assert upstream["messages"] == user("forward my extras")
    # The gateway's own key stays at the gateway; the upstream gets the configured credential.
    assert stats["last_headers"]["authorization"] == f"Bearer {stack.upstream_key}"


def test_upstream_rate_limit_raises_rate_limit_error_with_retry_after(client: openai.OpenAI):
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="upstream-ratelimited", messages=user("hi"))
    assert caught.value.status_code == 429
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_upstream_context_length_error_keeps_openai_error_code(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="upstream-too-long", messages=user("hi"))
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length" in caught.value.message


def test_stream_cut_after_the_first_token_raises_api_error_after_the_tokens_received(
    client: openai.OpenAI,
):
    stream = client.chat.completions.create(
        model="upstream-cut", messages=user("hi"), stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    # The tokens sent before the cut reached the client, and the SDK raised instead of
    # returning a truncated answer as if it were complete.
    assert "".join(received).split() == ["w1", "w2", "w3", "w4", "w5"]
    assert "`openai`" in caught.value.message
    assert "dropped the connection" in caught.value.message


# --- response cache -----------------------------------------------------------------------------


def test_repeated_temperature_zero_request_is_a_cache_hit_with_identical_body(
    client: openai.OpenAI,
):
    params = dict(model="mock", messages=user(f"cache me {unique_words()}"), temperature=0)
    first = client.chat.completions.with_raw_response.create(**params)
    second = client.chat.completions.with_raw_response.create(**params)

    assert first.headers["x-gateway-cache"] == "MISS"
    assert second.headers["x-gateway-cache"] == "HIT"
    assert second.text == first.text
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content


def test_streamed_repeat_of_cached_request_is_replayed_as_sse(client: openai.OpenAI):
    params = dict(model="mock", messages=user(f"replay me {unique_words()}"), temperature=0)
    first = client.chat.completions.with_raw_response.create(**params)
    assert first.headers["x-gateway-cache"] == "MISS"
    answer = first.parse().choices[0].message.content

    raw = client.chat.completions.with_raw_response.create(**params, stream=True)
    assert raw.headers["x-gateway-cache"] == "HIT"
    assert raw.headers["content-type"].startswith("text/event-stream")
    text, chunks = collect_stream(raw.parse())
    assert text == answer
    finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert finishes == ["stop"]


def test_cache_hit_does_not_reach_the_upstream(client: openai.OpenAI, stack: Stack):
    params = dict(model="upstream-gpt", messages=user(f"upstream once {unique_words()}"), temperature=0)
    first = client.chat.completions.with_raw_response.create(**params)
    assert first.headers["x-gateway-cache"] == "MISS"
    upstream_requests = stack.mock_stats()["requests"]

    second = client.chat.completions.with_raw_response.create(**params)
    assert second.headers["x-gateway-cache"] == "HIT"
    assert second.text == first.text
    assert stack.mock_stats()["requests"] == upstream_requests


def test_x_gateway_cache_use_header_opts_a_sampled_request_into_the_cache(client: openai.OpenAI):
    params = dict(
        model="mock",
        messages=user(f"opt in {unique_words()}"),
        temperature=0.7,
        extra_headers={"x-gateway-cache": "use"},
    )
    first = client.chat.completions.with_raw_response.create(**params)
    second = client.chat.completions.with_raw_response.create(**params)
    assert first.headers["x-gateway-cache"] == "MISS"
    assert second.headers["x-gateway-cache"] == "HIT"
    assert second.text == first.text


def test_cache_control_no_cache_bypasses_the_cache(client: openai.OpenAI):
    params = dict(model="mock", messages=user(f"bypass me {unique_words()}"), temperature=0)
    client.chat.completions.create(**params)  # now cached
    raw = client.chat.completions.with_raw_response.create(
        **params, extra_headers={"Cache-Control": "no-cache"}
    )
    assert raw.headers["x-gateway-cache"] == "BYPASS"
    assert raw.parse().choices[0].message.content.startswith("Mock answer to: bypass me")


# --- errors map to the SDK's exception classes --------------------------------------------------


def test_wrong_key_raises_authentication_error(make_client):
    bad = make_client("sk-this-is-not-a-gateway-key")
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="mock", messages=user("let me in"))
    assert caught.value.status_code == 401
    assert caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body.get("message")


def test_key_scoped_to_mock_raises_permission_denied_for_other_model(stack: Stack, make_client):
    scoped = make_client(stack.create_key("sdk-scoped", "--models", "mock").secret)
    # The scoped model works ...
    ok = scoped.chat.completions.create(model="mock", messages=user("allowed"))
    assert ok.choices[0].message.content == "Mock answer to: allowed"
    # ... any other is refused.
    with pytest.raises(openai.PermissionDeniedError) as caught:
        scoped.embeddings.create(model="mock-embed", input="not allowed")
    assert caught.value.status_code == 403


def test_unknown_model_raises_not_found(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=user("hello"))
    assert caught.value.status_code == 404
    assert "no-such-model" in caught.value.message


def test_out_of_range_temperature_raises_bad_request(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mock", messages=user("too hot"), temperature=5)
    assert caught.value.status_code == 400
    assert "temperature" in caught.value.message


def test_third_request_in_a_minute_on_rpm_2_key_raises_rate_limit_with_retry_after(
    stack: Stack, make_client
):
    limited = make_client(stack.create_key("sdk-rpm", "--rpm", "2").secret, max_retries=0)
    # The limit counts per calendar minute: keep all three requests inside one.
    if time.time() % 60 > 57:
        time.sleep(60.2 - time.time() % 60)
    for i in range(2):
        ok = limited.chat.completions.create(model="mock", messages=user(f"request {i}"))
        assert ok.choices[0].message.content == f"Mock answer to: request {i}"
    with pytest.raises(openai.RateLimitError) as caught:
        limited.chat.completions.create(model="mock", messages=user("request 2"))
    assert caught.value.status_code == 429
    retry_after = caught.value.response.headers.get("retry-after")
    assert retry_after is not None
    assert 0 < int(retry_after) <= 60


def test_revoked_key_is_refused_within_one_and_a_half_seconds(stack: Stack, make_client):
    doomed_key = stack.create_key("sdk-revoked")
    doomed = make_client(doomed_key.secret)
    ok = doomed.chat.completions.create(model="mock", messages=user("still valid"))
    assert ok.choices[0].message.content == "Mock answer to: still valid"

    stack.revoke_key(doomed_key.id)
    revoked_at = time.monotonic()
    assert stack.key_status(doomed_key.id) == "revoked"

    refused_after = None
    while time.monotonic() - revoked_at < 1.5:
        try:
            doomed.chat.completions.create(model="mock", messages=user("am I revoked"))
        except openai.AuthenticationError as error:
            assert error.status_code == 401
            refused_after = time.monotonic() - revoked_at
            break
        time.sleep(0.05)
    assert refused_after is not None, "revoked key still accepted 1.5 s after revocation"
    # And it stays refused.
    with pytest.raises(openai.AuthenticationError):
        doomed.chat.completions.create(model="mock", messages=user("really revoked"))


# --- async client -------------------------------------------------------------------------------


def test_async_client_streams_chat_completion(stack: Stack, key: Key):
    async def run() -> tuple[str, list]:
        async with openai.AsyncOpenAI(
            base_url=stack.base_url, api_key=key.secret, max_retries=0
        ) as async_client:
            stream = await async_client.chat.completions.create(
                model="mock",
                messages=user("async streaming works"),
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            plain = await async_client.chat.completions.create(
                model="claude", messages=user("async plain works")
            )
            assert plain.choices[0].message.content == "echo: async plain works"
            return "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices), chunks

    text, chunks = asyncio.run(run())
    assert text == "Mock answer to: async streaming works"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())
