#!/usr/bin/env python3
"""Contract test between infra/template.yaml and the Rust code: fails when they drift.

For every Lambda function of the template (an `AWS::Serverless::Function` whose
`Metadata.BuildProperties.Binary` names a `[[bin]]` of a crate under `functions/`) it checks:

1. every environment variable the function's code reads is set for it by the template (Globals
   plus the function's own `Environment`), unless the Lambda runtime sets it itself
   (`LAMBDA_RUNTIME`), it is AWS SDK configuration whose default is right on Lambda
   (`SDK_SETTINGS`), or it is listed in `OPTIONAL_ON_LAMBDA` with a reason; reads in code listed
   in `NOT_EXECUTED` (below) do not count;
2. every variable that names a table, queue, bucket, secret or usage plan (`RESOURCE_VARIABLES`)
   is set to a `Ref`/`GetAtt` of a resource of the right type that exists in the template;
3. the function's role allows every AWS action its code calls, on the resource the call targets;
   calls the function reaches but never executes on Lambda are listed in `NOT_EXECUTED` with a
   reason. Also: the role can write the function's logs, and a role polled by an SQS event source
   can receive and delete from that queue.

And for the route table (see `check_routes`): every route of the shared axum router (method and
path) is a path and method of each REST API that fronts it, integrated with a function that serves
that route (the `Routes` variant its `main` names: the route groups of that variant's arm in
`http::router_for`), streamed and behind the key authorizer; and every such API operation is a route the
router serves. Deliberate differences are listed in `ROUTES_NOT_ON_API`, `ROUTERS_NOT_ON_LAMBDA`,
`API_WITHOUT_ROUTE` and `PUBLIC_OPERATIONS`, each with its reason.

How the code side is read (honest but simple; no compiler involved):

- Sources. A function compiles its own `functions/<crate>/src/**/*.rs` and the modules of the
  shared crate (`shared/src`, package `gateway`) it can reach. A module is a file
  (`shared/src/a/b.rs` or `shared/src/a/b/mod.rs` is `gateway::a::b`). Reachability follows
  paths: `gateway::a::b::...` in the function's sources, and `crate::...`, `super::...`,
  `self::...` or a declared child module (`mod b;` then `b::...`) in a shared file, `use` trees
  with braces included; the longest prefix of a path that is a module file is the module reached,
  and reaching a module does not reach its parent or children. Within the reached modules, only
  the items the function can reach count: a free function or const/static is reached when its
  name appears in the function's own sources, in a reached module's code outside items (struct
  definitions, `use`, ...) or in another reached item; an `impl` block (all its methods) when the
  name of its type does. So a module imported for one trait does not bring along the SDK calls of
  every type in it. `#[cfg(test)]` items are removed before anything is read, and comments are
  ignored. Names are matched as words, so this errs on the side of reaching too much.
- Environment variables. String literals passed to `var(`, `var_os(`, `env(`, `lookup(`,
  `getenv(` (which covers `std::env::var` and the `env`/`lookup` helpers the code passes around),
  `env = "..."` (clap), constants `const X: &str = "NAME"` passed to those calls, every literal
  that is exactly `"GATEWAY_..."` or `"AWS_..."`, and `RUST_LOG` where
  `EnvFilter::(try_)from_default_env` is used. Names that come from the gateway's TOML config
  (`api_key_env`) are data, not code, and are not seen here.
- AWS calls. In a file that uses an `aws_sdk_<service>` crate, a method call without arguments on
  a receiver named `client` (`client.get_item()`, `self.client.converse()`,
  `self.client().await?.x()`) is an SDK operation; `SDK_OPERATIONS` maps it to IAM actions and the
  kind of resource it acts on, and an operation missing from the map is itself reported. DynamoDB
  transactions have no IAM action of their own: their parts are authorized as PutItem,
  UpdateItem, DeleteItem and ConditionCheckItem (AWS, "Using IAM with DynamoDB transactions"), so
  the `Put::builder()`, `Update::builder()`, ... of the parts count as calls of those actions.
- Which table. The `.table_name(X)` of the call's builder chain names the table: `self.field` is
  followed through the struct's constructor (`field: config.other.clone()`) to an assignment that
  holds a variable name (`other: table("GATEWAY_..._TABLE")?`); a plain identifier that is a
  parameter of the enclosing `fn` is followed to that function's call sites. The variable's value
  in the template names the resource whose ARN the role must allow. When no table can be
  determined, the action must be allowed on at least one table the function names.

- Routes. Every `.route("/path", <method router>)` in `shared/src/http.rs` and in every `.rs` file
  under `shared/src/http/` (override with --router-source or CONTRACT_ROUTER_SOURCES), outside
  `#[cfg(test)]` and comments, calls spanning lines included. The path is a string literal or a
  `const` of those files; the methods are the calls at the top level of the second argument:
  `get(a)`, `post(a).get(b)`, `axum::routing::delete(c)`, `.put(d)`, `on(MethodFilter::X, e)`,
  `any(f)` (= every method) and their `_service` forms; `.route_service` is every method. Paths are
  axum's (`{id}`, `{*rest}`; 0.7's `:id`, `*rest` too). `.nest(` and `.nest_service(` are reported,
  not followed: a nested router's prefix is not read. HEAD is implied by GET (axum) and never
  required. A function serves the router when its reachable code names `http::router`.
- API paths. The `paths` of each `AWS::ApiGateway::RestApi` body, resolved the way API Gateway
  picks a resource (a literal segment before `{param}`, before a trailing `{proxy+}`), then the
  method or `x-amazon-apigateway-any-method`; an integration's function is read from its
  (evaluated) Lambda URI.

Template side: the template is translated to plain CloudFormation (infra/translate.py, offline)
so SAM's Globals, generated roles and expanded policy templates are what is checked; intrinsic
functions are evaluated with the parameters' defaults (override with --parameter NAME=VALUE),
IAM wildcards are honoured, Deny statements win, and of the AWS managed policies only those in
`MANAGED_POLICIES` are known. The report also notes, without failing, variables the template sets
but the code does not read. Least privilege, the reverse of 3.: every action a role allows, on
every resource it names, is one its function's code calls there (or its event source polls), on
no resource of the template (or outside it) that the code does not act on; Bedrock models are
the ARNs the `BedrockModelArns` parameter lists. And only the function serving the router's
admin routes (`Routes::Admin`) may create, change or delete keys (`check_key_writers`).

Usage: contract.py [--root DIR] [--template FILE] [--translated FILE] [--parameter NAME=VALUE]...
                   [--router-source PATH]... [--quiet]
Exit status 0 when code and template agree, 1 on drift, 2 when the inputs cannot be read.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import json
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------- allow-lists

# Set by the Lambda runtime in every function's environment (or in the SDK's own defaults).
LAMBDA_RUNTIME = {
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_LAMBDA_RUNTIME_API", "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_XRAY_CONTEXT_MISSING", "AWS_XRAY_DAEMON_ADDRESS", "_X_AMZN_TRACE_ID", "_HANDLER",
    "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "TZ",
}
LAMBDA_RUNTIME_PREFIXES = ("AWS_LAMBDA_",)

# AWS SDK settings that are optional everywhere and whose defaults are right on Lambda (they
# exist for emulators and laptops).
SDK_SETTINGS = {
    "AWS_ENDPOINT_URL": "SDK endpoint override, for emulators (moto) only",
    "AWS_EC2_METADATA_DISABLED": "keeps the SDK off the EC2 metadata service in tests; Lambda credentials come from the environment",
    "AWS_PROFILE": "shared-config profile, for laptops",
    "AWS_CONFIG_FILE": "shared-config file, for laptops",
    "AWS_SHARED_CREDENTIALS_FILE": "shared-credentials file, for laptops",
}
SDK_SETTING_PREFIXES = {"AWS_ENDPOINT_URL_": "per-service SDK endpoint override, for emulators only"}

# Variables a Lambda function may read but the template need not set: the code has a default
# that is right on Lambda. Each with its reason.
OPTIONAL_ON_LAMBDA = {
    "GATEWAY_LISTEN": "gateway-local only: address to listen on",
    "GATEWAY_DATA_DIR": "gateway-local only: embedded store directory",
    "GATEWAY_BACKEND": "gateway-local only: embedded or aws backends",
    "GATEWAY_ADMIN_KEY": "optional bootstrap admin key (a secret: not a template parameter); unset means "
    "no admin key is made at start-up, and admin keys come from `gateway-local keys create --admin`",
    "GATEWAY_DYNAMODB_TIMEOUT_MS": "raises the DynamoDB call timeouts for slow emulators; DynamoDB itself needs the 2 s / 5 s defaults",
    "GATEWAY_KEY_CACHE_TTL_MS": "authorizer key cache TTL; the default (1000 ms) is the router's server.key_cache_ttl_ms",
    "OPENAI_API_KEY": "read by the built-in config only, to offer OpenAI models when set; "
    "provider credentials on Lambda belong in the provider secret, never in plain template parameters",
    "GATEWAY_BATCH_CONCURRENCY": "items one batch invocation runs at once; the default (8) suits the default BatchSize",
    "GATEWAY_BATCH_MAX_DEFERRALS": "times a rate-limited batch item is re-sent with a delay; the default (100) is ample",
    "GATEWAY_BATCH_VISIBILITY_SECS": "gateway-local only: the embedded queue's visibility timeout (SQS has its own)",
    "ANTHROPIC_API_KEY": "read by the built-in config only, to offer Anthropic models when set (see OPENAI_API_KEY)",
    "GATEWAY_RETRIEVAL_CACHE_TTL_S": "retrieval result cache TTL; the default (300 s) suits, and a write to a collection invalidates it anyway",
    "GATEWAY_INGEST_QUEUE_OVER_CHUNKS": "inline ingest limit before a job is queued; the default (256 chunks) fits API Gateway's 29 s",
    "GATEWAY_INGEST_QUEUE_OVER_BYTES": "inline ingest limit before a job is queued; the default (1 MiB) fits API Gateway's 29 s",
    "GATEWAY_INGEST_PREFIX": "the upload prefix: only the ingest function acts on uploads, and the template sets it there "
    "(from IngestUploadPrefix); the chat and batch functions never read an upload",
}

# Variables the template may set to "" because the code treats empty as unset.
EMPTY_MEANS_DEFAULT = {
    "GATEWAY_ORIGIN_VERIFY": "set only with EnableCloudFront (the distribution's origin header value); "
    "unset means no CloudFront front, so Function URL requests are not checked for it",
    "GATEWAY_CONFIG": "empty = the built-in config (sam build packages only the binary, so there is no file by default)",
}

# Variables that name AWS resources: (name pattern, accepted resource types, what it is).
# A parameter is accepted in place of a resource when a resource of an accepted type uses the
# same parameter (a name such as VectorIndexName), or when the parameter's AllowedPattern is an
# ARN of that service (an existing resource passed in, such as ProviderSecretArn).
RESOURCE_VARIABLES = [
    (re.compile(r"_TABLE$"), {"AWS::DynamoDB::Table"}, "DynamoDB table"),
    (re.compile(r"_(QUEUE|DLQ)(_URL)?$"), {"AWS::SQS::Queue"}, "SQS queue"),
    (re.compile(r"_VECTOR_BUCKET$"), {"AWS::S3Vectors::VectorBucket"}, "S3 vector bucket"),
    (re.compile(r"_VECTOR_INDEX$"), {"AWS::S3Vectors::Index"}, "S3 Vectors index"),
    (re.compile(r"_BUCKET$"), {"AWS::S3::Bucket"}, "S3 bucket"),
    (re.compile(r"_SECRET(_ARN)?$"), {"AWS::SecretsManager::Secret"}, "Secrets Manager secret"),
    (re.compile(r"_USAGE_PLAN_IDS$"), {"AWS::ApiGateway::UsagePlan"}, "API Gateway usage plans"),
]

# Calls a function can reach (by the module graph) but never executes on Lambda, by the Rust
# function that contains the call: "fn", "Type::fn" or "Type::*". Key "*" applies to every
# function. Keep the reasons true: when one stops being true, delete the entry.
NOT_EXECUTED = {
    "*": {
        "create_table_with_keys": "tables are the template's on AWS; only gateway-local's create-tables and tests create them",
        "enable_ttl": "tables are the template's on AWS; only gateway-local's create-tables and tests turn on their TTL",
    },
    "authorizer": {
        "DynamoKeyStore::insert": "the authorizer only reads keys (Authenticator -> KeyStore::get_by_hash)",
        "DynamoKeyStore::upsert": "the authorizer never writes keys (it does not apply GATEWAY_ADMIN_KEY)",
        "DynamoKeyStore::list": "the authorizer never lists keys",
        "DynamoKeyStore::update": "the authorizer never changes keys (update serves revoke and PATCH, admin routes of the chat function)",
        "DynamoAuditLog::*": "Backends::aws_from_env builds an audit log the authorizer never writes or reads (admin routes only)",
        "DynamoKeyStore::read_key_attr": "used by upsert, revoke and get_by_id (the batch worker's) only",
        "transact_put": "builds the parts of key writes (insert, upsert)",
        "transact_delete": "builds the parts of key writes (upsert)",
        "CacheStore::get": "Backends::aws_from_env builds a cache backend the authorizer never calls",
        "CacheStore::put": "Backends::aws_from_env builds a cache backend the authorizer never calls",
        "DynamoLimiter::*": "Backends::aws_from_env builds a limiter the authorizer never calls",
        "DynamoCacheStore::batch_get": "Backends::aws_from_env builds a cache backend the authorizer never calls (CacheStore::get_many)",
    },
    "ingest": {
        "DynamoKeyStore::insert": "the ingest function only reads keys (a collection owner's, for billing uploads)",
        "DynamoKeyStore::upsert": "the ingest function never writes keys",
        "DynamoKeyStore::list": "the ingest function never lists keys",
        "DynamoKeyStore::update": "the ingest function never changes keys (update serves revoke and PATCH, admin routes of the chat function)",
        "transact_put": "builds the parts of key writes (insert, upsert)",
        "transact_delete": "builds the parts of key writes (upsert)",
        "BatchBackends::aws": "Setup::load(.., BatchPart::Left): the ingest function builds no batch backends",
        "BatchSettings::from_lookup": "read by BatchBackends::aws only, which the ingest function never calls",
        "DynamoBatchStore::*": "no batch backends in the ingest function (BatchPart::Left)",
        "SqsQueue::send": "only the chat function enqueues ingest jobs; the ingest function consumes them",
        "SqsQueue::dead_letter": "ingest jobs reach the dead-letter queue through SQS's redrive, never sent by code",
        "SqsQueue::receive": "Lambda's event source mapping receives for the ingest function; receive serves gateway-local's worker and tests",
        "SqsQueue::delete": "Lambda's event source mapping deletes what the ingest function handled",
        "S3Bodies::put": "the ingest function reads uploads and queued jobs' documents; only the chat function writes job documents",
        "BedrockProvider::chat_stream": "the ingest function only embeds (InvokeModel); it never streams a chat answer",
    },
    "batch": {
        "DynamoKeyStore::insert": "the batch worker only reads keys (KeyStore::get_by_id)",
        "DynamoKeyStore::upsert": "the batch worker never writes keys",
        "DynamoKeyStore::list": "the batch worker never lists keys",
        "DynamoKeyStore::update": "the batch worker never changes keys (update serves revoke and PATCH, admin routes of the chat function)",
        "transact_put": "builds the parts of key writes (insert, upsert)",
        "transact_delete": "builds the parts of key writes (upsert)",
        "SqsQueue::receive": "Lambda's event source mapping receives for the batch function; receive serves gateway-local's worker and tests",
        "SqsQueue::delete": "Lambda's event source mapping deletes what the batch function handled",
    },
    "chat": {
        "DynamoKeyStore::insert": "keys are created by the admin function (Routes::Admin); the chat function serves Routes::DataPlane",
        "DynamoKeyStore::upsert": "the chat function never writes keys (GATEWAY_ADMIN_KEY is applied by the admin function)",
        "DynamoKeyStore::list": "listing keys is an admin route, served by the admin function",
        "DynamoKeyStore::update": "revoke and PATCH are admin routes, served by the admin function",
        "DynamoKeyStore::rotate": "rotation is an admin route, served by the admin function",
        "DynamoKeyStore::read_key_attr": "used by upsert, revoke and get_by_id (the batch worker's) only",
        "DynamoKeyStore::read_current": "used by the key writes (update, rotate) only",
        "transact_put": "builds the parts of key writes (insert, upsert), the admin function's",
        "transact_delete": "builds the parts of key writes (upsert), the admin function's",
        "DynamoAuditLog::*": "Backends::aws builds an audit log the chat function never writes or reads (admin routes only)",
        "SqsQueue::receive": "Lambda's event source mapping receives for the batch function; receive serves gateway-local's worker and tests",
        "SqsQueue::delete": "Lambda's event source mapping deletes what the batch function handled",
        "SqsQueue::dead_letter": "only the batch worker dead-letters; the chat function enqueues batches",
        "DynamoUsageStore::every_key_page": "the usage report over every key is an admin route "
        "(GET /v1/admin/usage), served by the admin function; GET /v1/usage always names the calling key",
    },
}

NOT_EXECUTED["admin"] = {
    **{name: "the admin function builds Backends::aws only: no batch, ingest, files, queue or vector backends"
       for name in ("BatchBackends::*", "BatchSettings::*", "IngestBackends::*", "IngestSettings::*",
                    "S3VectorStore::*", "DynamoBatchStore::*", "DynamoCollectionStore::*", "S3Bodies::*",
                    "SqsQueue::*")},
    "BedrockProvider::*": "the admin function never calls a model (it keeps the built-in mock models)",
    "DynamoCacheStore::*": "the admin routes answer no model request: the cache is never read or written",
    **{f"DynamoLimiter::{name}": "the admin routes read spend only (spent_usd): no request is admitted or settled"
       for name in ("admit", "write", "update_item", "settle_counters", "start_usage_day",
                    "copy_day_row", "record_usage")},
}

# --------------------------------------------------------------------------- route table

# Why the REST API lists every route explicitly instead of one `/{proxy+}` catch-all behind the
# authorizer: integrations differ per route (chat and embeddings stream with an integration
# timeout of up to 15 minutes instead of 29 s, /health needs no key), and per-route method settings (throttling, caching) need a resource
# of their own; an unknown path is also answered by API Gateway (MISSING_AUTHENTICATION_TOKEN,
# mapped to 404) without invoking the authorizer or a Lambda. The price is that a route added
# to the router must be added to the API too, or it is a 404 on AWS that no local test sees:
# `check_routes` turns that into drift. Every entry below is a deliberate difference, with its
# reason; an entry that no longer matches anything is itself reported, so delete it then.

# Router routes (METHOD, path as written in the router) that the API does not serve.
ROUTES_NOT_ON_API = {
    ("GET", "/metrics"): "Prometheus text of one process's in-memory registry: on Lambda that is one execution "
    "environment's counters, a random one per request, so operators read the EMF metrics in CloudWatch "
    "instead (gateway-local serves it, with an admin key or on server.metrics_listen)",
}

# Functions under shared/src/http* that build a router the Lambda functions never serve: their
# routes are not compared with the API.
ROUTERS_NOT_ON_LAMBDA = {
    "metrics_router": "gateway-local's keyless /metrics listener on its own address (server.metrics_listen)",
}

# Operations (METHOD or ANY, API path) integrated with the router's function that the router
# does not serve: requests reach the function and get its 404.
API_WITHOUT_ROUTE: dict[tuple[str, str], str] = {}

# Operations integrated with the router's function that do not require the key authorizer.
PUBLIC_OPERATIONS = {
    ("GET", "/health"): "liveness probe for uptime checks; answers {\"status\":\"ok\"} and needs no key, as in the router",
    ("GET", "/openapi.json"): "the API's OpenAPI document, generated from the router's types; public like the OpenAI spec itself, and needs no key, as in the router",
}

# --------------------------------------------------------------------------- AWS operations

# SDK operation -> [(IAM action, resource kind)]. Kinds: "table" (DynamoDB, resolved per call),
# "secret", "queue", "bucket", "object", "vector-index", "bedrock-model", "*", or an API Gateway
# path ("/apikeys/{id}", with {usage_plan} taken from the function's usage-plan variable).
SDK_OPERATIONS = {
    "dynamodb": {
        "get_item": [("dynamodb:GetItem", "table")],
        "put_item": [("dynamodb:PutItem", "table")],
        "update_item": [("dynamodb:UpdateItem", "table")],
        "delete_item": [("dynamodb:DeleteItem", "table")],
        "query": [("dynamodb:Query", "table")],
        "scan": [("dynamodb:Scan", "table")],
        "batch_get_item": [("dynamodb:BatchGetItem", "table")],
        "batch_write_item": [("dynamodb:BatchWriteItem", "table")],
        # Authorized per part: see DYNAMODB_TRANSACTION_PARTS.
        "transact_write_items": [],
        "transact_get_items": [],
        "create_table": [("dynamodb:CreateTable", "table")],
        "delete_table": [("dynamodb:DeleteTable", "table")],
        "update_table": [("dynamodb:UpdateTable", "table")],
        "describe_table": [("dynamodb:DescribeTable", "table")],
        "describe_time_to_live": [("dynamodb:DescribeTimeToLive", "table")],
        "update_time_to_live": [("dynamodb:UpdateTimeToLive", "table")],
        "list_tables": [("dynamodb:ListTables", "*")],
        "wait_until_table_exists": [("dynamodb:DescribeTable", "table")],
        "wait_until_table_not_exists": [("dynamodb:DescribeTable", "table")],
    },
    "apigateway": {
        "create_api_key": [("apigateway:POST", "/apikeys")],
        "get_api_keys": [("apigateway:GET", "/apikeys")],
        "get_api_key": [("apigateway:GET", "/apikeys/{id}")],
        "update_api_key": [("apigateway:PATCH", "/apikeys/{id}")],
        "delete_api_key": [("apigateway:DELETE", "/apikeys/{id}")],
        "create_usage_plan_key": [("apigateway:POST", "/usageplans/{usage_plan}/keys")],
        "get_usage_plan_keys": [("apigateway:GET", "/usageplans/{usage_plan}/keys")],
        "get_usage_plan_key": [("apigateway:GET", "/usageplans/{usage_plan}/keys/{id}")],
        "delete_usage_plan_key": [("apigateway:DELETE", "/usageplans/{usage_plan}/keys/{id}")],
        "get_usage": [("apigateway:GET", "/usageplans/{usage_plan}/usage")],
    },
    "bedrockruntime": {
        "converse": [("bedrock:InvokeModel", "bedrock-model")],
        "converse_stream": [("bedrock:InvokeModelWithResponseStream", "bedrock-model")],
        "invoke_model": [("bedrock:InvokeModel", "bedrock-model")],
        "invoke_model_with_response_stream": [("bedrock:InvokeModelWithResponseStream", "bedrock-model")],
        "apply_guardrail": [("bedrock:ApplyGuardrail", "*")],
    },
    "secretsmanager": {
        "get_secret_value": [("secretsmanager:GetSecretValue", "secret")],
        "describe_secret": [("secretsmanager:DescribeSecret", "secret")],
        "batch_get_secret_value": [("secretsmanager:BatchGetSecretValue", "*"), ("secretsmanager:GetSecretValue", "secret")],
    },
    "ssm": {
        "get_parameter": [("ssm:GetParameter", "*")],
        "get_parameters": [("ssm:GetParameters", "*")],
        "get_parameters_by_path": [("ssm:GetParametersByPath", "*")],
    },
    "sqs": {
        "send_message": [("sqs:SendMessage", "queue")],
        "send_message_batch": [("sqs:SendMessage", "queue")],
        "receive_message": [("sqs:ReceiveMessage", "queue")],
        "delete_message": [("sqs:DeleteMessage", "queue")],
        "delete_message_batch": [("sqs:DeleteMessage", "queue")],
        "change_message_visibility": [("sqs:ChangeMessageVisibility", "queue")],
        "change_message_visibility_batch": [("sqs:ChangeMessageVisibility", "queue")],
        "get_queue_attributes": [("sqs:GetQueueAttributes", "queue")],
        "get_queue_url": [("sqs:GetQueueUrl", "queue")],
    },
    "s3": {
        "get_object": [("s3:GetObject", "object")],
        "head_object": [("s3:GetObject", "object")],
        "put_object": [("s3:PutObject", "object")],
        "copy_object": [("s3:GetObject", "object"), ("s3:PutObject", "object")],
        "delete_object": [("s3:DeleteObject", "object")],
        "delete_objects": [("s3:DeleteObject", "object")],
        "list_objects_v2": [("s3:ListBucket", "bucket")],
        "create_multipart_upload": [("s3:PutObject", "object")],
        "upload_part": [("s3:PutObject", "object")],
        "complete_multipart_upload": [("s3:PutObject", "object")],
        "abort_multipart_upload": [("s3:AbortMultipartUpload", "object")],
    },
    "s3vectors": {
        "put_vectors": [("s3vectors:PutVectors", "vector-index")],
        "get_vectors": [("s3vectors:GetVectors", "vector-index")],
        "delete_vectors": [("s3vectors:DeleteVectors", "vector-index")],
        "list_vectors": [("s3vectors:ListVectors", "vector-index")],
        "query_vectors": [("s3vectors:QueryVectors", "vector-index"), ("s3vectors:GetVectors", "vector-index")],
        "get_index": [("s3vectors:GetIndex", "vector-index")],
    },
    "cloudwatch": {"put_metric_data": [("cloudwatch:PutMetricData", "*")]},
}

# Parts of DynamoDB transactions (`aws_sdk_dynamodb::types::X::builder()`).
DYNAMODB_TRANSACTION_PARTS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}

# Methods called on an SDK client that are not operations.
CLIENT_METHODS = {"clone", "config", "as_ref", "to_owned", "get_or_init", "get_or_try_init", "get", "set"}

# What the SDK's AWS managed policies grant (only those a Lambda role here may use).
MANAGED_POLICIES = {
    "AWSLambdaBasicExecutionRole": [
        {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"], "Resource": "*"}
    ],
    "AWSLambdaSQSQueueExecutionRole": [
        {"Effect": "Allow", "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
                                         "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"], "Resource": "*"}
    ],
}

PARTITION, REGION, ACCOUNT, STACK = "aws", "us-east-1", "123456789012", "contract-stack"
OTHER_REGION = "us-west-2"

# The template parameter listing the Bedrock model (and inference profile) ARNs the gateway config
# uses: the models are configured in the gateway's TOML, which the template cannot read, so the
# operator names them here and the roles allow exactly these.
BEDROCK_MODELS_PARAMETER = "BedrockModelArns"
# A model no configuration names, in the stack's region and another: no role may invoke it.
UNCONFIGURED_MODELS = [f"arn:{PARTITION}:bedrock:{r}::foundation-model/contract.unconfigured-model-v1:0"
                       for r in (REGION, OTHER_REGION)]


def bedrock_models(template: "Template") -> list:
    if BEDROCK_MODELS_PARAMETER not in template.parameters:
        return []
    return [arn for arn in template.ref(BEDROCK_MODELS_PARAMETER) if arn]


# What creates, changes or deletes a key: writes to the keys table, and to the API Gateway keys
# that mirror them in the usage plans. Only the function serving ADMIN_ROUTES may do either.
KEY_TABLE_WRITES = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem")
EDGE_KEY_WRITES = ("apigateway:POST", "apigateway:DELETE", "apigateway:PATCH", "apigateway:PUT")
ADMIN_ROUTES = "admin_routes"


# --------------------------------------------------------------------------- Rust sources


@dataclass
class Source:
    """One .rs file: `code` has comments and #[cfg(test)] items blanked (strings kept); `bare`
    also blanks string contents. Offsets are the same in both and in the file."""

    path: Path
    rel: str
    module: tuple | None  # module path in the shared crate; None for a function crate file
    code: str
    bare: str
    lines: list = field(default_factory=list)
    parsed_items: list | None = None  # cache of items()

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.lines, offset) + 1

    def where(self, offset: int) -> str:
        return f"{self.rel}:{self.line(offset)}"


def lex(text: str) -> tuple[str, str]:
    """(code, bare): comments blanked in both, string contents blanked in `bare`."""
    code, bare = list(text), list(text)
    i, n = 0, len(text)

    def blank(lst, a, b):
        for k in range(a, b):
            if lst[k] != "\n":
                lst[k] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(code, i, j)
            blank(bare, i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(code, i, j)
            blank(bare, i, j)
            i = j
        elif c in "rb" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) and re.match(r'(?:br|rb|r)#*"', text[i:i + 80]):
            m = re.match(r'(?:br|rb|r)(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + m.end())
            end = n if end < 0 else end
            blank(bare, i + m.end(), end)
            i = end + 1 + len(m.group(1))
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            blank(bare, i + 1, j)
            i = j + 1
        elif c == "'":
            m = re.match(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'", text[i:i + 12])
            if m:
                blank(bare, i + 1, i + m.end() - 1)
                i += m.end()
            else:
                i += 1  # a lifetime
        else:
            i += 1
    return "".join(code), "".join(bare)


def matching_brace(bare: str, start: int) -> int:
    """Offset just past the brace that closes the one at `start`."""
    depth = 0
    for j in range(start, len(bare)):
        if bare[j] == "{":
            depth += 1
        elif bare[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(bare)


def local_only_features() -> set:
    """Features of the gateway library that no Lambda function enables (gateway-local's OTLP,
    Redis, Memcached): infra/build builds the functions by package, so code behind them is not in
    any function and is read like test code."""
    root = HERE.parent
    declared = re.search(r"(?ms)^\[features\]\n(.*?)(?:^\[|\Z)", (root / "shared" / "Cargo.toml").read_text())
    names = set(re.findall(r"(?m)^([A-Za-z0-9_-]+)\s*=", declared.group(1))) if declared else set()
    enabled = set()
    for manifest in (root / "functions").glob("*/Cargo.toml"):
        if manifest.parent.name == "local":
            continue
        gateway = re.search(r"(?m)^gateway\s*=\s*\{[^}]*features\s*=\s*\[([^\]]*)\]", manifest.read_text())
        if gateway:
            enabled |= set(re.findall(r'"([^"]+)"', gateway.group(1)))
    return names - enabled - {"default"}


TEST_ATTR = re.compile(r"#\[cfg\((?:test|all\([^\]]*\btest\b[^\]]*\))\)\]")
LOCAL_ONLY = "|".join(sorted(re.escape(name) for name in local_only_features())) or "(?!)"
# Matched on the code with its strings kept (the feature's name is a string literal).
LOCAL_ONLY_ATTR = re.compile(r'#\[cfg\(feature\s*=\s*"(?:' + LOCAL_ONLY + r')"\)\]')


def strip_tests(code: str, bare: str) -> tuple[str, str]:
    code, bare = list(code), list(bare)
    text = "".join(bare)
    attributes = [*TEST_ATTR.finditer(text), *LOCAL_ONLY_ATTR.finditer("".join(code))]
    for m in attributes:
        j = m.end()
        while j < len(text) and text[j] not in "{;":
            j += 1
        end = matching_brace(text, j) if j < len(text) and text[j] == "{" else j + 1
        for k in range(m.start(), min(end, len(text))):
            if text[k] != "\n":
                code[k] = bare[k] = " "
    return "".join(code), "".join(bare)


def load_source(path: Path, root: Path, module: tuple | None) -> Source:
    text = path.read_text(encoding="utf-8")
    code, bare = lex(text)
    code, bare = strip_tests(code, bare)
    lines = [i for i, ch in enumerate(text) if ch == "\n"]
    return Source(path, str(path.relative_to(root)), module, code, bare, lines)


class SharedCrate:
    def __init__(self, root: Path):
        self.root = root
        self.src = root / "shared" / "src"
        self.cache: dict[tuple, Source | None] = {}

    def file(self, module: tuple) -> Path | None:
        if not module:
            return self.src / "lib.rs"
        base = self.src.joinpath(*module)
        for candidate in (base.with_suffix(".rs"), base / "mod.rs"):
            if candidate.is_file():
                return candidate
        return None

    def source(self, module: tuple) -> Source | None:
        if module not in self.cache:
            path = self.file(module)
            self.cache[module] = load_source(path, self.root, module) if path else None
        return self.cache[module]

    def longest_module(self, base: tuple, segments: list[str]) -> tuple | None:
        current, best = base, None
        for segment in segments:
            if segment == "self":
                continue
            if segment == "super":
                current = current[:-1]
                continue
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", segment):
                break
            candidate = current + (segment,)
            if self.file(candidate) is None:
                break
            current = best = candidate
        return best


USE_STATEMENT = re.compile(r"\buse\s+([^;]+);")
PATH = re.compile(r"(?<![\w:])((?:[A-Za-z_]\w*\s*::\s*)+[A-Za-z_*]\w*)")
CHILD_MODULE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", re.M)


def expand_use_tree(tree: str) -> list[str]:
    """`a::{b, c::{d, e as f}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)

    def split_top(s: str) -> list[str]:
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        if cur:
            parts.append(cur)
        return parts

    def expand(s: str) -> list[str]:
        if "{" not in s:
            return [s]
        i = s.index("{")
        prefix, inner = s[:i], s[i + 1:s.rindex("}")]
        return [prefix + rest for part in split_top(inner) for rest in expand(part)]

    return [p.rstrip(":") for p in expand(tree) if p]


def paths_in(source: Source) -> list[list[str]]:
    found = []
    for m in USE_STATEMENT.finditer(source.bare):
        for path in expand_use_tree(m.group(1)):
            found.append(path.split("::"))
    for m in PATH.finditer(source.bare):
        found.append(re.sub(r"\s+", "", m.group(1)).split("::"))
    return found


def reachable_sources(crate: SharedCrate, own: list[Source]) -> list[Source]:
    """The function's own files plus the shared modules they reach, transitively."""
    reached: dict[tuple, Source] = {}
    queue: list[tuple] = []

    def reach(module: tuple | None):
        if module is not None and module not in reached and crate.source(module) is not None:
            reached[module] = crate.source(module)
            queue.append(module)

    for source in own:
        for path in paths_in(source):
            if path[0] == "gateway":
                reach(crate.longest_module((), path[1:]))
    while queue:
        module = queue.pop()
        source = reached[module]
        children = set(CHILD_MODULE.findall(source.bare))
        for path in paths_in(source):
            head = path[0]
            if head == "crate":
                reach(crate.longest_module((), path[1:]))
            elif head == "super":
                reach(crate.longest_module(module[:-1], path[1:]) or module[:-1])
            elif head == "self":
                reach(crate.longest_module(module, path[1:]))
            elif head in children:
                reach(crate.longest_module(module, path))
    shared = sorted(reached.values(), key=lambda s: s.rel)
    return own + reachable_items(own, shared)


CONST_ITEM = re.compile(r"(?m)^[ \t]*(?:pub(?:\([^)]*\))?\s+)?(?:const|static)\s+(?:mut\s+)?([A-Za-z_]\w*)\s*:")
DEFINITION = re.compile(r"\b(?:struct|enum|trait|type|union|mod|fn|const|static|macro_rules!)\s+([A-Za-z_]\w*)")
IDENTIFIER = re.compile(r"[A-Za-z_]\w*")


@dataclass
class Unit:
    source: Source
    name: str  # a free fn's or const's name, or the type an impl block is for
    head: int
    end: int


def top_level_units(source: Source) -> list[Unit]:
    """Free functions, impl blocks and consts/statics that are not inside another item."""
    its = [i for i in items(source) if i.kind in ("fn", "impl")]
    outer = [i for i in its if not any(o is not i and o.head <= i.head and i.end <= o.end for o in its)]
    units = [Unit(source, i.impl_type if i.kind == "impl" else i.name, i.head, i.end) for i in outer]
    for m in CONST_ITEM.finditer(source.bare):
        if any(u.head <= m.start() < u.end for u in units):
            continue
        end = source.bare.find(";", m.end())
        depth, j = 0, m.end()
        while j < len(source.bare):  # the `;` that ends the item, outside closures and blocks
            ch = source.bare[j]
            depth += ch in "([{"
            depth -= ch in ")]}"
            if ch == ";" and depth <= 0:
                end = j
                break
            j += 1
        units.append(Unit(source, m.group(1), m.start(), end + 1))
    return units


def identifiers(text: str) -> set:
    defined = {m.start(1) for m in DEFINITION.finditer(text)}
    return {m.group(0) for m in IDENTIFIER.finditer(text) if m.start() not in defined}


def blank_ranges(source: Source, ranges: list) -> Source:
    code, bare = list(source.code), list(source.bare)
    for a, b in ranges:
        for k in range(a, b):
            if bare[k] != "\n":
                code[k] = bare[k] = " "
    return Source(source.path, source.rel, source.module, "".join(code), "".join(bare), source.lines)


def reachable_items(own: list[Source], shared: list[Source]) -> list[Source]:
    """Within the reached shared modules, the free functions, impl blocks and consts that the
    function can reach: those named (a fn or const by its name, an impl block by its type) in the
    function's own sources, in the modules' other code (struct definitions, `use`, ...), or in an
    item already reached. The others are blanked out, so their calls and literals do not count."""
    units = {id(s): top_level_units(s) for s in shared}
    names = set()
    for s in own:
        names |= identifiers(s.bare)
    for s in shared:
        rest = list(s.bare)
        for u in units[id(s)]:
            rest[u.head:u.end] = " " * (u.end - u.head)
        names |= identifiers("".join(rest))
    reached = set()
    changed = True
    while changed:
        changed = False
        for s in shared:
            for u in units[id(s)]:
                if id(u) not in reached and u.name in names:
                    reached.add(id(u))
                    names |= identifiers(s.bare[u.head:u.end])
                    changed = True
    return [blank_ranges(s, [(u.head, u.end) for u in units[id(s)] if id(u) not in reached]) for s in shared]


# --------------------------------------------------------------------------- code facts


@dataclass
class EnvRead:
    name: str
    where: str
    contexts: list = field(default_factory=list)  # as AwsCall.contexts: NOT_EXECUTED applies


@dataclass
class AwsCall:
    service: str
    operation: str  # SDK method, or "Put::builder" for a transaction part
    actions: list  # [(action, kind)]
    where: str
    contexts: list  # names of the Rust item containing the call: "fn", "Type::fn", "Type::*", ...
    tables: list | None = None  # env variables of the table(s), None = not determined
    unmapped: bool = False


CALL_ENV = re.compile(r"\b(?:var|var_os|env|lookup|getenv|env_var)\s*\(\s*\"([A-Za-z_][A-Za-z0-9_]*)\"")
CONST_STR = re.compile(r"\bconst\s+([A-Z][A-Z0-9_]*)\s*:\s*&(?:'static\s+)?str\s*=\s*\"([A-Z][A-Z0-9_]*)\"")
CALL_CONST = re.compile(r"\b(?:var|var_os|env|lookup|getenv|env_var)\s*\(\s*&?([A-Z][A-Z0-9_]*)\s*\)")
CLAP_ENV = re.compile(r"\benv\s*=\s*\"([A-Z][A-Z0-9_]*)\"")
LITERAL_ENV = re.compile(r"\"((?:GATEWAY|AWS)_[A-Z0-9_]+)\"")
# String literals LITERAL_ENV would take for variable names but that are not read from the
# environment, with what they are.
NOT_VARIABLES = {
    "AWS_KEY": "the PII redaction placeholder label of an AWS access key id ([AWS_KEY_1]), guard/pii.rs",
    "AWS_SECRET": "the PII redaction placeholder label of an AWS secret key ([AWS_SECRET_1]), guard/pii.rs",
}
DEFAULT_ENV_FILTER = re.compile(r"EnvFilter\s*::\s*(?:try_)?from_default_env\b")


def env_reads(sources: list[Source]) -> list[EnvRead]:
    consts = {}
    for s in sources:
        for m in CONST_STR.finditer(s.code):
            consts[m.group(1)] = m.group(2)
    reads = []
    for s in sources:
        for regex in (CALL_ENV, CLAP_ENV, LITERAL_ENV):
            for m in regex.finditer(s.code):
                if regex is LITERAL_ENV and m.group(1) in NOT_VARIABLES:
                    continue
                reads.append(EnvRead(m.group(1), s.where(m.start()), context_names(s, m.start())))
        for m in CALL_CONST.finditer(s.code):
            if m.group(1) in consts:
                reads.append(EnvRead(consts[m.group(1)], s.where(m.start()), context_names(s, m.start())))
        for m in DEFAULT_ENV_FILTER.finditer(s.code):
            reads.append(EnvRead("RUST_LOG", s.where(m.start())))
    return reads


@dataclass
class Item:
    kind: str  # "fn" or "impl"
    name: str
    start: int  # body start (the brace)
    end: int
    params: list = field(default_factory=list)
    head: int = 0  # where the item's keyword (`fn`, `impl`) is
    impl_type: str = ""
    trait: str = ""


FN_ITEM = re.compile(r"\bfn\s+([A-Za-z_]\w*)\s*(?:<[^>{]*(?:<[^>{]*>[^>{]*)*>)?\s*\(")
IMPL_ITEM = re.compile(r"\bimpl\b")


def split_args(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        depth += ch in "([{<"
        depth -= ch in ")]}>"
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def balanced(bare: str, open_at: int) -> int:
    """Offset of the parenthesis that closes the one at `open_at`."""
    depth = 0
    for j in range(open_at, len(bare)):
        depth += bare[j] == "("
        depth -= bare[j] == ")"
        if depth == 0:
            return j
    return len(bare)


def items(source: Source) -> list[Item]:
    if source.parsed_items is not None:
        return source.parsed_items
    bare, found = source.bare, []
    for m in FN_ITEM.finditer(bare):
        close = balanced(bare, m.end() - 1)
        params = []
        for param in split_args(bare[m.end():close]):
            if re.fullmatch(r"&?\s*(?:'\w+\s+)?(?:mut\s+)?self(?:\s*:.*)?", param):
                continue
            pm = re.match(r"(?:mut\s+)?([A-Za-z_]\w*)\s*:", param)
            params.append(pm.group(1) if pm else "_")
        j = close
        while j < len(bare) and bare[j] not in "{;":
            j += 1
        if j < len(bare) and bare[j] == "{":
            found.append(Item("fn", m.group(1), j, matching_brace(bare, j), params, head=m.start()))
    for m in IMPL_ITEM.finditer(bare):
        before = re.sub(r"\bunsafe\s*$", "", bare[:m.start()].rstrip()).rstrip()
        if before and before[-1] not in "{};]":
            continue  # `impl Trait` in a type position, not an impl block
        j = m.end()
        while j < len(bare) and bare[j] not in "{;":
            j += 1
        if j >= len(bare) or bare[j] != "{":
            continue
        header = re.sub(r"<[^<>]*(?:<[^<>]*>[^<>]*)*>", "", bare[m.end():j])
        header = re.sub(r"\bwhere\b.*", "", header, flags=re.S)
        trait = ""
        if re.search(r"\bfor\b", header):
            trait_part, header = re.split(r"\bfor\b", header, maxsplit=1)
            trait = (re.findall(r"\w+", trait_part) or [""])[-1]
        names = re.findall(r"[A-Za-z_]\w*", header)
        if names:
            found.append(Item("impl", names[-1], j, matching_brace(bare, j), impl_type=names[-1], trait=trait,
                              head=m.start()))
    source.parsed_items = found
    return found


def enclosing(source: Source, offset: int) -> tuple[Item | None, Item | None]:
    """(innermost fn, innermost impl) containing `offset`."""
    fn = impl = None
    for item in items(source):
        if item.start <= offset < item.end:
            if item.kind == "fn" and (fn is None or item.start > fn.start):
                fn = item
            if item.kind == "impl" and (impl is None or item.start > impl.start):
                impl = item
    return fn, impl


def context_names(source: Source, offset: int) -> list[str]:
    fn, impl = enclosing(source, offset)
    if fn is None:
        return []
    names = [fn.name]
    if impl is not None:
        names += [f"{impl.impl_type}::{fn.name}", f"{impl.impl_type}::*"]
        if impl.trait:
            names += [f"{impl.trait}::{fn.name}", f"{impl.trait}::*"]
    return names


class TableResolver:
    """Finds the environment variable(s) behind a `.table_name(...)` argument."""

    def __init__(self, sources: list[Source]):
        self.sources = sources
        # fn name -> (source, offset) of each call `name(` outside a `fn name(` definition: indexed
        # once, because scanning every source per parameter lookup took minutes.
        self.calls: dict[str, list[tuple[Source, int]]] = {}
        for s in sources:
            for m in re.finditer(r"(?<![\w])(\w+)\s*\(", s.bare):
                if re.search(r"\bfn\s+$", s.bare[max(0, m.start() - 4):m.start()]):
                    continue
                self.calls.setdefault(m.group(1), []).append((s, m.start()))
        # field -> variable, from `field: something("GATEWAY_X")` anywhere.
        self.literal_fields: dict[str, set] = {}
        for s in sources:
            for m in re.finditer(r"\b([a-z_]\w*)\s*:\s*[^,;\n]*?\"(GATEWAY_[A-Z0-9_]+)\"", s.code):
                self.literal_fields.setdefault(m.group(1), set()).add(m.group(2))

    def field_of(self, type_name: str, name: str, depth: int) -> set:
        if name in self.literal_fields:
            return set(self.literal_fields[name])
        if depth > 4:
            return set()
        found = set()
        for s in self.sources:
            for item in items(s):
                if item.kind != "impl" or item.impl_type != type_name:
                    continue
                body = s.code[item.start:item.end]
                for m in re.finditer(rf"(?<![\w.]){re.escape(name)}\s*:\s*([^,;\n}}]+)", body):
                    found |= self.expression(s, item.start + m.start(1), m.group(1), depth + 1)
        return found

    def expression(self, source: Source, offset: int, expr: str, depth: int = 0) -> set:
        expr = re.sub(r"\s+", "", expr)
        expr = re.sub(r"^&+", "", expr)
        expr = re.sub(r"\.(clone|as_str|as_ref|to_owned|to_string)\(\)$", "", expr)
        literal = re.fullmatch(r"\w+\(\"(GATEWAY_[A-Z0-9_]+)\"\)\??", expr)
        if literal:
            return {literal.group(1)}
        m = re.fullmatch(r"self\.(\w+)", expr)
        if m:
            _, impl = enclosing(source, offset)
            return self.field_of(impl.impl_type if impl else "", m.group(1), depth)
        m = re.fullmatch(r"(?:\w+\.)+(\w+)", expr)
        if m:
            return set(self.literal_fields.get(m.group(1), set()))
        m = re.fullmatch(r"[a-z_]\w*", expr)
        if m and depth < 4:
            return self.parameter(source, offset, expr, depth) or self.binding(source, offset, expr)
        return set()

    def binding(self, source: Source, offset: int, name: str) -> set:
        """The table variable of a local `let` that binds `name` (alone or in a tuple pattern) from
        an expression naming exactly one `GATEWAY_..._TABLE`: `let (table, bucket) = match
        (get("GATEWAY_BATCH_TABLE"), get("GATEWAY_BUCKET")) {...}`."""
        fn, _ = enclosing(source, offset)
        if fn is None:
            return set()
        body = source.code[fn.start:fn.end]
        found = set()
        for m in re.finditer(r"\blet\s+(?:mut\s+)?(\([^)]*\)|\w+)[^=]*=([^;{]*)", body):
            if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", m.group(1)):
                tables = set(re.findall(r"\"(GATEWAY_[A-Z0-9_]*_TABLE)\"", m.group(2)))
                if len(tables) == 1:
                    found |= tables
        return found

    def parameter(self, source: Source, offset: int, name: str, depth: int) -> set:
        fn, _ = enclosing(source, offset)
        if fn is None or name not in fn.params:
            return set()
        index = fn.params.index(name)
        found = set()
        for s, start in self.calls.get(fn.name, []):
            open_paren = s.bare.index("(", start)
            close = balanced(s.bare, open_paren)
            args = split_args(s.code[open_paren + 1:close])
            if index < len(args):
                found |= self.expression(s, start, args[index], depth + 1)
        return found


SDK_CALL = re.compile(r"\.\s*([a-z_][a-z0-9_]*)\s*\(\s*\)")
CLIENT_RECEIVER = re.compile(r"(?<![A-Za-z0-9])(?:[a-z0-9_]*_)?client(?:\(\))?(?:\.await\??)?$")
TX_PART = re.compile(r"\b(Put|Update|Delete|ConditionCheck|Get)\s*::\s*builder\s*\(\s*\)")
TABLE_NAME = re.compile(r"\.\s*table_name\s*\(")


def chain_table_arg(source: Source, offset: int) -> tuple[int, str] | None:
    """The argument of `.table_name(...)` in the builder chain starting at `offset`."""
    bare = source.bare
    depth, j = 0, offset
    while j < len(bare):
        ch = bare[j]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                break
        elif ch == ";" and depth <= 0:
            break
        if depth == 0 and bare.startswith(".send()", j):
            break
        m = TABLE_NAME.match(bare, j) if depth == 0 else None
        if m:
            close = balanced(bare, m.end() - 1)
            return m.end(), source.code[m.end():close]
        j += 1
    return None


def aws_calls(sources: list[Source], resolver: TableResolver) -> list[AwsCall]:
    calls = []
    for s in sources:
        services = [svc for svc in dict.fromkeys(re.findall(r"\baws_sdk_(\w+)", s.bare)) if svc != "smithy"]
        if not services:
            continue
        for m in SDK_CALL.finditer(s.bare):
            method = m.group(1)
            receiver = re.sub(r"\s+", "", s.bare[max(0, m.start() - 120):m.start()])
            if method in CLIENT_METHODS or not CLIENT_RECEIVER.search(receiver):
                continue
            service = next((svc for svc in services if method in SDK_OPERATIONS.get(svc, {})), None)
            if service is None:
                calls.append(AwsCall("/".join(services), method, [], s.where(m.start()),
                                     context_names(s, m.start()), unmapped=True))
                continue
            call = AwsCall(service, method, SDK_OPERATIONS[service][method], s.where(m.start()),
                           context_names(s, m.start()))
            if service == "dynamodb":
                call.tables = table_of(s, m.start(), resolver)
            calls.append(call)
        if "dynamodb" in services:
            for m in TX_PART.finditer(s.bare):
                action = DYNAMODB_TRANSACTION_PARTS[m.group(1)]
                call = AwsCall("dynamodb", f"{m.group(1)}::builder", [(action, "table")], s.where(m.start()),
                               context_names(s, m.start()))
                call.tables = table_of(s, m.end(), resolver)
                calls.append(call)
    return calls


def table_of(source: Source, offset: int, resolver: TableResolver):
    arg = chain_table_arg(source, offset)
    if arg is None:
        return None
    tables = resolver.expression(source, arg[0], arg[1])
    return sorted(tables) or None


# --------------------------------------------------------------------------- template


class Template:
    """The translated template, with intrinsic functions evaluated on sample values."""

    def __init__(self, doc: dict, overrides: dict):
        self.doc = doc
        self.resources = doc.get("Resources", {})
        self.parameters = doc.get("Parameters", {})
        self.values = {}
        for name, p in self.parameters.items():
            value = overrides.get(name, p.get("Default"))
            if isinstance(value, list):
                value = ",".join(map(str, value))
            self.values[name] = None if value is None else str(value)
        self.conditions: dict[str, bool] = {}

    # -- names and ARNs of resources (sample physical values)
    def physical(self, lid: str) -> str:
        return f"{lid.lower()}-phys"

    def ref(self, name: str):
        pseudo = {"AWS::Partition": PARTITION, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                  "AWS::StackName": STACK, "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": None,
                  "AWS::StackId": f"arn:{PARTITION}:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/id"}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            value = self.values[name]
            kind = self.parameters[name].get("Type", "")
            if value is not None and (kind == "CommaDelimitedList" or kind.startswith("List<")):
                return [v.strip() for v in value.split(",")]
            return value
        resource = self.resources.get(name)
        if resource is None:
            raise KeyError(f"Ref to unknown `{name}`")
        kind, phys = resource["Type"], self.physical(name)
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{phys}"
        if kind == "AWS::SecretsManager::Secret":
            return f"arn:{PARTITION}:secretsmanager:{REGION}:{ACCOUNT}:secret:{phys}-AbCdEf"
        if kind == "AWS::Logs::LogGroup":
            return self.log_group_name(name)
        return phys

    def log_group_name(self, lid: str) -> str:
        name = self.resources[lid].get("Properties", {}).get("LogGroupName")
        return self.eval(name) if name is not None else self.physical(lid)

    def getatt(self, lid: str, attr: str):
        resource = self.resources.get(lid)
        if resource is None:
            raise KeyError(f"GetAtt of unknown `{lid}`")
        kind, phys = resource["Type"], self.physical(lid)
        if attr == "Arn" or attr.endswith("Arn"):
            arns = {
                "AWS::DynamoDB::Table": f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{phys}",
                "AWS::SQS::Queue": f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:{phys}",
                "AWS::S3::Bucket": f"arn:{PARTITION}:s3:::{phys}",
                "AWS::S3Vectors::VectorBucket": f"arn:{PARTITION}:s3vectors:{REGION}:{ACCOUNT}:bucket/{phys}",
                "AWS::Lambda::Function": f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{phys}",
                "AWS::IAM::Role": f"arn:{PARTITION}:iam::{ACCOUNT}:role/{phys}",
                "AWS::SNS::Topic": f"arn:{PARTITION}:sns:{REGION}:{ACCOUNT}:{phys}",
            }
            if kind == "AWS::Logs::LogGroup":
                return f"arn:{PARTITION}:logs:{REGION}:{ACCOUNT}:log-group:{self.log_group_name(lid)}:*"
            if kind == "AWS::S3Vectors::Index":
                props = resource.get("Properties", {})
                bucket = self.eval(props.get("VectorBucketArn")) or f"arn:{PARTITION}:s3vectors:{REGION}:{ACCOUNT}:bucket/unknown"
                return f"{bucket}/index/{self.eval(props.get('IndexName')) or phys}"
            if kind in arns:
                return arns[kind]
        if kind == "AWS::SQS::Queue" and attr == "QueueName":
            return phys
        if kind == "AWS::SQS::Queue" and attr == "QueueUrl":
            return self.ref(lid)
        return f"{phys}.{attr}"

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.eval_condition(self.doc.get("Conditions", {})[name]))
        return self.conditions[name]

    def eval_condition(self, node) -> bool:
        (fn, args), = node.items()
        if fn == "Fn::Equals":
            return str(self.eval(args[0])) == str(self.eval(args[1]))
        if fn == "Fn::Not":
            return not self.eval_condition(args[0])
        if fn == "Fn::And":
            return all(self.eval_condition(a) for a in args)
        if fn == "Fn::Or":
            return any(self.eval_condition(a) for a in args)
        if fn == "Condition":
            return self.condition(args)
        raise ValueError(f"unsupported condition {fn}")

    def eval(self, node):
        """A string (or list of strings, or None for AWS::NoValue)."""
        if isinstance(node, (str, int, float, bool)) or node is None:
            return node if not isinstance(node, bool) else str(node).lower()
        if isinstance(node, list):
            return [self.eval(v) for v in node]
        if isinstance(node, dict) and len(node) == 1:
            (fn, args), = node.items()
            if fn == "Ref":
                return self.ref(args)
            if fn == "Fn::GetAtt":
                lid, attr = args if isinstance(args, list) else args.split(".", 1)
                return self.getatt(lid, attr)
            if fn == "Fn::Sub":
                text, variables = (args, {}) if isinstance(args, str) else (args[0], args[1])
                local = {k: self.eval(v) for k, v in variables.items()}

                def sub(m):
                    name = m.group(1)
                    if name.startswith("!"):
                        return "${" + name[1:] + "}"
                    if name in local:
                        return str(local[name])
                    if "." in name and not name.startswith("AWS::"):
                        lid, attr = name.split(".", 1)
                        return str(self.getatt(lid, attr))
                    return str(self.ref(name))

                return re.sub(r"\$\{([^}]+)\}", sub, text)
            if fn == "Fn::If":
                return self.eval(args[1] if self.condition(args[0]) else args[2])
            if fn == "Fn::Join":
                return args[0].join(str(v) for v in self.eval(args[1]) if v is not None)
            if fn == "Fn::Split":
                return str(self.eval(args[1])).split(args[0])
            if fn == "Fn::Select":
                values = self.eval(args[1])
                index = int(self.eval(args[0]))
                return values[index] if index < len(values) else ""
            if fn == "Fn::FindInMap":
                m, k1, k2 = (self.eval(a) for a in args)
                return str(self.doc["Mappings"][m][k1][k2])
            if fn == "Fn::ImportValue":
                return f"import:{self.eval(args)}"
        if isinstance(node, dict):
            return {k: self.eval(v) for k, v in node.items()}
        raise ValueError(f"cannot evaluate {node!r}")

    def references(self, node) -> set:
        """Logical ids and parameter names a value refers to (both branches of Fn::If)."""
        found = set()
        if isinstance(node, list):
            for v in node:
                found |= self.references(v)
        elif isinstance(node, dict):
            for fn, args in node.items():
                if fn == "Ref" and isinstance(args, str) and not args.startswith("AWS::"):
                    found.add(args)
                elif fn == "Fn::GetAtt":
                    found.add(args[0] if isinstance(args, list) else args.split(".", 1)[0])
                elif fn == "Fn::Sub":
                    text = args if isinstance(args, str) else args[0]
                    local = {} if isinstance(args, str) else args[1]
                    for name in re.findall(r"\$\{([^!}][^}]*)\}", text):
                        if name in local or name.startswith("AWS::"):
                            continue
                        found.add(name.split(".", 1)[0])
                    found |= self.references(local)
                elif fn == "Fn::If":
                    found |= self.references(args[1:])
                else:
                    found |= self.references(args)
        return found


def wildcard(pattern: str, value: str, ignore_case: bool = False) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.S | (re.I if ignore_case else 0)) is not None


class Role:
    def __init__(self, template: Template, lid: str):
        self.lid = lid
        self.statements = []
        self.unknown_managed = []
        props = template.resources[lid].get("Properties", {})
        for policy in props.get("Policies", []) or []:
            self.add(template, policy.get("PolicyDocument", {}))
        for arn in props.get("ManagedPolicyArns", []) or []:
            name = str(template.eval(arn)).rsplit("/", 1)[-1]
            if name in MANAGED_POLICIES:
                self.statements += MANAGED_POLICIES[name]
            else:
                self.unknown_managed.append(name)
        for other, resource in template.resources.items():
            if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
                p = resource.get("Properties", {})
                roles = p.get("Roles", []) + ([p["RoleName"]] if "RoleName" in p else [])
                if any(r == {"Ref": lid} for r in roles):
                    self.add(template, p.get("PolicyDocument", {}))

    def add(self, template: Template, document):
        statements = template.eval(document).get("Statement", [])
        for st in statements if isinstance(statements, list) else [statements]:
            if st is not None:  # a statement left out through `!Ref AWS::NoValue`
                self.statements.append(st)

    @staticmethod
    def _list(value):
        if value is None:
            return []
        out = []
        for v in value if isinstance(value, list) else [value]:
            out += Role._list(v) if isinstance(v, list) else [v] if v is not None else []
        return out

    def allows(self, action: str, resource: str) -> bool:
        def matches(st):
            actions = self._list(st.get("Action"))
            resources = self._list(st.get("Resource"))
            return any(wildcard(a, action, True) for a in actions) and any(wildcard(r, resource) for r in resources)

        if any(st.get("Effect") == "Deny" and matches(st) for st in self.statements):
            return False
        return any(st.get("Effect") == "Allow" and matches(st) for st in self.statements)

    def granted(self) -> set:
        return {a for st in self.statements if st.get("Effect") == "Allow" for a in self._list(st.get("Action"))}


# --------------------------------------------------------------------------- the check


@dataclass
class Function:
    binary: str
    lid: str
    crate_dir: Path
    main: Path
    sources: list | None = None  # its own files and the shared code it reaches (function_sources)


def function_sources(fn: Function, crate: SharedCrate, root: Path) -> list[Source]:
    if fn.sources is None:
        own = [load_source(p, root, None) for p in sorted((fn.crate_dir / "src").rglob("*.rs"))]
        fn.sources = reachable_sources(crate, own)
    return fn.sources


class Report:
    def __init__(self):
        self.problems = 0
        self.sections = []  # [title, [(is_drift, line)]]

    def section(self, title):
        self.sections.append([title, []])

    def add(self, drift, text):
        if not self.sections:
            self.section("")
        self.sections[-1][1].append((drift, text))

    def ok(self, text):
        self.add(False, f"  ok        {text}")

    def info(self, tag, text):
        self.add(False, f"  {tag:<9} {text}")

    def drift(self, text):
        self.problems += 1
        self.add(True, f"  DRIFT     {text}")

    def print(self, quiet=False):
        for title, lines in self.sections:
            shown = [text for drift, text in lines if drift or not quiet]
            if shown:
                print()
                print(title)
                print("\n".join(shown))


def binaries(root: Path) -> dict[str, tuple[Path, Path]]:
    """bin name -> (crate dir, main file), from functions/*/Cargo.toml."""
    found = {}
    for manifest in sorted((root / "functions").glob("*/Cargo.toml")):
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
        for b in data.get("bin", []):
            found[b["name"]] = (manifest.parent, manifest.parent / b.get("path", "src/main.rs"))
        if not data.get("bin") and (manifest.parent / "src/main.rs").is_file():
            found[data["package"]["name"]] = (manifest.parent, manifest.parent / "src/main.rs")
    return found


def variable_kind(name: str):
    for pattern, types, what in RESOURCE_VARIABLES:
        if pattern.search(name):
            return types, what
    return None


def check_resource_variable(template: Template, report: Report, name: str, where: str, value, types: set, what: str) -> list:
    """Checks that `value` refers only to resources of `types` (or acceptable parameters);
    returns the logical ids of the resources it names."""
    refs = template.references(value)
    if not refs:
        report.drift(f"{name} should name a {what} of this template but is set to {json.dumps(value)}")
        return []
    named, problems = [], []
    for ref in sorted(refs):
        if ref in template.resources:
            kind = template.resources[ref]["Type"]
            if kind in types:
                named.append(ref)
            else:
                problems.append(f"`{ref}` is of type {kind}, not a {what}")
        elif ref in template.parameters:
            users = [lid for lid, r in template.resources.items()
                     if r["Type"] in types and ref in template.references(r.get("Properties", {}))]
            pattern = template.parameters[ref].get("AllowedPattern", "")
            service = {"AWS::SecretsManager::Secret": "secretsmanager", "AWS::SQS::Queue": "sqs",
                       "AWS::DynamoDB::Table": "dynamodb", "AWS::S3::Bucket": "s3"}
            external = any(service.get(t, "#") in pattern for t in types)
            if users:
                named += users
            elif not external:
                problems.append(f"parameter `{ref}` is not used by any {what} of the template")
        else:
            problems.append(f"`{ref}` does not exist in the template")
    for p in problems:
        report.drift(f"{name}: {p}")
    if not problems:
        described = ", ".join(f"{r} ({template.resources[r]['Type']})" for r in named)
        report.ok(f"{name} -> {described or 'an existing resource (a parameter)'} (read at {where})")
    return named


def resource_samples(template: Template, kind: str, fn_resources: dict) -> tuple[list, str]:
    """Sample ARNs an action on `kind` must be allowed on, and "all" or "any"."""
    def arns(types):
        lids = [lid for t in types for lid in fn_resources.get(t, [])]
        return [template.getatt(lid, "Arn") if template.resources[lid]["Type"] != "AWS::SecretsManager::Secret"
                else template.ref(lid) for lid in lids]

    if kind == "*":
        return ["*"], "all"
    if kind == "bedrock-model":
        return bedrock_models(template), "all"
    if kind == "secret":  # the variable's value: a secret of the template, or one passed in as a parameter
        values = fn_resources.get("secret-values", [])
        return values or [f"arn:{PARTITION}:secretsmanager:{REGION}:{ACCOUNT}:secret:unnamed"], "all"
    if kind == "queue":
        return arns({"AWS::SQS::Queue"}), "all"
    if kind == "bucket":
        return arns({"AWS::S3::Bucket"}), "all"
    if kind == "object":
        return [f"{a}/contract/sample-object" for a in arns({"AWS::S3::Bucket"})], "all"
    if kind == "vector-index":
        lids = fn_resources.get("AWS::S3Vectors::Index") or [lid for lid, r in template.resources.items() if r["Type"] == "AWS::S3Vectors::Index"]
        return [template.getatt(lid, "IndexArn") for lid in lids], "all"
    if kind.startswith("/"):
        plans = [template.ref(lid) for lid in fn_resources.get("AWS::ApiGateway::UsagePlan", [])] or ["sampleplan"]
        paths = {kind.replace("{usage_plan}", p).replace("{id}", "sampleid") for p in plans}
        return [f"arn:{PARTITION}:apigateway:{REGION}::{p}" for p in sorted(paths)], "all"
    raise ValueError(kind)


def not_executed(binary: str, contexts: list, used: set) -> str | None:
    for scope in (binary, "*"):
        for name in contexts:
            if name in NOT_EXECUTED.get(scope, {}):
                used.add((scope, name))
                return f"{NOT_EXECUTED[scope][name]} [NOT_EXECUTED {scope}: {name}]"
    return None


def check_function(fn: Function, template: Template, crate: SharedCrate, root: Path, report: Report, used: set):
    lambda_fn = template.resources.get(fn.lid)
    report.section(f"[{fn.binary}] {fn.lid} ({fn.main.relative_to(root)})")
    if lambda_fn is None or lambda_fn["Type"] != "AWS::Lambda::Function":
        report.drift(f"{fn.lid} is not a Lambda function in the translated template")
        return
    props = lambda_fn.get("Properties", {})
    sources = function_sources(fn, crate, root)
    report.info("sources", ", ".join(s.rel for s in sources))

    # ---- environment
    env = (props.get("Environment") or {}).get("Variables", {}) or {}
    reads: dict[str, list] = {}
    for r in env_reads(sources):
        skip = not_executed(fn.binary, r.contexts, used)
        if skip:
            report.info("skipped", f"{r.name} ({r.where}): {skip}")
            continue
        reads.setdefault(r.name, [])
        if r.where not in reads[r.name]:
            reads[r.name].append(r.where)
    fn_resources: dict[str, list] = {}
    for name in sorted(reads):
        where = ", ".join(reads[name][:3]) + (" ..." if len(reads[name]) > 3 else "")
        if name in env:
            value = template.eval(env[name])
            kind = variable_kind(name)
            if kind:
                for lid in check_resource_variable(template, report, name, where, env[name], *kind):
                    fn_resources.setdefault(template.resources[lid]["Type"], []).append(lid)
                if "AWS::SecretsManager::Secret" in kind[0] and value:
                    fn_resources.setdefault("secret-values", []).append(value)
            elif value in (None, "") and name in EMPTY_MEANS_DEFAULT:
                report.ok(f"{name} (read at {where}; empty by default: {EMPTY_MEANS_DEFAULT[name]})")
            elif value in (None, ""):
                report.drift(f"{name} is read by the code ({where}) but the template sets it empty")
            else:
                report.ok(f"{name} (read at {where})")
        elif name in LAMBDA_RUNTIME or name.startswith(LAMBDA_RUNTIME_PREFIXES):
            report.info("runtime", f"{name}: set by the Lambda runtime")
        elif name in SDK_SETTINGS or any(name.startswith(p) for p in SDK_SETTING_PREFIXES):
            reason = SDK_SETTINGS.get(name) or next(v for p, v in SDK_SETTING_PREFIXES.items() if name.startswith(p))
            report.info("optional", f"{name}: {reason}")
        elif name in OPTIONAL_ON_LAMBDA:
            report.info("optional", f"{name}: {OPTIONAL_ON_LAMBDA[name]}")
        else:
            report.drift(f"{name} is read by the code ({where}) but not set for {fn.lid} by the template")
    unread = sorted(set(env) - set(reads))
    if unread:
        report.info("note", f"set by the template but not read by this code: {', '.join(unread)}")

    # ---- IAM
    role_ref = props.get("Role")
    if not (isinstance(role_ref, dict) and "Fn::GetAtt" in role_ref and role_ref["Fn::GetAtt"][0] in template.resources):
        report.drift(f"the role of {fn.lid} is not a role of this template ({json.dumps(role_ref)}): its policy cannot be checked")
        return
    role = Role(template, role_ref["Fn::GetAtt"][0])
    for name in role.unknown_managed:
        report.info("note", f"managed policy {name} is not known to the contract; its grants are ignored")

    # Logs: the function must be able to write its log group.
    log_group = ((props.get("LoggingConfig") or {}).get("LogGroup"))
    log_group = template.eval(log_group) if log_group is not None else f"/aws/lambda/{template.physical(fn.lid)}"
    stream = f"arn:{PARTITION}:logs:{REGION}:{ACCOUNT}:log-group:{log_group}:log-stream:sample"
    for action in ("logs:CreateLogStream", "logs:PutLogEvents"):
        if role.allows(action, stream):
            report.ok(f"{action} on log group {log_group}")
        else:
            report.drift(f"{role.lid} does not allow {action} on the function's log group {log_group}")

    # Event sources polled with the function's role.
    polled = []  # (action, (queue ARN,))
    for lid, resource in template.resources.items():
        if resource["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        p = resource.get("Properties", {})
        if fn.lid not in template.references(p.get("FunctionName")):
            continue
        source_arn = template.eval(p.get("EventSourceArn"))
        if ":sqs:" in str(source_arn):
            for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
                polled.append((action, (source_arn,)))
                if role.allows(action, source_arn):
                    report.ok(f"{action} on {source_arn} (event source {lid})")
                else:
                    report.drift(f"{role.lid} does not allow {action} on the queue of event source {lid}")

    resolver = TableResolver(sources)
    calls = aws_calls(sources, resolver)
    table_env = {v for v in reads if variable_kind(v) and "AWS::DynamoDB::Table" in variable_kind(v)[0] and v in env}
    required: dict[tuple, list] = {}  # (action, samples tuple, mode, label) -> [where]
    for call in calls:
        if call.unmapped:
            report.drift(f"{call.where}: `.{call.operation}()` on a {call.service} client is not in the contract's "
                         "SDK_OPERATIONS map: add its IAM action(s) to infra/contract.py")
            continue
        skip = not_executed(fn.binary, call.contexts, used)
        for action, kind in call.actions:
            if skip:
                report.info("skipped", f"{action} ({call.where}, .{call.operation}): {skip}")
                continue
            if kind == "table":
                if call.tables:
                    for var in call.tables:
                        if var not in env:
                            report.drift(f"{call.where}: the table of `.{call.operation}` comes from {var}, "
                                         f"which the template does not set for {fn.lid}")
                            continue
                        lids = [r for r in template.references(env[var]) if r in template.resources]
                        samples = tuple(template.getatt(lid, "Arn") for lid in lids)
                        key = (action, samples, "all", f"{'/'.join(lids)} ({var})")
                        required.setdefault(key, []).append(call.where)
                else:
                    lids = sorted({r for v in table_env for r in template.references(env[v]) if r in template.resources})
                    samples = tuple(template.getatt(lid, "Arn") for lid in lids)
                    key = (action, samples, "any", "a table the function names (table not determined from the code)")
                    required.setdefault(key, []).append(call.where)
            else:
                samples, mode = resource_samples(template, kind, fn_resources)
                if kind == "bedrock-model" and not samples:
                    report.info("note", f"{action} ({call.where}): no Bedrock model is configured "
                                f"({BEDROCK_MODELS_PARAMETER} is empty), so the role allows none")
                    continue
                label = kind if not samples else ", ".join(samples) if len(samples) < 4 else f"{len(samples)} resources"
                required.setdefault((action, tuple(samples), mode, label), []).append(call.where)

    for (action, samples, mode, label), wheres in sorted(required.items()):
        where = ", ".join(sorted(set(wheres))[:3]) + (" ..." if len(set(wheres)) > 3 else "")
        if not samples:
            report.drift(f"{action} ({where}): the function names no resource it could act on")
            continue
        verdicts = [role.allows(action, s) for s in samples]
        good = all(verdicts) if mode == "all" else any(verdicts)
        if good:
            report.ok(f"{action} on {label} ({where})")
        else:
            missing = [s for s, v in zip(samples, verdicts) if not v]
            detail = "" if mode == "any" or len(missing) == len(samples) else f" (refused: {', '.join(missing)})"
            report.drift(f"{role.lid} does not allow {action} on {label}{detail}; called at {where}")

    check_exact_grants(template, role, [(a, samples) for (a, samples, _, _) in required] + polled, report)


def template_samples(template: Template) -> list:
    """Sample ARNs of every resource of the template a role could name, and of resources outside
    it: a grant that covers one of them the code does not need is wider than the code."""
    samples = list(UNCONFIGURED_MODELS)
    for lid, r in template.resources.items():
        kind = r["Type"]
        if kind in ("AWS::DynamoDB::Table", "AWS::SQS::Queue"):
            samples.append(template.getatt(lid, "Arn"))
        elif kind == "AWS::S3::Bucket":
            samples += [template.getatt(lid, "Arn"), f"{template.getatt(lid, 'Arn')}/contract/sample-object"]
        elif kind == "AWS::S3Vectors::Index":
            samples.append(template.getatt(lid, "IndexArn"))
        elif kind == "AWS::SecretsManager::Secret":
            samples.append(template.ref(lid))
    samples += [f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/another-stacks-table",
                f"arn:{PARTITION}:apigateway:{REGION}::/usageplans/another-plan/keys",
                f"arn:{PARTITION}:apigateway:{REGION}::/restapis/another-api"]
    return samples


def check_exact_grants(template: Template, role: "Role", needed: list, report: Report):
    """The reverse of "allows what it calls": every action the role allows, on every resource it
    names, is one the function's code calls there (or its event source polls), and the resource
    pattern covers nothing else of the template (or outside it) that the code does not act on."""
    outsiders = template_samples(template)
    for st in role.statements:
        if st.get("Effect") != "Allow":
            continue
        for action in Role._list(st.get("Action")):
            if action.lower().startswith("logs:"):
                continue  # the log group check above
            wanted = {s for a, samples in needed if wildcard(action, a, True) for s in samples}
            for resource in Role._list(st.get("Resource")):
                if not any(wildcard(resource, s) for s in wanted):
                    report.drift(f"{role.lid} allows {action} on {resource}, which this function's code never "
                                 "calls there: remove the grant (least privilege)")
                    continue
                wider = sorted(o for o in outsiders if o not in wanted and wildcard(resource, o))
                if wider:
                    report.drift(f"{role.lid} allows {action} on {resource}, which also covers "
                                 f"{', '.join(wider[:3])}{' ...' if len(wider) > 3 else ''}: name only what the code acts on")
                else:
                    report.ok(f"grant {action} on {resource}: called by the code")


def check_key_writers(template: Template, functions: list, served_by: dict, report: Report):
    """Only the function serving the admin routes may create, change or delete keys: the chat
    function (every other route) and the workers read keys, nothing more."""
    report.section("[key writers] functions whose role may create, change or delete keys")
    admins = sorted(lid for lid, groups in served_by.items() if ADMIN_ROUTES in groups)
    if not admins:
        report.drift(f"no function serves `{ADMIN_ROUTES}`: the admin routes have no function of their own")
    keys_tables = set()
    for fn in functions:
        env = ((template.resources[fn.lid].get("Properties") or {}).get("Environment") or {}).get("Variables") or {}
        if "GATEWAY_KEYS_TABLE" in env:
            keys_tables |= {r for r in template.references(env["GATEWAY_KEYS_TABLE"]) if r in template.resources}
    tables = [template.getatt(lid, "Arn") for lid in sorted(keys_tables)]
    edge = [f"arn:{PARTITION}:apigateway:{REGION}::/apikeys", f"arn:{PARTITION}:apigateway:{REGION}::/apikeys/sampleid"]
    for fn in functions:
        role_ref = (template.resources[fn.lid].get("Properties") or {}).get("Role")
        if not (isinstance(role_ref, dict) and "Fn::GetAtt" in role_ref):
            continue
        role = Role(template, role_ref["Fn::GetAtt"][0])
        writes = sorted({f"{a} on {t}" for a in KEY_TABLE_WRITES for t in tables if role.allows(a, t)}
                        | {f"{a} on {e}" for a in EDGE_KEY_WRITES for e in edge if role.allows(a, e)})
        if fn.lid in admins:
            report.ok(f"{fn.lid} serves the admin routes: it may write keys ({len(writes)} grants)")
        elif writes:
            report.drift(f"{fn.lid} does not serve the admin routes but its role {role.lid} may write keys: "
                         f"{', '.join(writes)}")
        else:
            report.ok(f"{fn.lid} ({role.lid}) cannot create, change or delete keys")


# --------------------------------------------------------------------------- routes

HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT")
ROUTER_CALL = re.compile(r"\.\s*(route|route_service|nest|nest_service)\s*\(")
METHOD_CALL = re.compile(r"(?<![\w])(get|post|put|delete|patch|head|options|trace|connect|any|on)(?:_service)?\s*\(")
ROUTE_CONST = re.compile(r"\bconst\s+([A-Za-z_]\w*)\s*:\s*&(?:'static\s+)?str\s*=\s*\"([^\"]*)\"")
SAMPLE_SEGMENT = "contract-sample"


@dataclass
class Route:
    method: str  # GET, POST, ... or ANY
    path: str  # as written in the router
    where: list
    group: str = ""  # the function of the router files that declares it (`admin_routes`, ...)


def router_files(root: Path, given: list[str]) -> list[Path]:
    """The .rs files routes are read from: shared/src/http.rs and shared/src/http/**, or `given`."""
    places = [Path(g) for g in given] or [root / "shared" / "src" / "http.rs", root / "shared" / "src" / "http"]
    files = []
    for place in places:
        if place.is_file():
            files.append(place)
        elif place.is_dir():
            files += sorted(place.rglob("*.rs"))
    return files


def top_level_args(bare: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of the comma-separated arguments in bare[start:end], at bracket depth 0."""
    spans, depth, begin = [], 0, start
    for j in range(start, end):
        ch = bare[j]
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            spans.append((begin, j))
            begin = j + 1
    if bare[begin:end].strip():
        spans.append((begin, end))
    return spans


def flatten(bare: str) -> str:
    """Blanks what is inside brackets, so only the top level of an expression remains."""
    out, depth = [], 0
    for ch in bare:
        if ch in ")]}":
            depth -= 1
        out.append(ch if depth <= 0 or ch == "\n" else " ")
        if ch in "([{":
            depth += 1
    return "".join(out)


def route_methods(source: Source, start: int, end: int) -> list[str]:
    """Methods of a method router expression (the second argument of `.route`)."""
    flat = flatten(source.bare[start:end])
    methods = []
    for m in METHOD_CALL.finditer(flat):
        name = m.group(1)
        if name == "on":  # on(MethodFilter::GET.or(MethodFilter::POST), handler)
            close = balanced(source.bare, start + m.end() - 1)
            filters = re.findall(r"MethodFilter\s*::\s*([A-Z]+)", source.code[start + m.end():close])
            methods += [f for f in filters if f in HTTP_METHODS]
        else:
            methods.append("ANY" if name == "any" else name.upper())
    return methods


def read_routes(files: list[Path], root: Path, report: Report) -> tuple[list[Route], set]:
    """Routes of the router functions in `files`, and the ROUTERS_NOT_ON_LAMBDA names that matched."""
    sources = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        code, bare = strip_tests(*lex(text))
        rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        sources.append(Source(path, rel, None, code, bare, [i for i, ch in enumerate(text) if ch == "\n"]))
    consts = {m.group(1): m.group(2) for s in sources for m in ROUTE_CONST.finditer(s.code)}
    routes: dict[tuple, Route] = {}
    skipped = set()
    for s in sources:
        for m in ROUTER_CALL.finditer(s.bare):
            call, where = m.group(1), s.where(m.start())
            fn, _ = enclosing(s, m.start())
            if fn is not None and fn.name in ROUTERS_NOT_ON_LAMBDA:
                skipped.add(fn.name)
                continue
            if call.startswith("nest"):
                report.drift(f"{where}: `.{call}(` mounts a router under a prefix, which the contract does not follow: "
                             "extend infra/contract.py (check_routes) or write the routes out")
                continue
            close = balanced(s.bare, m.end() - 1)
            args = top_level_args(s.bare, m.end(), close)
            if len(args) != 2:
                report.drift(f"{where}: cannot read `.{call}(...)` (expected a path and a method router)")
                continue
            first = s.code[args[0][0]:args[0][1]].strip()
            literal = re.fullmatch(r'"([^"\\]*)"', first)
            path = literal.group(1) if literal else consts.get(first)
            if path is None:
                report.drift(f"{where}: cannot read the path of `.{call}({first}, ...)` (a string literal or a "
                             "`const NAME: &str` of these files is expected)")
                continue
            # axum 0.7 syntax (`:id`, `*rest`) to 0.8's (`{id}`, `{*rest}`).
            path = re.sub(r"/:([A-Za-z_]\w*)", r"/{\1}", path)
            path = re.sub(r"/\*([A-Za-z_]\w*)", r"/{*\1}", path)
            methods = ["ANY"] if call == "route_service" else route_methods(s, *args[1])
            if not methods:
                report.drift(f"{where}: cannot read the methods of `.route(\"{path}\", ...)` (expected get(..), "
                             "post(..).get(..), on(MethodFilter::X, ..), any(..), ...)")
                continue
            for method in methods:
                route = routes.setdefault((method, path), Route(method, path, [], fn.name if fn else ""))
                route.where.append(where)
    return list(routes.values()), skipped


ROUTES_ARM = re.compile(r"\bRoutes\s*::\s*([A-Z]\w*)\s*=>")
GROUP_CALL = re.compile(r"\b([a-z_]\w*)\s*\(\s*\)")


def route_sets(files: list[Path], groups: set) -> dict[str, set]:
    """`Routes` variant -> the route groups (functions declaring routes) it serves, read from the
    arms of the `match routes { Routes::X => (...), ... }` of the router files."""
    sets: dict[str, set] = {}
    for path in files:
        code, _ = strip_tests(*lex(path.read_text(encoding="utf-8")))
        arms = list(ROUTES_ARM.finditer(code))
        for i, arm in enumerate(arms):
            end = arms[i + 1].start() if i + 1 < len(arms) else code.find("};", arm.end())
            called = {m.group(1) for m in GROUP_CALL.finditer(code[arm.end():end])}
            sets.setdefault(arm.group(1), set()).update(called & groups)
    return sets


FUNCTION_ROUTES = re.compile(r"\bRoutes\s*::\s*([A-Z]\w*)")


def served_variants(fn: "Function", crate: "SharedCrate", root: Path) -> set:
    """The `Routes` variants a function serves: named in its own crate's sources (its `main`
    picks one), or `All` when its code calls `http::router`, the router with every route."""
    own = [s for s in function_sources(fn, crate, root) if s.module is None]
    variants = {m.group(1) for s in own for m in FUNCTION_ROUTES.finditer(s.code)}
    if any("http" in path[:-1] and path[-1] == "router" for s in own for path in paths_in(s)):
        variants.add("All")
    return variants


def sample_request(path: str) -> list[str]:
    """A request path the route matches, as segments: `{id}` -> a sample, `{*rest}` -> two segments."""
    out = []
    for segment in [s for s in path.split("/") if s]:
        if segment.startswith("{*"):
            out += [SAMPLE_SEGMENT, SAMPLE_SEGMENT]
        elif segment.startswith("{"):
            out.append(SAMPLE_SEGMENT)
        else:
            out.append(segment)
    return out


def api_specificity(api_path: str, request: list[str]) -> tuple | None:
    """How specifically an API resource path matches a request (higher wins), None if it does not:
    per segment a literal (2) before a `{param}` (1) before a trailing greedy `{proxy+}` (0)."""
    segments = [s for s in api_path.split("/") if s]
    score = []
    for i, segment in enumerate(segments):
        if segment.startswith("{") and segment.endswith("+}"):
            return tuple(score + [0]) if i == len(segments) - 1 and len(request) > i else None
        if i >= len(request):
            return None
        if segment.startswith("{") and segment.endswith("}"):
            score.append(1)
        elif segment == request[i]:
            score.append(2)
        else:
            return None
    return tuple(score) if len(request) == len(segments) else None


@dataclass
class Operation:
    api: str  # logical id of the RestApi
    method: str  # GET, ... or ANY
    path: str
    function: str | None  # logical id of the integrated Lambda function
    uri: str
    streamed: bool
    transfer_stream: bool
    authorized: bool


def api_operations(template: Template) -> dict[str, dict[str, dict[str, Operation]]]:
    """RestApi logical id -> API path -> METHOD/ANY -> Operation."""
    names = {}  # physical function name -> logical id
    for lid, r in template.resources.items():
        if r["Type"] == "AWS::Lambda::Function":
            names[template.physical(lid)] = lid
            given = r.get("Properties", {}).get("FunctionName")
            if given is not None:
                names[str(template.eval(given))] = lid
    apis = {}
    for lid, r in template.resources.items():
        if r["Type"] != "AWS::ApiGateway::RestApi":
            continue
        body = r.get("Properties", {}).get("Body") or {}
        schemes = (body.get("components") or {}).get("securitySchemes") or body.get("securityDefinitions") or {}
        authorizers = {n for n, scheme in schemes.items() if "x-amazon-apigateway-authorizer" in scheme}
        default_security = body.get("security", [])
        paths = {}
        for path, item in (body.get("paths") or {}).items():
            for key, op in item.items():
                method = "ANY" if key == "x-amazon-apigateway-any-method" else key.upper()
                if method != "ANY" and method not in HTTP_METHODS:
                    continue
                integration = op.get("x-amazon-apigateway-integration") or {}
                uri = str(template.eval(integration.get("uri", "")) or "")
                m = re.search(r":function:([^/:]+)(?::[^/]+)?/(?:response-streaming-)?invocations$", uri)
                security = op.get("security", default_security) or []
                paths.setdefault(path, {})[method] = Operation(
                    lid, method, path, names.get(m.group(1)) if m else None, uri,
                    uri.endswith("/response-streaming-invocations"),
                    integration.get("responseTransferMode") == "STREAM",
                    any(name in authorizers for requirement in security for name in requirement))
        apis[lid] = paths
    return apis


def router_functions(functions: list[Function], crate: SharedCrate, root: Path, sets: dict) -> dict[str, set]:
    """Logical id -> the route groups it serves, for the deployed functions that serve the shared
    router (their `main` names a `Routes` variant)."""
    found = {}
    for fn in functions:
        groups = set().union(*(sets.get(v, set()) for v in served_variants(fn, crate, root)))
        if groups:
            found[fn.lid] = groups
    return found


def check_routes(template: Template, functions: list[Function], crate: SharedCrate, root: Path, report: Report,
                 router_sources: list[str], served_by: dict):
    files = router_files(root, router_sources)
    shown = ", ".join(str(f.relative_to(root)) if f.is_relative_to(root) else str(f) for f in files)
    report.section(f"[routes] the shared router ({shown or 'no files'}) against the REST API")
    if not files:
        report.drift("no router source found (shared/src/http.rs or shared/src/http/)")
        return
    routes, skipped = read_routes(files, root, report)
    for name in sorted(skipped):
        report.info("skipped", f"routes of `{name}`: {ROUTERS_NOT_ON_LAMBDA[name]} [ROUTERS_NOT_ON_LAMBDA]")
    for name in sorted(set(ROUTERS_NOT_ON_LAMBDA) - skipped):
        report.drift(f"ROUTERS_NOT_ON_LAMBDA names `{name}`, which builds no route any more: delete the entry")
    if not routes:
        report.drift(f"no `.route(` call found in {shown}: the contract cannot read the router")
        return
    sets = route_sets(files, {r.group for r in routes})
    if not sets:
        report.drift("no `Routes::X => (..)` arm found in the router files: the contract cannot tell which "
                     "function serves which routes")
        return
    groups_of = router_functions(functions, crate, root, sets)
    serving = set(groups_of)
    if not serving:
        report.drift("no function of the template names a `Routes` variant in its own sources (the route set its "
                     "`main` serves): the route table cannot be checked")
        return
    for lid, groups in sorted(groups_of.items()):
        report.info("router", f"{lid} serves " + ", ".join(
            f"{r.method} {r.path}" for r in sorted(routes, key=lambda r: (r.path, r.method)) if r.group in groups))
    served_by.update(groups_of)
    apis = {lid: paths for lid, paths in api_operations(template).items()
            if any(op.function in serving for ops in paths.values() for op in ops.values())}
    for lid in sorted(r for r, res in template.resources.items()
                      if res["Type"] in ("AWS::ApiGatewayV2::Api", "AWS::ApiGateway::Method")):
        report.drift(f"{lid} ({template.resources[lid]['Type']}) defines routes the contract does not read: "
                     "extend check_routes in infra/contract.py")
    if not apis:
        report.drift(f"no REST API of the template integrates {', '.join(sorted(serving))}: "
                     "the router's routes are not reachable through API Gateway")
        return

    used_exceptions = set()
    for api, paths in sorted(apis.items()):
        used_ops = set()
        for route in sorted(routes, key=lambda r: (r.path, r.method)):
            label, where = f"{route.method} {route.path}", ", ".join(route.where)
            request = sample_request(route.path)
            scored = [(api_specificity(p, request), p) for p in paths]
            scored = [(score, p) for score, p in scored if score is not None]
            resource = max(scored)[1] if scored else None
            op = None
            if resource is not None:
                ops = paths[resource]
                op = ops.get("ANY") if route.method == "ANY" else ops.get(route.method) or ops.get("ANY")
            if op is not None:
                used_ops.add((op.method, op.path))
                if route.method == "GET" and "HEAD" in paths[resource]:
                    used_ops.add(("HEAD", resource))
            exception = ROUTES_NOT_ON_API.get((route.method, route.path))
            if exception is not None:
                used_exceptions.add(("ROUTES_NOT_ON_API", (route.method, route.path)))
                if op is None:
                    report.info("skipped", f"{label} ({where}) is not on {api}: {exception} [ROUTES_NOT_ON_API]")
                else:
                    report.drift(f"{label} is listed in ROUTES_NOT_ON_API but {api} serves it ({op.method} "
                                 f"{op.path}): delete the entry")
                continue
            if op is None:
                why = "no API path matches it" if resource is None else \
                    f"API path {resource} has no {route.method} (nor x-amazon-apigateway-any-method)"
                report.drift(f"{label} is served by the router ({where}) but missing from {api}: {why}, so on AWS "
                             f"it is a 404. Add it to the API's paths in infra/template.yaml like its neighbours "
                             "(or, if deliberate, to ROUTES_NOT_ON_API with the reason)")
            elif route.group not in groups_of.get(op.function, set()):
                report.drift(f"{label} ({where}, in `{route.group}`): {api} sends {op.method} {op.path} to "
                             f"{op.function or op.uri or 'no Lambda function'}, which does not serve that route")
            else:
                report.ok(f"{label} -> {api} {op.method} {op.path} ({op.function})")

        for path, ops in sorted(paths.items()):
            for method, op in sorted(ops.items()):
                if op.function not in serving:
                    report.info("other", f"{api} {method} {path} -> {op.function or op.uri or 'not a Lambda'} "
                                "(not the router: not compared)")
                    continue
                key, label = (method, path), f"{api} {method} {path}"
                if key not in used_ops:
                    if key in API_WITHOUT_ROUTE:
                        used_exceptions.add(("API_WITHOUT_ROUTE", key))
                        report.info("skipped", f"{label} has no router route: {API_WITHOUT_ROUTE[key]} [API_WITHOUT_ROUTE]")
                    else:
                        report.drift(f"{label} goes to {op.function}, but the router serves no route there "
                                     f"(a 404 from the router): remove it, add the route, or list it in API_WITHOUT_ROUTE")
                elif key in API_WITHOUT_ROUTE:
                    used_exceptions.add(("API_WITHOUT_ROUTE", key))
                    report.drift(f"{label} is listed in API_WITHOUT_ROUTE but the router serves it now: delete the entry")
                if not (op.streamed and op.transfer_stream):
                    report.drift(f"{label} is not a streaming integration (the `response-streaming-invocations` URI "
                                 "and `responseTransferMode: STREAM`): the chat function answers each invocation "
                                 "the way its front invokes, and every route it serves is streamed (template header)")
                if key in PUBLIC_OPERATIONS:
                    used_exceptions.add(("PUBLIC_OPERATIONS", key))
                    if op.authorized:
                        report.drift(f"{label} is listed in PUBLIC_OPERATIONS but requires the authorizer: delete the entry")
                    else:
                        report.info("public", f"{label}: {PUBLIC_OPERATIONS[key]} [PUBLIC_OPERATIONS]")
                elif not op.authorized:
                    report.drift(f"{label} does not require the key authorizer (its `security` names none): every "
                                 "router route but those in PUBLIC_OPERATIONS is behind it")

    for name, table in (("ROUTES_NOT_ON_API", ROUTES_NOT_ON_API), ("API_WITHOUT_ROUTE", API_WITHOUT_ROUTE),
                        ("PUBLIC_OPERATIONS", PUBLIC_OPERATIONS)):
        for key in sorted(set(table)):
            if (name, key) not in used_exceptions:
                report.drift(f"{name} lists {' '.join(key)}, which matches nothing any more: delete the entry")


def check_stages(original: dict, template: Template, report: Report):
    """Every stage of a REST API is one the SAM template names: SAM adds a stage called `Stage`
    (through the deployment's `StageName`) unless the API sets `OpenApiVersion`, and that stage
    has no access logs, throttling or usage plan, so anyone could call the API through it."""
    report.section("[stages] REST API stages")
    named = set()
    for lid, resource in original.get("Resources", {}).items():
        if resource.get("Type") == "AWS::Serverless::Api":
            named.add((lid, template.eval((resource.get("Properties") or {}).get("StageName"))))
    for lid, resource in template.resources.items():
        properties = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::ApiGateway::Deployment" and "StageName" in properties:
            api = (properties.get("RestApiId") or {}).get("Ref")
            report.drift(f"{lid} creates the stage `{template.eval(properties['StageName'])}` of {api}, which the "
                         f"template does not name (set `OpenApiVersion` on the API): it would have no access "
                         f"logs, throttling or usage plan")
        if resource.get("Type") == "AWS::ApiGateway::Stage":
            api = (properties.get("RestApiId") or {}).get("Ref")
            stage = template.eval(properties.get("StageName"))
            if (api, stage) not in named:
                report.drift(f"{lid} is a stage `{stage}` of {api} that the template does not name")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(HERE.parent))
    parser.add_argument("--template", default=None, help="SAM template (default: infra/template.yaml)")
    parser.add_argument("--translated", default=None, help="the template already translated by translate.py")
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="evaluate the template with this parameter value instead of its default")
    parser.add_argument("--router-source", action="append", metavar="PATH",
                        default=[p for p in os.environ.get("CONTRACT_ROUTER_SOURCES", "").split(os.pathsep) if p],
                        help="a .rs file or a folder of them to read the router's routes from instead of "
                        "shared/src/http.rs and shared/src/http/ (repeatable; default from CONTRACT_ROUTER_SOURCES)")
    parser.add_argument("--quiet", action="store_true", help="print only the drift")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    template_path = Path(args.template) if args.template else root / "infra" / "template.yaml"

    sys.path.insert(0, str(HERE))
    import translate  # noqa: E402  (infra/translate.py, same venv)
    from samtranslator.yaml_helper import yaml_parse

    text = template_path.read_text(encoding="utf-8")
    original = yaml_parse(text)
    if args.translated:
        translated = json.loads(Path(args.translated).read_text(encoding="utf-8"))
    else:
        import logging

        from samtranslator.translator.transform import transform

        logging.getLogger("samtranslator").setLevel(logging.ERROR)
        os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
        doc = copy.deepcopy(original)
        translate.replace_local_code(doc)
        try:
            translated = transform(doc, {}, translate.OfflinePolicyLoader())
        except Exception as error:  # noqa: BLE001
            print(f"contract: cannot translate {template_path}: {error}", file=sys.stderr)
            return 2
    overrides = dict(p.split("=", 1) for p in args.parameter if "=" in p)
    unknown = sorted(set(overrides) - set(translated.get("Parameters", {}))) + [p for p in args.parameter if "=" not in p]
    if unknown:
        print(f"contract: unknown or malformed --parameter: {', '.join(unknown)}", file=sys.stderr)
        return 2
    template = Template(translated, overrides)
    crate = SharedCrate(root)
    report = Report()
    print(f"contract: {template_path.relative_to(root) if template_path.is_relative_to(root) else template_path} "
          f"against the code in {root}")

    bins = binaries(root)
    functions = []
    for lid, resource in original.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        binary = ((resource.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")
        if binary is None or binary not in bins:
            report.section(f"[{lid}]")
            report.drift(f"{lid} builds binary `{binary}`, which no crate under functions/ defines")
            continue
        functions.append(Function(binary, lid, *bins[binary]))
    deployed = {f.binary for f in functions}
    used_exemptions: set = set()
    local_only = sorted(set(bins) - deployed)

    for fn in functions:
        check_function(fn, template, crate, root, report, used_exemptions)
    served_by: dict[str, set] = {}  # logical id -> route groups, filled by check_routes
    check_routes(template, functions, crate, root, report, args.router_source, served_by)
    check_key_writers(template, functions, served_by, report)
    check_stages(original, template, report)
    stale = sorted((scope, name) for scope, names in NOT_EXECUTED.items() for name in names
                   if (scope, name) not in used_exemptions and (scope == "*" or scope in deployed))
    if stale:
        report.section("[allow-list] NOT_EXECUTED entries that matched no call (delete them, or fix their names)")
        for scope, name in stale:
            report.info("note", f"{scope}: {name}")
    report.section("[local tools] binaries the template does not deploy")
    report.info("note", ", ".join(local_only) or "none")
    report.print(args.quiet)
    print()
    if report.problems:
        print(f"contract: FAILED: {report.problems} drift(s) between the template and the code")
        return 1
    print(f"contract: template and code agree ({len(functions)} functions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
