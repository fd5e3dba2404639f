//! OpenAI's Responses API (`/v1/responses`) over sockets: the same pipeline as chat completions
//! behind an OpenAI-kind (`gpt`) and an Anthropic-kind (`claude`) provider; content parts,
//! instructions, function calls and their outputs, `text.format` JSON schemas (validated like
//! chat's `response_format`), `max_output_tokens`, the event stream, stored responses per tenant
//! (`GET`, `DELETE`, `previous_response_id`) and OpenAI-shaped errors.

use crate::common::{MockUpstream, Reply, TestGateway, test_config, within};
use bytes::Bytes;
use gateway::http::responses::MAX_CONVERSATION_TURNS;
use gateway::keys::{NewKey, Scope};
use gateway::responses::{DEFAULT_RESPONSE_TTL_SECS, ResponseStore};
use serde_json::{Value, json};

/// Models whose upstream fails: every time with a 500, or by closing a stream mid-way.
const FAILING_MODELS: &str = r#"
[models.cut]
deployments = [{ provider = "upstream", model = "fault:tokens=60;cut_after=40" }]
"#;

async fn gateway() -> (MockUpstream, TestGateway, String) {
    let upstream = MockUpstream::start(&[]);
    let config = format!("{}{FAILING_MODELS}", test_config(&upstream.url));
    let gateway = TestGateway::start(&config).await;
    let key = gateway.plain_key().await;
    (upstream, gateway, key)
}

fn created(reply: &Reply) -> Value {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// The text of a Response's message items, as the SDKs' `output_text` joins it.
fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap().iter())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

fn weather_tool() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
}

#[tokio::test]
async fn responses_are_answered_through_openai_and_anthropic_kind_providers() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        for (model, upstream_model) in [("gpt", "gpt-test"), ("claude", "claude-test")] {
            let reply = gw
                .post(
                    "/v1/responses",
                    &key,
                    &json!({"model": model, "instructions": "Be brief.", "input": "hello there",
                        "metadata": {"team": "a"}, "max_output_tokens": 100}),
                )
                .await;
            let response = created(&reply);
            assert!(response["id"].as_str().unwrap().starts_with("resp_"));
            assert_eq!(response["object"], "response");
            assert_eq!(response["status"], "completed");
            assert_eq!(response["error"], Value::Null);
            assert_eq!(response["instructions"], "Be brief.");
            assert_eq!(response["metadata"], json!({"team": "a"}));
            assert_eq!(response["store"], true);
            assert!(response["created_at"].as_u64().unwrap() > 1_700_000_000);
            // The Anthropic-shaped mock echoes the `system` it was sent; the OpenAI one does not.
            let echo = match model {
                "claude" => "[system: Be brief.] echo: hello there",
                _ => "echo: hello there",
            };
            assert_eq!(output_text(&response), echo);
            let message = &response["output"][0];
            assert_eq!(message["type"], "message");
            assert_eq!(message["role"], "assistant");
            assert_eq!(message["status"], "completed");
            assert!(message["id"].as_str().unwrap().starts_with("msg_"));
            let usage = &response["usage"];
            assert!(usage["input_tokens"].as_u64().unwrap() > 0);
            assert!(usage["output_tokens"].as_u64().unwrap() > 0);
            assert_eq!(
                usage["total_tokens"].as_u64().unwrap(),
                usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
            );
            assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);
            assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
            assert_eq!(reply.header("x-gateway-model"), Some(model));
            let sent = &upstream.stats().await["last_request"];
            assert_eq!(sent["model"], upstream_model);
            assert_eq!(sent["max_tokens"], 100);
            if model == "gpt" {
                assert_eq!(
                    sent["messages"][0],
                    json!({"role": "system", "content": "Be brief."})
                );
            } else {
                assert_eq!(sent["system"], "Be brief.");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn content_parts_reach_the_provider_as_text_and_image_parts() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let image = "data:image/png;base64,iVBORw0KGgo=";
        let reply = gw
            .post(
                "/v1/responses",
                &key,
                &json!({"model": "gpt", "input": [{"role": "user", "content": [
                    {"type": "input_text", "text": "describe this"},
                    {"type": "input_image", "image_url": image, "detail": "low"}
                ]}]}),
            )
            .await;
        assert_eq!(output_text(&created(&reply)), "echo: describe this");
        let sent = &upstream.stats().await["last_request"];
        assert_eq!(
            sent["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "describe this"},
                {"type": "image_url", "image_url": {"url": image, "detail": "low"}}
            ]}])
        );
    })
    .await;
}

#[tokio::test]
async fn a_function_call_round_trips_through_its_output() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        for model in ["gpt", "claude"] {
            let question = json!({"role": "user", "content": "What is the weather in Paris?"});
            let reply = gw
                .post(
                    "/v1/responses",
                    &key,
                    &json!({"model": model, "input": [question], "tools": weather_tool()}),
                )
                .await;
            let response = created(&reply);
            assert_eq!(response["tools"], weather_tool(), "{model}");
            let call = response["output"]
                .as_array()
                .unwrap()
                .iter()
                .find(|item| item["type"] == "function_call")
                .unwrap_or_else(|| panic!("no function call for {model}: {response}"))
                .clone();
            assert_eq!(call["name"], "get_weather");
            assert_eq!(call["status"], "completed");
            assert!(call["id"].as_str().unwrap().starts_with("fc_"));
            let call_id = call["call_id"].as_str().unwrap().to_owned();
            assert!(!call_id.is_empty());
            assert_eq!(
                serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
                json!({"city": "Paris"})
            );

            let follow_up = json!({"model": model, "tools": weather_tool(), "input": [
                question, call,
                {"type": "function_call_output", "call_id": call_id, "output": "sunny and 21C"}
            ]});
            let answer = created(&gw.post("/v1/responses", &key, &follow_up).await);
            assert_eq!(answer["status"], "completed");
            assert_eq!(answer["output"][0]["type"], "message", "{answer}");
            let sent = &upstream.stats().await["last_request"];
            if model == "gpt" {
                let messages = sent["messages"].as_array().unwrap();
                assert_eq!(messages[1]["role"], "assistant");
                assert_eq!(messages[1]["tool_calls"][0]["id"], call_id.as_str());
                assert_eq!(
                    messages[2],
                    json!({"role": "tool", "tool_call_id": call_id, "content": "sunny and 21C"})
                );
                assert_eq!(output_text(&answer), "echo: sunny and 21C");
            } else {
                let messages = sent["messages"].as_array().unwrap();
                assert_eq!(messages[1]["content"][0]["type"], "tool_use");
                assert_eq!(messages[1]["content"][0]["id"], call_id.as_str());
                let result = &messages[2]["content"][0];
                assert_eq!(result["type"], "tool_result");
                assert_eq!(result["tool_use_id"], call_id.as_str());
            }
        }
    })
    .await;
}

/// A `text.format` JSON schema, with the built-in mock scripted to answer each attempt.
fn shaped(answers: &[&str]) -> Value {
    json!({
        "model": "mock",
        "input": format!("mock-answers: {}", json!(answers)),
        "text": {"format": {"type": "json_schema", "name": "point", "strict": true, "schema": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "required": ["x", "y"], "additionalProperties": false
        }}},
    })
}

#[tokio::test]
async fn a_json_schema_format_is_held_to_its_schema() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let valid = created(
            &gw.post("/v1/responses", &key, &shaped(&[r#"{"x": 1, "y": 2}"#]))
                .await,
        );
        assert_eq!(output_text(&valid), r#"{"x": 1, "y": 2}"#);
        assert_eq!(valid["text"]["format"]["type"], "json_schema");
        assert_eq!(valid["text"]["format"]["name"], "point");
        // A bad answer is asked for again, and the good second one is what the client gets.
        let retried = created(
            &gw.post(
                "/v1/responses",
                &key,
                &shaped(&["Sure! {x: 1}", r#"{"x": 3, "y": 4}"#]),
            )
            .await,
        );
        assert_eq!(output_text(&retried), r#"{"x": 3, "y": 4}"#);
        let invalid = gw
            .post("/v1/responses", &key, &shaped(&[r#"{"x": 1, "y": "two"}"#]))
            .await;
        assert_eq!(invalid.status, 502);
        assert_eq!(invalid.json()["error"]["code"], "output_validation_failed");
        assert_eq!(invalid.json()["error"]["param"], "response_format");
    })
    .await;
}

#[tokio::test]
async fn max_output_tokens_ends_an_incomplete_response() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let body =
            json!({"model": "gpt", "input": "one two three four five six", "max_output_tokens": 3});
        let response = created(&gw.post("/v1/responses", &key, &body).await);
        assert_eq!(response["status"], "incomplete");
        assert_eq!(
            response["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(response["max_output_tokens"], 3);
        assert_eq!(response["output"][0]["status"], "incomplete");
        assert_eq!(response["usage"]["output_tokens"], 3);

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let events = gw
            .post("/v1/responses", &key, &streamed)
            .await
            .named_events();
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "response.incomplete");
        assert_eq!(last["response"]["status"], "incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    })
    .await;
}

#[tokio::test]
async fn a_streamed_response_is_the_full_event_sequence_for_either_provider_kind() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        for model in ["gpt", "claude"] {
            let reply = gw
                .post(
                    "/v1/responses",
                    &key,
                    &json!({"model": model, "input": "stream me please", "stream": true}),
                )
                .await;
            assert_eq!(reply.status, 200);
            assert!(
                reply
                    .header("content-type")
                    .unwrap()
                    .starts_with("text/event-stream")
            );
            let events = reply.named_events();
            for (number, (_, data)) in events.iter().enumerate() {
                assert_eq!(data["sequence_number"], number, "{model}: {data}");
            }
            let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names[..4],
                [
                    "response.created",
                    "response.in_progress",
                    "response.output_item.added",
                    "response.content_part.added"
                ],
                "{model}"
            );
            assert_eq!(
                names[names.len() - 4..],
                [
                    "response.output_text.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "response.completed"
                ],
                "{model}"
            );
            assert!(
                names[4..names.len() - 4]
                    .iter()
                    .all(|n| *n == "response.output_text.delta"),
                "{names:?}"
            );
            let created = &events[0].1["response"];
            assert_eq!(created["status"], "in_progress");
            let item_id = &events[2].1["item"]["id"];
            let text: String = events
                .iter()
                .filter(|(n, _)| n == "response.output_text.delta")
                .inspect(|(_, d)| {
                    assert_eq!(&d["item_id"], item_id);
                    assert_eq!(d["output_index"], 0);
                    assert_eq!(d["content_index"], 0);
                    assert_eq!(d["logprobs"], json!([]));
                })
                .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(text, "echo: stream me please", "{model}");
            let done = &events[names.len() - 1].1["response"];
            assert_eq!(done["id"], created["id"]);
            assert_eq!(done["status"], "completed");
            assert_eq!(output_text(done), "echo: stream me please");
            assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);
            assert!(done["usage"]["input_tokens"].as_u64().unwrap() > 0);
            // What was streamed is what was stored.
            let stored = gw
                .get(
                    &format!("/v1/responses/{}", done["id"].as_str().unwrap()),
                    &key,
                )
                .await;
            assert_eq!(&stored.json(), done);
        }
    })
    .await;
}

#[tokio::test]
async fn a_streamed_function_call_arrives_as_argument_deltas() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        for model in ["gpt", "claude"] {
            let body = json!({"model": model, "input": "What is the weather in Paris?",
                "tools": weather_tool(), "stream": true});
            let events = gw.post("/v1/responses", &key, &body).await.named_events();
            let (_, added) = events
                .iter()
                .find(|(n, d)| {
                    n == "response.output_item.added" && d["item"]["type"] == "function_call"
                })
                .unwrap_or_else(|| panic!("no function call for {model}: {events:?}"));
            assert_eq!(added["item"]["name"], "get_weather");
            let item_id = &added["item"]["id"];
            let arguments: String = events
                .iter()
                .filter(|(n, _)| n == "response.function_call_arguments.delta")
                .inspect(|(_, d)| assert_eq!(&d["item_id"], item_id))
                .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                serde_json::from_str::<Value>(&arguments).unwrap(),
                json!({"city": "Paris"})
            );
            let (_, done) = events
                .iter()
                .find(|(n, _)| n == "response.function_call_arguments.done")
                .unwrap();
            assert_eq!(done["arguments"], arguments.as_str());
            let (name, last) = events.last().unwrap();
            assert_eq!(name, "response.completed");
            let call = last["response"]["output"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["type"] == "function_call")
                .unwrap();
            assert_eq!(call["arguments"], arguments.as_str());
            assert_eq!(&call["call_id"], &added["item"]["call_id"]);
        }
    })
    .await;
}

#[tokio::test]
async fn a_stream_that_fails_midway_ends_with_error_then_response_failed() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let body = json!({"model": "cut", "input": "hi", "stream": true});
        let reply = gw.post("/v1/responses", &key, &body).await;
        assert_eq!(reply.status, 200);
        let events = reply.named_events();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "response.created");
        assert!(names.contains(&"response.output_text.delta"), "{names:?}");
        assert_eq!(names[names.len() - 2..], ["error", "response.failed"]);
        let (_, error) = &events[names.len() - 2];
        assert!(error["message"].as_str().unwrap().len() > 5);
        let (_, failed) = events.last().unwrap();
        assert_eq!(failed["response"]["status"], "failed");
        assert_eq!(failed["response"]["error"]["code"], "server_error");
        for (number, (_, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], number);
        }
        // A failed response is not stored.
        let id = failed["response"]["id"].as_str().unwrap();
        assert_eq!(
            gw.get(&format!("/v1/responses/{id}"), &key).await.status,
            404
        );
    })
    .await;
}

#[tokio::test]
async fn stored_responses_are_read_and_deleted_by_their_tenant_only() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let (other_tenant, _) = gw
            .key(NewKey {
                name: "other".into(),
                tenant: Some("other".into()),
                ..NewKey::default()
            })
            .await;
        let response = created(
            &gw.post(
                "/v1/responses",
                &key,
                &json!({"model": "gpt", "input": "keep me"}),
            )
            .await,
        );
        let id = response["id"].as_str().unwrap();
        let path = format!("/v1/responses/{id}");
        let read = gw.get(&path, &key).await;
        assert_eq!(read.status, 200);
        assert_eq!(read.json(), response);

        let foreign_read = gw.get(&path, &other_tenant).await;
        let foreign_delete = gw.delete(&path, &other_tenant).await;
        assert_eq!(foreign_read.status, 404);
        assert_eq!(foreign_delete.status, 404);
        assert_eq!(gw.get(&path, &key).await.status, 200, "still there");

        let deleted = gw.delete(&path, &key).await;
        assert_eq!(deleted.status, 200);
        assert_eq!(
            deleted.json(),
            json!({"id": id, "object": "response", "deleted": true})
        );
        let gone = gw.get(&path, &key).await;
        assert_eq!(gone.status, 404);
        assert_eq!(gone.json()["error"]["type"], "invalid_request_error");
        // Another tenant's id is answered exactly as an unknown one.
        assert_eq!(foreign_read.body, gone.body);
        assert_eq!(foreign_delete.body, gw.delete(&path, &key).await.body);
        let malformed = gw.get("/v1/responses/resp_a%23b", &key).await;
        assert_eq!(malformed.status, 404);

        // `store: false` keeps nothing, and says so.
        let unstored = created(
            &gw.post(
                "/v1/responses",
                &key,
                &json!({"model": "gpt", "input": "forget me", "store": false}),
            )
            .await,
        );
        assert_eq!(unstored["store"], false);
        let path = format!("/v1/responses/{}", unstored["id"].as_str().unwrap());
        assert_eq!(gw.get(&path, &key).await.status, 404);
    })
    .await;
}

#[tokio::test]
async fn previous_response_id_continues_the_conversation_without_earlier_instructions() {
    within(30, async {
        let (upstream, gw, key) = gateway().await;
        let first = created(
            &gw.post(
                "/v1/responses",
                &key,
                &json!({"model": "gpt", "instructions": "Be brief.", "input": "my name is Ada"}),
            )
            .await,
        );
        let events = gw
            .post(
                "/v1/responses",
                &key,
                &json!({"model": "gpt", "input": "what is my name", "stream": true,
                    "previous_response_id": first["id"]}),
            )
            .await
            .named_events();
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "response.completed");
        let second = &last["response"];
        assert_eq!(second["previous_response_id"], first["id"]);
        assert_eq!(second["instructions"], Value::Null);
        let sent = &upstream.stats().await["last_request"];
        assert_eq!(
            sent["messages"],
            json!([
                {"role": "user", "content": "my name is Ada"},
                {"role": "assistant", "content": "echo: my name is Ada"},
                {"role": "user", "content": "what is my name"}
            ])
        );
        // The streamed turn was stored, so the chain goes on from it.
        let third = created(
            &gw.post(
                "/v1/responses",
                &key,
                &json!({"model": "gpt", "instructions": "Now in French.", "input": "and again",
                    "previous_response_id": second["id"]}),
            )
            .await,
        );
        assert_eq!(output_text(&third), "echo: and again");
        let sent = &upstream.stats().await["last_request"];
        let roles: Vec<&str> = sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles,
            ["system", "user", "assistant", "user", "assistant", "user"]
        );
        assert_eq!(sent["messages"][0]["content"], "Now in French.");
        assert_eq!(sent["messages"][4]["content"], "echo: what is my name");
    })
    .await;
}

#[tokio::test]
async fn previous_response_ids_that_cannot_be_followed_are_refused() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let (other_tenant, _) = gw
            .key(NewKey {
                name: "other".into(),
                tenant: Some("other".into()),
                ..NewKey::default()
            })
            .await;
        let theirs = created(
            &gw.post("/v1/responses", &other_tenant, &json!({"model": "gpt", "input": "secret"}))
                .await,
        );
        for previous in [json!("resp_unknown"), theirs["id"].clone()] {
            let reply = gw
                .post(
                    "/v1/responses",
                    &key,
                    &json!({"model": "gpt", "input": "hi", "previous_response_id": previous}),
                )
                .await;
            assert_eq!(reply.status, 400);
            let error = &reply.json()["error"];
            assert_eq!(error["param"], "previous_response_id");
            assert!(error["message"].as_str().unwrap().contains("not found"), "{error}");
        }

        // A chain longer than the bound is refused rather than read without end.
        let mut previous: Option<String> = None;
        for turn in 0..=MAX_CONVERSATION_TURNS {
            let id = format!("resp_chain{turn}");
            let document = json!({"response": {"id": id, "output": [], "previous_response_id": previous}, "input": []});
            gw.store
                .put(
                    "default",
                    &id,
                    Bytes::from(document.to_string()),
                    DEFAULT_RESPONSE_TTL_SECS,
                )
                .await
                .unwrap();
            previous = Some(id);
        }
        let too_long = gw
            .post(
                "/v1/responses",
                &key,
                &json!({"model": "gpt", "input": "hi", "previous_response_id": previous}),
            )
            .await;
        assert_eq!(too_long.status, 400);
        assert!(
            too_long.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("turns")
        );
        // One turn shorter is followed.
        let within_bound = gw
            .post(
                "/v1/responses",
                &key,
                &json!({"model": "gpt", "input": "hi", "previous_response_id": "resp_chain99"}),
            )
            .await;
        assert_eq!(within_bound.status, 200, "{:?}", within_bound.body);
    })
    .await;
}

#[tokio::test]
async fn without_a_store_responses_are_answered_but_not_kept() {
    within(30, async {
        let upstream = MockUpstream::start(&[]);
        let gw = TestGateway::start_with(
            &test_config(&upstream.url),
            std::future::pending(),
            |gateway, _, _| {
                gateway.responses = None;
            },
        )
        .await;
        let key = gw.plain_key().await;
        let response = created(
            &gw.post(
                "/v1/responses",
                &key,
                &json!({"model": "gpt", "input": "hi"}),
            )
            .await,
        );
        assert_eq!(response["store"], false);
        let path = format!("/v1/responses/{}", response["id"].as_str().unwrap());
        assert_eq!(gw.get(&path, &key).await.status, 404);
        let chained = gw
            .post(
                "/v1/responses",
                &key,
                &json!({"model": "gpt", "input": "hi", "previous_response_id": response["id"]}),
            )
            .await;
        assert_eq!(chained.status, 400);
        assert_eq!(chained.json()["error"]["param"], "previous_response_id");
        assert!(
            chained.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not have configured")
        );
    })
    .await;
}

#[tokio::test]
async fn refusals_take_openai_error_shapes_naming_the_field() {
    within(30, async {
        let (_upstream, gw, key) = gateway().await;
        let cases = [
            (
                json!({"model": "gpt", "input": "hi", "tools": [{"type": "web_search"}]}),
                400,
                "tools[0].type",
            ),
            (
                json!({"model": "gpt", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}),
                400,
                "input[0].content[0].file_id",
            ),
            (
                json!({"model": "gpt", "input": "hi", "conversation": "conv_1"}),
                400,
                "conversation",
            ),
            (
                json!({"model": "gpt", "input": "hi", "temperature": "hot"}),
                400,
                "temperature",
            ),
        ];
        for (body, status, param) in cases {
            let reply = gw.post("/v1/responses", &key, &body).await;
            assert_eq!(reply.status, status, "{body}");
            let error = &reply.json()["error"];
            assert_eq!(error["type"], "invalid_request_error", "{body}");
            assert_eq!(error["param"], param, "{body}: {error}");
        }
        let no_model = gw
            .post("/v1/responses", &key, &json!({"input": "hi"}))
            .await;
        assert_eq!(no_model.status, 400);
        assert!(
            no_model.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("missing field `model`")
        );
        let unknown = gw
            .post("/v1/responses", &key, &json!({"model": "nope", "input": "hi"}))
            .await;
        assert_eq!(unknown.status, 404);
        assert_eq!(unknown.json()["error"]["code"], "model_not_found");
        let upstream_failure = gw
            .post("/v1/responses", &key, &json!({"model": "err-500", "input": "hi"}))
            .await;
        assert!(upstream_failure.status >= 500);
        assert!(upstream_failure.json()["error"]["message"].is_string());

        let missing_key = gw.send(gw.http.post(format!("{}/v1/responses", gw.url)).json(&json!({"model": "gpt", "input": "hi"}))).await;
        assert_eq!(missing_key.status, 401);
        assert_eq!(missing_key.json()["error"]["type"], "invalid_request_error");
        let (embed_only, _) = gw
            .key(NewKey {
                name: "embed-only".into(),
                scopes: vec![Scope::Embeddings],
                ..NewKey::default()
            })
            .await;
        for reply in [
            gw.post("/v1/responses", &embed_only, &json!({"model": "gpt", "input": "hi"})).await,
            gw.get("/v1/responses/resp_1", &embed_only).await,
            gw.delete("/v1/responses/resp_1", &embed_only).await,
        ] {
            assert_eq!(reply.status, 403);
            assert_eq!(reply.json()["error"]["code"], "insufficient_scope");
        }
    })
    .await;
}
