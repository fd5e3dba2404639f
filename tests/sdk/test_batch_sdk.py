"""The OpenAI Batch API through the official Python SDK against `gateway-local`: files.create ->
batches.create -> batches.retrieve (poll) -> files.content, for chat and embeddings, and the Uploads
API for a file larger than one request may carry."""

from __future__ import annotations

import io
import json
import time

from typing import TYPE_CHECKING

import openai

if TYPE_CHECKING:
    from conftest import Key, Stack

BATCH_TIMEOUT_S = 120


def wait_for(client: openai.OpenAI, batch_id: str):
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.2)


def records(client: openai.OpenAI, file_id: str) -> dict[str, dict]:
    text = client.files.content(file_id).text
    by_id: dict[str, dict] = {}
    for line in text.splitlines():
        record = json.loads(line)
        assert record["custom_id"] not in by_id, f"{record['custom_id']} twice"
        by_id[record["custom_id"]] = record
    return by_id


def chat_line(custom_id: str, model: str, text: str) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}]},
        }
    )


def test_a_thousand_line_chat_batch_gives_one_result_per_line_and_errors_for_forbidden_models(
    stack: Stack, make_client
):
    key = stack.create_key("batch-sdk", "--models", "mock,mock-embed")
    client: openai.OpenAI = make_client(key.secret)
    forbidden = {f"line-{i}" for i in (3, 250, 999)}
    lines = [
        chat_line(f"line-{i}", "claude" if f"line-{i}" in forbidden else "mock", f"batch question {i}")
        for i in range(1000)
    ]
    uploaded = client.files.create(
        file=("requests.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
    )
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"suite": "sdk"},
    )
    assert batch.status == "validating"

    done = wait_for(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 1000
    assert done.request_counts.completed == 997
    assert done.request_counts.failed == 3
    assert done.metadata == {"suite": "sdk"}

    outputs = records(client, done.output_file_id)
    assert set(outputs) == {f"line-{i}" for i in range(1000)} - forbidden
    answer = outputs["line-42"]["response"]
    assert answer["status_code"] == 200
    assert "batch question 42" in answer["body"]["choices"][0]["message"]["content"]
    errors = records(client, done.error_file_id)
    assert set(errors) == forbidden
    assert errors["line-250"]["response"]["status_code"] == 403

    listed = client.batches.list(limit=5)
    assert listed.data[0].id == batch.id


def test_an_embeddings_batch_returns_vectors_per_line(stack: Stack, make_client):
    key = stack.create_key("batch-embed")
    client: openai.OpenAI = make_client(key.secret)
    lines = [
        json.dumps(
            {
                "custom_id": f"e-{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "mock-embed", "input": f"text {i}", "dimensions": 8},
            }
        )
        for i in range(20)
    ]
    uploaded = client.files.create(
        file=("embed.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_for(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (20, 0)
    outputs = records(client, done.output_file_id)
    vector = outputs["e-5"]["response"]["body"]["data"][0]["embedding"]
    assert len(vector) == 8


def test_a_file_over_the_single_request_cap_arrives_through_the_uploads_api(
    stack: Stack, make_client, tmp_path
):
    key = stack.create_key("batch-upload")
    client: openai.OpenAI = make_client(key.secret)
    padding = "word " * 1000  # about 5 KB per line: 1,000 lines are over the 4 MiB request cap
    path = tmp_path / "big.jsonl"
    path.write_text(
        "\n".join(chat_line(f"u-{i}", "mock", f"{i} {padding}") for i in range(1000)) + "\n"
    )
    size = path.stat().st_size
    assert size > 4 * 1024 * 1024

    # Whole, it is refused for its size.
    try:
        client.files.create(file=path.open("rb"), purpose="batch")
        raise AssertionError("a file over the request cap was accepted whole")
    except openai.APIStatusError as error:
        assert error.status_code == 413

    upload = client.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="batch", part_size=1024 * 1024
    )
    assert upload.status == "completed"
    assert upload.file is not None and upload.file.bytes == size
    batch = client.batches.create(
        input_file_id=upload.file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.completed == 1000
    assert client.files.content(upload.file.id).read() == path.read_bytes()
