"""The gateway's Anthropic Messages API (`/v1/messages`) through the official Anthropic Python SDK,
used as an application (or Claude Code) would: against the built-in `mock` model (answered by the
chat pipeline, translated both ways), `claude` (an Anthropic-kind provider) and `upstream-gpt` (an
OpenAI-kind provider), the last two served by `mock-provider`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Iterator

import anthropic
import openai
import pytest

if TYPE_CHECKING:
    from conftest import Key, Stack

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

MODELS = ["mock", "claude", "upstream-gpt"]


def nonce() -> str:
    """A prompt no other test sends, so cache and rate-limit state never leak between tests."""
    return f"nonce{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def claude(stack: Stack, key: Key) -> Iterator[anthropic.Anthropic]:
    # The SDK sends the key as `x-api-key`; no retries, so a test sees the gateway's first answer.
    with anthropic.Anthropic(base_url=stack.gateway_url, api_key=key.secret, max_retries=0) as c:
        yield c


@pytest.mark.parametrize("model", MODELS)
def test_message_returns_text_stop_reason_and_usage(claude: anthropic.Anthropic, model: str):
    words = nonce()
    message = claude.messages.create(
        model=model,
        max_tokens=200,
        system="You are terse.",
        messages=[{"role": "user", "content": f"hello {words}"}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert words in message.content[0].text
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_stream_helper_assembles_the_same_message_as_the_plain_call(
    claude: anthropic.Anthropic, model: str
):
    params = dict(
        model=model,
        max_tokens=200,
        messages=[{"role": "user", "content": f"stream {nonce()}"}],
        extra_headers={"Cache-Control": "no-cache"},
    )
    plain = claude.messages.create(**params)
    with claude.messages.stream(**params) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(deltas) > 1, "the text arrives in several deltas"
    assert "".join(deltas) == plain.content[0].text
    assert final.content[0].text == plain.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_raw_stream_has_the_full_event_sequence(claude: anthropic.Anthropic):
    events = list(
        claude.messages.create(
            model="claude",
            max_tokens=100,
            messages=[{"role": "user", "content": f"events {nonce()}"}],
            stream=True,
        )
    )
    names = [event.type for event in events]
    assert names[0] == "message_start"
    assert names[1] == "content_block_start"
    assert set(names[2:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


@pytest.mark.parametrize("model", ["claude", "upstream-gpt"])
def test_tool_use_round_trip(claude: anthropic.Anthropic, stack: Stack, model: str):
    question = {"role": "user", "content": "What is the weather in Paris today?"}
    first = claude.messages.create(
        model=model, max_tokens=200, messages=[question], tools=[WEATHER_TOOL]
    )
    assert first.stop_reason == "tool_use"
    tool_use = next(block for block in first.content if block.type == "tool_use")
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"city": "Paris"}
    assert tool_use.id

    answer = claude.messages.create(
        model=model,
        max_tokens=200,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny and warm"}
                ],
            },
        ],
    )
    # The mock echoes the last user turn, which carries the tool result.
    assert answer.content[0].text == "echo: sunny and warm"
    assert answer.stop_reason == "end_turn"
    upstream = stack.mock_stats()["last_request"]["messages"]
    if model == "claude":
        assert upstream[-1]["content"][0]["type"] == "tool_result"
        assert upstream[-1]["content"][0]["tool_use_id"] == tool_use.id
    else:
        assert upstream[-1] == {"role": "tool", "tool_call_id": tool_use.id, "content": "sunny and warm"}


def test_streamed_tool_use_assembles_its_json_input(claude: anthropic.Anthropic):
    with claude.messages.stream(
        model="claude",
        max_tokens=200,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    ) as stream:
        final = stream.get_final_message()
    tool_use = next(block for block in final.content if block.type == "tool_use")
    assert tool_use.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"


def test_wrong_key_raises_authentication_error(stack: Stack):
    with anthropic.Anthropic(base_url=stack.gateway_url, api_key="not-a-key", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            bad.messages.create(
                model="mock", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "authentication_error"


def test_bearer_token_authenticates_as_claude_code_sends_it(stack: Stack, key: Key):
    with anthropic.Anthropic(
        base_url=stack.gateway_url, auth_token=key.secret, max_retries=0
    ) as bearer:
        message = bearer.messages.create(
            model="mock", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content[0].text


def test_invalid_request_raises_bad_request_error(claude: anthropic.Anthropic):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model="mock", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
            extra_body={"max_tokens": "many"},
        )
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in caught.value.body["error"]["message"]


def test_unknown_model_raises_not_found_error(claude: anthropic.Anthropic):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_upstream_rate_limit_raises_rate_limit_error(claude: anthropic.Anthropic):
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(
            model="upstream-ratelimited-anthropic", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert caught.value.response.headers.get("retry-after")


def test_stream_cut_raises_api_error_after_the_text_received(claude: anthropic.Anthropic):
    received = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        with claude.messages.stream(
            model="upstream-cut", max_tokens=100, messages=[{"role": "user", "content": "go"}]
        ) as stream:
            for text in stream.text_stream:
                received.append(text)
    assert "".join(received).split() == ["w1", "w2", "w3", "w4", "w5"]
    assert "dropped the connection" in str(caught.value)


def test_count_tokens_matches_the_estimate_limits_reserve(claude: anthropic.Anthropic):
    short = claude.messages.count_tokens(
        model="mock", messages=[{"role": "user", "content": "hi"}]
    )
    long = claude.messages.count_tokens(
        model="mock",
        system="You are terse.",
        messages=[{"role": "user", "content": "hi " * 400}],
        tools=[WEATHER_TOOL],
    )
    assert short.input_tokens > 0
    assert long.input_tokens > short.input_tokens + 250


def test_model_list_takes_anthropic_shape(claude: anthropic.Anthropic):
    page = claude.models.list()
    ids = [model.id for model in page.data]
    assert {"mock", "claude", "upstream-gpt"} <= set(ids)
    assert all(model.type == "model" for model in page.data)
    assert page.data[0].created_at is not None


def test_same_request_through_chat_and_messages_is_one_cache_entry_and_one_price(
    claude: anthropic.Anthropic, stack: Stack, key: Key
):
    text = f"same {nonce()}"

    def chat_params(model: str) -> dict:
        return dict(
            model=model,
            max_tokens=100,
            temperature=0,
            messages=[{"role": "user", "content": text}],
        )

    def message_params(model: str) -> dict:
        # This SDK version no longer takes `temperature` as an argument; the API still does.
        return dict(
            model=model,
            max_tokens=100,
            messages=[{"role": "user", "content": text}],
            extra_body={"temperature": 0},
        )

    with openai.OpenAI(base_url=stack.base_url, api_key=key.secret, max_retries=0) as chat:
        first = chat.chat.completions.with_raw_response.create(**chat_params("upstream-gpt"))
        assert first.headers["x-gateway-cache"] == "MISS"
        upstream_requests = stack.mock_stats()["requests"]

        again = claude.messages.with_raw_response.create(**message_params("upstream-gpt"))
        assert again.headers["x-gateway-cache"] == "HIT"
        assert stack.mock_stats()["requests"] == upstream_requests
        assert again.parse().content[0].text == first.parse().choices[0].message.content

        # Both answered by the priced `mock` model, past the cache: the same spend.
        fresh = {"Cache-Control": "no-cache"}
        billed_chat = chat.chat.completions.with_raw_response.create(
            **chat_params("mock"), extra_headers=fresh
        )
        billed_messages = claude.messages.with_raw_response.create(
            **message_params("mock"), extra_headers=fresh
        )
    assert float(billed_chat.headers["x-gateway-cost-usd"]) > 0
    assert billed_messages.headers["x-gateway-cost-usd"] == billed_chat.headers["x-gateway-cost-usd"]
    usage = billed_messages.parse().usage
    assert usage.input_tokens == billed_chat.parse().usage.prompt_tokens
    assert usage.output_tokens == billed_chat.parse().usage.completion_tokens


def thinking_params(words: str) -> dict:
    return dict(
        model="claude",
        max_tokens=2000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": f"think about {words}"}],
        extra_headers={"Cache-Control": "no-cache"},
    )


def test_thinking_blocks_come_back_and_a_follow_up_sends_them_back(claude: anthropic.Anthropic):
    params = thinking_params(nonce())
    message = claude.messages.create(**params)
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.thinking == "The user wrote 3 words."
    assert thinking.signature == "mock-signature-3"
    # The SDK's own blocks, sent back as the assistant turn: the upstream refuses a thinking
    # block without its signature, so this succeeds only if the gateway passed it on whole.
    follow_up = claude.messages.create(
        **{
            **params,
            "messages": [
                *params["messages"],
                {"role": "assistant", "content": message.content},
                {"role": "user", "content": "and then?"},
            ],
        }
    )
    assert follow_up.content[0].type == "thinking"


def test_streamed_thinking_assembles_into_the_same_blocks(claude: anthropic.Anthropic):
    params = thinking_params(nonce())
    plain = claude.messages.create(**params)
    with claude.messages.stream(**params) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds, kinds
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == plain.content[0].thinking
    assert final.content[0].signature == plain.content[0].signature
    assert final.content[1].text == plain.content[1].text


@pytest.mark.parametrize("stream", [False, True])
def test_cache_control_usage_reports_the_write_then_the_read(
    claude: anthropic.Anthropic, stream: bool
):
    manual = f"The manual {nonce()}: press the red button to start the machine."
    params = dict(
        model="claude",
        max_tokens=200,
        system=[
            {"type": "text", "text": "Answer from the manual."},
            {"type": "text", "text": manual, "cache_control": {"type": "ephemeral"}},
        ],
        messages=[{"role": "user", "content": "how do I start it"}],
        extra_headers={"Cache-Control": "no-cache"},
    )

    def usage() -> anthropic.types.Usage:
        if not stream:
            return claude.messages.create(**params).usage
        with claude.messages.stream(**params) as events:
            return events.get_final_message().usage

    written = usage()
    assert written.cache_creation_input_tokens > 0
    assert written.cache_read_input_tokens == 0
    read = usage()
    assert read.cache_read_input_tokens == written.cache_creation_input_tokens
    assert read.cache_creation_input_tokens == 0
    assert read.input_tokens == written.input_tokens
