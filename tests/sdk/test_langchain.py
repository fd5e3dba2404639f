"""The gateway through LangChain's OpenAI integration (`langchain-openai`), set up as its docs
show for an OpenAI-compatible server: only `base_url` and `api_key`.

OpenAIEmbeddings tokenizes with tiktoken and sends cl100k token ids, not text. tiktoken
downloads its encoding file on first use; the tests seed its cache from the copy the
`tiktoken-rs` crate (the version in Cargo.lock) ships, and forbid the download, so they run
offline and the same everywhere.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import openai
import pytest

from conftest import REPO

if TYPE_CHECKING:
    from conftest import Key, Stack


EMBED_TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a quick brown fox leaps over a sleepy dog",
    "quarterly revenue grew in the enterprise segment",
]


def _tiktoken_rs_assets() -> Path:
    """The assets folder of the tiktoken-rs source that Cargo.lock pins, from Cargo's registry
    cache (the build fetched it). Read from the lock file rather than `cargo metadata`, which
    needs every locked package downloaded, those of other platforms too."""
    lock = (REPO / "Cargo.lock").read_text()
    versions = re.findall(r'name = "tiktoken-rs"\nversion = "([^"]+)"', lock)
    assert len(versions) == 1, f"expected one tiktoken-rs in Cargo.lock, found {versions}"
    cargo_home = Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo")
    sources = sorted(cargo_home.glob(f"registry/src/*/tiktoken-rs-{versions[0]}/assets"))
    assert sources, f"tiktoken-rs {versions[0]} is not in {cargo_home}/registry/src (build first)"
    return sources[0]


def _cl100k_address_and_sha256() -> tuple[str, str]:
    """Where this tiktoken loads cl100k_base from (its cache names the file by the address's
    sha1) and the sha256 it demands, asked from tiktoken itself so an upgrade cannot stale them."""
    import tiktoken_ext.openai_public as public

    class Asked(Exception):
        pass

    asked: dict[str, str] = {}

    def record(blobpath: str, expected_hash: str | None = None) -> dict:
        asked.update(address=blobpath, sha256=expected_hash or "")
        raise Asked

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(public, "load_tiktoken_bpe", record)
        with pytest.raises(Asked):
            public.cl100k_base()
    assert asked["sha256"], "tiktoken names no sha256 for cl100k_base"
    return asked["address"], asked["sha256"]


@pytest.fixture(scope="module", autouse=True)
def tiktoken_offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    address, sha256 = _cl100k_address_and_sha256()
    source = _tiktoken_rs_assets() / "cl100k_base.tiktoken"
    assert hashlib.sha256(source.read_bytes()).hexdigest() == sha256, (
        f"{source} is not the cl100k_base file tiktoken expects"
    )
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    shutil.copyfile(source, cache / hashlib.sha1(address.encode()).hexdigest())

    import tiktoken.load

    def no_download(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}; its cache was not used")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        patch.setattr(tiktoken.load, "read_file", no_download)
        yield


def chat_model(stack: Stack, key: Key, **options):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model="mock", base_url=stack.base_url, api_key=key.secret, max_retries=0, **options
    )


def test_chat_invoke_returns_the_answer_and_usage(stack: Stack, key: Key):
    answer = chat_model(stack, key).invoke("Hello there gateway")
    assert answer.content == "Mock answer to: Hello there gateway"
    assert answer.response_metadata["finish_reason"] == "stop"
    assert answer.response_metadata["model_name"] == "mock"
    usage = answer.usage_metadata
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (3, 6, 9)


def test_chat_stream_concatenates_to_the_answer_and_ends_with_usage(stack: Stack, key: Key):
    # Away from api.openai.com LangChain asks for the usage chunk only when told to.
    chunks = list(chat_model(stack, key, stream_usage=True).stream("stream these words to me"))
    assert len(chunks) >= 3, "expected the answer in several deltas"
    assert "".join(chunk.content for chunk in chunks) == "Mock answer to: stream these words to me"
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == "Mock answer to: stream these words to me"
    assert merged.response_metadata["finish_reason"] == "stop"
    usage = merged.usage_metadata
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (5, 8, 13)


class RecordingEmbeddings:
    """Wraps the SDK's embeddings resource and keeps every `input` LangChain sends."""

    def __init__(self, resource) -> None:
        self._resource = resource
        self.inputs: list = []

    def create(self, **params):
        self.inputs.append(params["input"])
        return self._resource.create(**params)


def test_embeddings_sent_as_token_ids_equal_the_texts_embeddings(
    stack: Stack, key: Key, client: openai.OpenAI
):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model="mock-embed", base_url=stack.base_url, api_key=key.secret, max_retries=0
    )
    recorder = RecordingEmbeddings(embeddings.client)
    embeddings.client = recorder

    documents = embeddings.embed_documents(EMBED_TEXTS)
    query = embeddings.embed_query(EMBED_TEXTS[0])

    # LangChain sent lists of token ids (a list per text), not the texts.
    documents_input, query_input = recorder.inputs
    assert len(documents_input) == len(EMBED_TEXTS)
    assert all(ids and all(isinstance(i, int) for i in ids) for ids in documents_input)
    assert len(query_input) == 1 and all(isinstance(i, int) for i in query_input[0])

    # The gateway embedded the texts those ids encode: the same vectors as the texts give.
    response = client.embeddings.create(model="mock-embed", input=EMBED_TEXTS)
    expected = [item.embedding for item in response.data]
    assert len(documents) == len(expected)
    for got, want in zip(documents, expected):
        assert len(got) == len(want) == 256
        assert got == pytest.approx(want, abs=1e-6)
        assert math.sqrt(sum(x * x for x in got)) == pytest.approx(1.0, abs=1e-5)
    assert query == pytest.approx(expected[0], abs=1e-6)
