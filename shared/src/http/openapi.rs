//! `GET /openapi.json`: the OpenAPI 3.1 document of every route in `router`, derived from the
//! handlers' `#[utoipa::path]` attributes and the wire types' `ToSchema`.
//!
//! The binaries serve `openapi.json`, committed beside this file, rather than generate it: the
//! generated schema code is about 0.5 MB of every Lambda binary, for a document that only changes
//! with the code. A test generates the document and fails when the committed one differs
//! (`UPDATE_OPENAPI=1 cargo test -p gateway --lib openapi` rewrites it). Other tests check its
//! operations against the route table in `mod.rs` and against the `.route(..)` calls that build
//! the router, so neither can drift from it.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::ToSchema;

#[cfg(test)]
use super::{admin, batch, collections, handlers, messages, responses, usage};
use crate::batch::files_api::FilePurpose;
use crate::error::ErrorBody;

/// The document the binaries serve, as committed (checked against the generated one by a test).
const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "AI gateway",
        description = "An OpenAI-compatible gateway: chat completions (also as Anthropic's \
                       Messages API and OpenAI's Responses API), embeddings, files and \
                       batches, collections for retrieval, and key administration. Every route \
                       but `/health` and `/openapi.json` needs a gateway key as a bearer token."
    ),
    paths(
        handlers::health,
        openapi_json,
        handlers::metrics,
        handlers::list_models,
        handlers::chat_completions,
        messages::create_message,
        messages::count_tokens,
        responses::create_response,
        responses::get_response,
        responses::delete_response,
        handlers::embeddings,
        admin::create_key,
        admin::list_keys,
        admin::revoke_key,
        admin::update_key,
        admin::rotate_key,
        admin::list_audit,
        usage::admin_usage,
        usage::own_usage,
        batch::create_file,
        batch::list_files,
        batch::get_file,
        batch::delete_file,
        batch::file_content,
        batch::create_upload,
        batch::add_upload_part,
        batch::complete_upload,
        batch::cancel_upload,
        batch::create_batch,
        batch::list_batches,
        batch::get_batch,
        batch::cancel_batch,
        batch::batch_results,
        collections::create_collection,
        collections::list_collections,
        collections::get_collection,
        collections::delete_collection,
        collections::add_documents,
        collections::get_document,
        collections::delete_document,
        collections::query,
        collections::get_job,
    ),
    modifiers(&GatewayKey),
    security(("gateway_key" = []))
)]
struct ApiDoc;

/// The bearer scheme every keyed route names (`Authorization: Bearer gw-...`).
#[cfg(test)]
struct GatewayKey;

#[cfg(test)]
impl utoipa::Modify for GatewayKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "gateway_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A gateway key (`gw-...`), made with the admin API or CLI",
                    ))
                    .build(),
            ),
        );
    }
}

/// The error responses of every keyed OpenAI-style route, named once in each path's
/// `responses(..)`.
#[derive(utoipa::IntoResponses)]
#[expect(dead_code, reason = "describes responses; never built")]
pub(crate) enum OpenAiErrors {
    #[response(status = "4XX", description = "Refused: OpenAI's error shape")]
    Refused(ErrorBody<'static>),
    #[response(
        status = "5XX",
        description = "Failed upstream or in the gateway: OpenAI's error shape"
    )]
    Failed(ErrorBody<'static>),
}

/// The multipart form of `POST /v1/files` (read by `batch::create_file`; documented only).
#[derive(ToSchema)]
#[expect(dead_code, reason = "describes a multipart form; never built")]
pub(crate) struct FileUpload {
    /// The file (for batches: JSONL, one request per line).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    purpose: FilePurpose,
}

/// The multipart form of `POST /v1/uploads/{id}/parts` (documented only).
#[derive(ToSchema)]
#[expect(dead_code, reason = "describes a multipart form; never built")]
pub(crate) struct UploadPart {
    #[schema(value_type = String, format = Binary)]
    data: Vec<u8>,
}

/// This document (no key needed).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This OpenAPI document (no key)",
    security(),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object),
    )
)]
pub(crate) async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOCUMENT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;
    use utoipa::OpenApi;

    use super::*;

    type Operations = BTreeSet<(String, String)>;

    /// The committed document, as served.
    fn document() -> Value {
        serde_json::from_str(DOCUMENT).unwrap()
    }

    /// The document the code describes.
    fn generated() -> Value {
        let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        camel_case_links(&mut document);
        document
    }

    /// utoipa 5.5 writes a Link object's fields in snake case (`operation_id`); OpenAPI and the
    /// fuzzer's stateful phase read `operationId` and `requestBody`.
    fn camel_case_links(document: &mut serde_json::Value) {
        let Some(paths) = document
            .get_mut("paths")
            .and_then(serde_json::Value::as_object_mut)
        else {
            return;
        };
        let links = paths
            .values_mut()
            .filter_map(serde_json::Value::as_object_mut)
            .flat_map(|item| item.values_mut())
            .filter_map(|operation| operation.get_mut("responses"))
            .filter_map(serde_json::Value::as_object_mut)
            .flat_map(|responses| responses.values_mut())
            .filter_map(|response| response.get_mut("links"))
            .filter_map(serde_json::Value::as_object_mut)
            .flat_map(|links| links.values_mut())
            .filter_map(serde_json::Value::as_object_mut);
        for link in links {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }

    #[test]
    fn the_committed_document_is_the_generated_one() {
        let generated = generated();
        if generated == document() {
            return;
        }
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/openapi.json");
            let text = serde_json::to_string_pretty(&generated).unwrap();
            std::fs::write(path, text + "\n").unwrap();
            return;
        }
        panic!(
            "shared/src/http/openapi.json is not the document the code describes: \
             run `UPDATE_OPENAPI=1 cargo test -p gateway --lib openapi` and commit it"
        );
    }

    /// `(METHOD, path)` of every operation in the document.
    fn documented() -> Operations {
        let doc = document();
        let mut operations = Operations::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
        operations
    }

    /// Axum's `{*id}` (the rest of the path) is OpenAPI's `{id}`.
    fn openapi_path(axum_path: &str) -> String {
        axum_path.replace("{*", "{")
    }

    /// The `.route("path", get(..).post(..))` calls in `router` (the source of `mod.rs`).
    fn routed() -> Operations {
        let source = include_str!("mod.rs");
        let body = source
            .split("pub fn router(")
            .nth(1)
            .unwrap()
            .split("\npub fn metrics_router")
            .next()
            .unwrap();
        let mut operations = Operations::new();
        for call in body.split(".route(").skip(1) {
            let path = call.split('"').nth(1).unwrap();
            // The method routers: up to the call's closing parenthesis.
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .unwrap()
                .0;
            let methods = &call[..end];
            for method in ["get", "post", "delete", "put", "patch"] {
                let called = methods.match_indices(&format!("{method}(")).any(|(at, _)| {
                    at == 0 || !methods[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if called {
                    operations.insert((method.to_uppercase(), openapi_path(path)));
                }
            }
        }
        operations
    }

    /// The rows of the route table in `mod.rs`'s doc comment (what the template mirrors).
    fn tabled() -> Operations {
        let mut operations = Operations::new();
        for line in include_str!("mod.rs").lines() {
            let Some(row) = line.strip_prefix("//! | ") else {
                continue;
            };
            let cells: Vec<&str> = row.split(" | ").collect();
            if cells.len() < 3 || cells[0] == "method" || cells[0].starts_with("---") {
                continue;
            }
            let path = openapi_path(cells[1].trim_matches('`'));
            for method in cells[0].split(", ") {
                operations.insert((method.to_owned(), path.clone()));
            }
        }
        operations
    }

    #[test]
    fn every_route_of_the_router_is_documented_and_nothing_else() {
        let routed = routed();
        assert!(
            routed.len() > 30,
            "the route scan found too few: {routed:?}"
        );
        assert_eq!(documented(), routed);
    }

    #[test]
    fn the_route_table_in_the_module_doc_matches_the_document() {
        assert_eq!(documented(), tabled());
    }

    #[test]
    fn keyed_routes_name_the_bearer_scheme_and_the_open_ones_none() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"]["gateway_key"]["scheme"],
            "bearer"
        );
        assert_eq!(doc["security"], serde_json::json!([{"gateway_key": []}]));
        for open in ["/health", "/openapi.json"] {
            assert_eq!(doc["paths"][open]["get"]["security"], serde_json::json!([]));
        }
        let chat = &doc["paths"]["/v1/chat/completions"]["post"];
        assert!(chat.get("security").is_none());
        assert!(chat["responses"]["200"]["headers"]["x-gateway-cache"].is_object());
    }

    #[test]
    fn request_bodies_are_the_wire_types() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let required = |name: &str| schemas[name]["required"].clone();
        assert_eq!(
            required("ChatRequest"),
            serde_json::json!(["model", "messages"])
        );
        assert_eq!(
            required("EmbeddingRequest"),
            serde_json::json!(["model", "input"])
        );
        assert!(schemas["Error"].is_object() && schemas["NewKey"].is_object());
    }

    #[test]
    fn keyed_operations_share_the_error_responses() {
        let doc = document();
        let error = serde_json::json!({"$ref": "#/components/schemas/Error"});
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if path == "/health" || path == "/openapi.json" || path.starts_with("/v1/messages")
                {
                    continue;
                }
                for range in ["4XX", "5XX"] {
                    assert_eq!(
                        operation["responses"][range]["content"]["application/json"]["schema"],
                        error,
                        "{method} {path} {range}"
                    );
                }
            }
        }
    }

    #[test]
    fn string_enums_list_what_the_handlers_accept() {
        let doc = document();
        let values = |name: &str| doc["components"]["schemas"][name]["enum"].clone();
        assert_eq!(
            values("BatchEndpoint"),
            serde_json::json!(crate::batch::input::ENDPOINTS)
        );
        assert_eq!(
            values("CompletionWindow"),
            serde_json::json!([crate::batch::batches_api::COMPLETION_WINDOW])
        );
        assert_eq!(
            values("FilePurpose"),
            serde_json::json!([crate::batch::files_api::PURPOSE_BATCH])
        );
        assert_eq!(values("KeyTier"), serde_json::json!(crate::keys::TIERS));
    }

    /// Every link names an operation of the document and fills exactly its path parameters, so
    /// the fuzzer's stateful phase can reach the `{id}` routes with real ids.
    #[test]
    fn response_links_reach_existing_operations_with_their_path_parameters() {
        let doc = document();
        let mut operations = std::collections::BTreeMap::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for operation in item.as_object().unwrap().values() {
                let id = operation["operationId"].as_str().unwrap().to_owned();
                let mut wanted: Vec<String> = path
                    .split('{')
                    .skip(1)
                    .map(|rest| rest.split('}').next().unwrap().to_owned())
                    .collect();
                wanted.sort();
                operations.insert(id, wanted);
            }
        }
        let mut targets = BTreeSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                for response in operation["responses"].as_object().unwrap().values() {
                    let Some(links) = response.get("links") else {
                        continue;
                    };
                    for link in links.as_object().unwrap().values() {
                        let target = link["operationId"].as_str().unwrap();
                        let mut given: Vec<String> = link["parameters"]
                            .as_object()
                            .unwrap()
                            .keys()
                            .cloned()
                            .collect();
                        given.sort();
                        assert_eq!(Some(&given), operations.get(target), "{target}");
                        targets.insert(target.to_owned());
                    }
                }
            }
        }
        for id_route in [
            "get_file",
            "delete_file",
            "file_content",
            "add_upload_part",
            "complete_upload",
            "cancel_upload",
            "get_batch",
            "cancel_batch",
            "batch_results",
            "get_collection",
            "delete_collection",
            "add_documents",
            "query",
            "get_document",
            "delete_document",
            "get_job",
            "update_key",
            "rotate_key",
            "revoke_key",
        ] {
            assert!(targets.contains(id_route), "no link reaches {id_route}");
        }
    }
}
