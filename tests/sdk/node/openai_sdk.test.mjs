// The gateway through the official OpenAI Node SDK, used as an application would. Started by
// tests/sdk/test_node_sdk.py against its running stack; the gateway's URL and a key come in
// GATEWAY_BASE_URL, an unrestricted key in GATEWAY_API_KEY and one allowed a single token a
// minute in GATEWAY_RATE_LIMITED_KEY.
import assert from "node:assert/strict";
import { test } from "node:test";

import OpenAI from "openai";

const baseURL = process.env.GATEWAY_BASE_URL;
const apiKey = process.env.GATEWAY_API_KEY;
const rateLimitedKey = process.env.GATEWAY_RATE_LIMITED_KEY;
if (!baseURL || !apiKey || !rateLimitedKey) {
  throw new Error(
    "GATEWAY_BASE_URL, GATEWAY_API_KEY and GATEWAY_RATE_LIMITED_KEY must be set (see tests/sdk/test_node_sdk.py)",
  );
}

// No retries: a test must see the gateway's first answer, not a retried one.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

/** A client whose requests and responses are recorded as they went over the wire. */
function recordingClient() {
  const exchanges = [];
  const recording = new OpenAI({
    baseURL,
    apiKey,
    maxRetries: 0,
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      exchanges.push({ request: JSON.parse(init.body), response: await response.clone().json() });
      return response;
    },
  });
  return { client: recording, exchanges };
}

const EMBED_TEXTS = [
  "the quick brown fox jumps over the lazy dog",
  "a quick brown fox leaps over a sleepy dog",
];

test("chat completion returns the answer, usage and model", async () => {
  const completion = await client.chat.completions.create({
    model: "mock",
    messages: [{ role: "user", content: "Hello there gateway" }],
  });
  assert.equal(completion.object, "chat.completion");
  assert.equal(completion.model, "mock");
  assert.equal(completion.choices.length, 1);
  assert.equal(completion.choices[0].message.role, "assistant");
  assert.equal(completion.choices[0].message.content, "Mock answer to: Hello there gateway");
  assert.equal(completion.choices[0].finish_reason, "stop");
  assert.equal(completion.usage.prompt_tokens, 3);
  assert.equal(completion.usage.completion_tokens, 6);
  assert.equal(completion.usage.total_tokens, 9);
});

test("streamed chat with include_usage gives the text, then one usage chunk last", async () => {
  const stream = await client.chat.completions.create({
    model: "mock",
    messages: [{ role: "user", content: "stream these words to me" }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
  }
  const text = chunks.flatMap((chunk) => chunk.choices.map((c) => c.delta.content ?? "")).join("");
  assert.equal(text, "Mock answer to: stream these words to me");
  assert.ok(chunks.length >= 3, `expected deltas, a finish and usage; got ${chunks.length} chunks`);
  assert.deepEqual(
    chunks.map((chunk) => Boolean(chunk.usage)),
    [...Array(chunks.length - 1).fill(false), true],
  );
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.prompt_tokens, 5);
  assert.equal(last.usage.completion_tokens, 8);
  assert.equal(last.usage.total_tokens, 13);
  const finishes = chunks.flatMap((chunk) => chunk.choices.map((c) => c.finish_reason)).filter(Boolean);
  assert.deepEqual(finishes, ["stop"]);
});

test("embeddings in the SDK's default base64 decode to the float format's values", async () => {
  const { client: recording, exchanges } = recordingClient();
  const byDefault = await recording.embeddings.create({ model: "mock-embed", input: EMBED_TEXTS });
  const asFloats = await recording.embeddings.create({
    model: "mock-embed",
    input: EMBED_TEXTS,
    encoding_format: "float",
  });

  // On the wire: the SDK asked for base64 and got strings; then floats when asked for them.
  const [defaultExchange, floatExchange] = exchanges;
  assert.equal(defaultExchange.request.encoding_format, "base64");
  assert.ok(defaultExchange.response.data.every((item) => typeof item.embedding === "string"));
  assert.ok(floatExchange.response.data.every((item) => Array.isArray(item.embedding)));

  assert.equal(byDefault.model, "mock-embed");
  assert.deepEqual(byDefault.data.map((item) => item.index), [0, 1]);
  for (const [index, item] of byDefault.data.entries()) {
    assert.equal(item.embedding.length, 256);
    const norm = Math.sqrt(item.embedding.reduce((sum, x) => sum + x * x, 0));
    assert.ok(Math.abs(norm - 1) < 1e-5, `vector ${index} has norm ${norm}`);
    // Both carry the same float32 values: equal once the JSON decimals are read as float32.
    assert.deepEqual(item.embedding, asFloats.data[index].embedding.map(Math.fround));
  }
});

test("a wrong key raises AuthenticationError (401, invalid_api_key)", async () => {
  const stranger = new OpenAI({ baseURL, apiKey: "sk-this-is-not-a-gateway-key", maxRetries: 0 });
  await assert.rejects(
    stranger.chat.completions.create({ model: "mock", messages: [{ role: "user", content: "let me in" }] }),
    (error) => {
      assert.ok(error instanceof OpenAI.AuthenticationError, `got ${error?.constructor?.name}`);
      assert.equal(error.status, 401);
      assert.equal(error.code, "invalid_api_key");
      return true;
    },
  );
});

test("an unknown model raises NotFoundError (404, model_not_found)", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "hello" }] }),
    (error) => {
      assert.ok(error instanceof OpenAI.NotFoundError, `got ${error?.constructor?.name}`);
      assert.equal(error.status, 404);
      assert.equal(error.code, "model_not_found");
      assert.match(error.message, /no-such-model/);
      return true;
    },
  );
});

test("a key over its rate limit raises RateLimitError (429, rate_limit_exceeded)", async () => {
  // The key allows one token a minute, so every request is over its limit.
  const limited = new OpenAI({ baseURL, apiKey: rateLimitedKey, maxRetries: 0 });
  await assert.rejects(
    limited.chat.completions.create({ model: "mock", messages: [{ role: "user", content: "hi" }] }),
    (error) => {
      assert.ok(error instanceof OpenAI.RateLimitError, `got ${error?.constructor?.name}`);
      assert.equal(error.status, 429);
      assert.equal(error.code, "rate_limit_exceeded");
      const retryAfter = Number(error.headers.get("retry-after"));
      assert.ok(retryAfter >= 1 && retryAfter <= 60, `retry-after ${retryAfter}`);
      return true;
    },
  );
});
