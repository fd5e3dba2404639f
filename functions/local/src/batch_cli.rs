//! `gateway-local batch`: submit and follow batch jobs on a running gateway, local or on AWS,
//! as an HTTP client of its OpenAI-compatible Files, Uploads and Batches APIs (so it needs no
//! store of its own, and the same commands work against the API Gateway endpoint).
//!
//! A file up to `--part-size` is posted whole to `/v1/files`; a larger one goes through the
//! Uploads API in parts, because one request through API Gateway and Lambda carries at most
//! about 6 MB (and gateway-local takes `server.max_body_bytes`, 4 MiB by default).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use gateway::batch::{MAX_FILE_BYTES, MAX_REQUESTS};
use gateway::clock::now_secs;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use md5::Digest;
use reqwest::multipart::{Form, Part};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde_json::{Value, json};

use super::Failure;

/// Where the gateway is and the key to call it with (for every `batch` subcommand).
#[derive(Args)]
pub struct Connection {
    /// The gateway's base URL (without `/v1`)
    #[arg(
        long,
        env = "GATEWAY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// A gateway API key [default: $GATEWAY_API_KEY, else $OPENAI_API_KEY]
    #[arg(long, global = true, hide_env_values = true)]
    key: Option<String>,
}

#[derive(Subcommand)]
pub enum BatchAction {
    /// Upload a JSONL file and start a batch on it; prints the batch id
    Submit {
        file: PathBuf,
        /// The endpoint every line of the file calls
        #[arg(long, default_value = "/v1/chat/completions")]
        endpoint: String,
        /// A metadata pair for the batch, `key=value` (repeatable, at most 16)
        #[arg(long, value_parser = metadata_pair)]
        metadata: Vec<(String, String)>,
        /// Files larger than this go through the Uploads API, in parts of this size. The
        /// default leaves room for the multipart framing under gateway-local's 4 MiB body cap
        /// and API Gateway's payload limit.
        #[arg(long, default_value_t = DEFAULT_PART_SIZE, value_parser = clap::value_parser!(u64).range(MIN_PART_SIZE..=MAX_PART_SIZE))]
        part_size: u64,
    },
    /// List batches, newest first
    List {
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100))]
        limit: u64,
    },
    /// Print a batch's status and request counts
    Status {
        #[arg(value_parser = plain_id)]
        id: String,
    },
    /// Follow a batch until it ends, with a progress bar; fails unless it completed
    Watch {
        #[arg(value_parser = plain_id)]
        id: String,
        /// Give up after this many seconds [default: 25 hours, past any completion window]
        #[arg(long, default_value_t = 25 * 3600)]
        timeout_secs: u64,
    },
    /// Print a batch's output file (or its error file); for a job sent straight to the queue,
    /// its records so far
    Results {
        #[arg(value_parser = plain_id)]
        id: String,
        /// The error file instead of the output file
        #[arg(long, conflicts_with = "custom_id")]
        errors: bool,
        /// Only the result of this `custom_id` (also for jobs sent straight to the queue)
        #[arg(long)]
        custom_id: Option<String>,
        /// The records written so far, output and errors alike, before the files exist
        #[arg(long, conflicts_with_all = ["errors", "custom_id"])]
        so_far: bool,
    },
    /// Cancel a batch: items not yet run are not run
    Cancel {
        #[arg(value_parser = plain_id)]
        id: String,
    },
}

const DEFAULT_PART_SIZE: u64 = 3 * 1024 * 1024;
const MIN_PART_SIZE: u64 = 64 * 1024;
const MAX_PART_SIZE: u64 = 64 * 1024 * 1024;
/// Parts of one upload the gateway takes.
const MAX_PARTS: u64 = 4096;
/// One API call other than a file transfer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// One file or part upload, or one file download.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JSON answer read (a list of 100 batches is far smaller).
const MAX_JSON_BYTES: usize = 8 * 1024 * 1024;
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Failed polls in a row before `watch` gives up (the gateway restarting is not an error).
const MAX_POLL_FAILURES: u32 = 30;

/// Batch, file and job ids are letters, digits, `-` and `_`: they go into URL paths as is.
fn plain_id(text: &str) -> Result<String, String> {
    gateway::batch::messages::check_id("id", text)?;
    Ok(text.to_owned())
}

fn metadata_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not `key=value`")),
    }
}

pub async fn run(connection: Connection, action: BatchAction) -> Result<(), Failure> {
    let client = Client::new(connection)?;
    match action {
        BatchAction::Submit {
            file,
            endpoint,
            metadata,
            part_size,
        } => submit(&client, &file, &endpoint, metadata, part_size).await,
        BatchAction::List { limit } => list(&client, limit).await,
        BatchAction::Status { id } => status(&client, &id).await,
        BatchAction::Watch { id, timeout_secs } => {
            watch(&client, &id, Duration::from_secs(timeout_secs)).await
        }
        BatchAction::Results {
            id,
            errors,
            custom_id,
            so_far,
        } => results(&client, &id, errors, custom_id.as_deref(), so_far).await,
        BatchAction::Cancel { id } => {
            let batch = client
                .json(Method::POST, &format!("batches/{id}/cancel"), None)
                .await?;
            println!("{id} {}", text(at(&batch, "/status")));
            Ok(())
        }
    }
}

/// The gateway's API: its base URL, the key, and one HTTP client with its timeouts.
pub(crate) struct Client {
    base: Url,
    key: String,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(connection: Connection) -> Result<Self, Failure> {
        let key = connection
            .key
            .or_else(|| std::env::var("GATEWAY_API_KEY").ok())
            .or_else(|| std::env::var("OPENAI_API_KEY").ok())
            .filter(|k| !k.is_empty())
            .ok_or("no API key: pass --key, or set GATEWAY_API_KEY (or OPENAI_API_KEY)")?;
        let mut base = Url::parse(connection.url.trim_end_matches('/'))
            .map_err(|e| format!("--url is not a URL: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("--url must start with http:// or https://".into());
        }
        // Relative paths join under `/v1/`, whatever path the base has (API Gateway's stage).
        let path = format!("{}/v1/", base.path().trim_end_matches('/'));
        base.set_path(&path);
        let http = gateway::tls::http_client_builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TRANSFER_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Self { base, key, http })
    }

    fn url(&self, path: &str) -> Result<Url, Failure> {
        Ok(self
            .base
            .join(path)
            .map_err(|e| format!("bad API path `{path}`: {e}"))?)
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.key)
    }

    /// Sends a request; a non-2xx answer becomes the gateway's own error message.
    async fn send(&self, request: RequestBuilder, what: &str) -> Result<Response, Failure> {
        let response = request.send().await.map_err(|e| transport_error(what, e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = read_bounded(response, 64 * 1024, what)
            .await
            .unwrap_or_default();
        Err(ApiFailure::new(what, status, &body).into())
    }

    /// A JSON call (`body` as JSON, if any) and its JSON answer.
    pub(crate) async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let what = format!("{method} /v1/{}", path.split('?').next().unwrap_or(path));
        let mut request = self.request(method, self.url(path)?).timeout(CALL_TIMEOUT);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = self.send(request, &what).await?;
        parse_json(&read_bounded(response, MAX_JSON_BYTES, &what).await?, &what)
    }

    /// A multipart form posted to `path`, and its JSON answer.
    async fn form(&self, path: &str, form: Form) -> Result<Value, Failure> {
        let what = format!("POST /v1/{path}");
        let request = self.request(Method::POST, self.url(path)?).multipart(form);
        let response = self.send(request, &what).await?;
        parse_json(&read_bounded(response, MAX_JSON_BYTES, &what).await?, &what)
    }

    /// Copies a GET's body to standard output as it arrives (result files may be large).
    async fn download(&self, url: Url, what: &str) -> Result<(), Failure> {
        let mut response = self.send(self.request(Method::GET, url), what).await?;
        let mut stdout = std::io::stdout().lock();
        let written = |result: std::io::Result<()>| match result {
            // The reader has what it wanted (`| head`): not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(format!("writing the results to standard output: {e}")),
            Ok(()) => Ok(true),
        };
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(what, e))?
        {
            if !written(stdout.write_all(&chunk))? {
                return Ok(());
            }
        }
        written(stdout.flush())?;
        Ok(())
    }

    async fn batch(&self, id: &str) -> Result<Value, Failure> {
        self.json(Method::GET, &format!("batches/{id}"), None).await
    }
}

/// What failed and why, without the URL (reqwest puts it in its messages).
fn transport_error(what: &str, error: reqwest::Error) -> String {
    let mut reason = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect to the gateway (is it running, and is --url right?)".to_owned()
    } else {
        String::new()
    };
    let error = error.without_url();
    if reason.is_empty() {
        reason = error.to_string();
    }
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    format!("{what}: {reason}")
}

/// The gateway answered with an error: its status and OpenAI error body
/// (`{"error": {"message", "type", "code"}}`) as one line.
#[derive(Debug)]
pub(crate) struct ApiFailure {
    pub(crate) status: StatusCode,
    message: String,
}

impl ApiFailure {
    fn new(what: &str, status: StatusCode, body: &[u8]) -> Self {
        let error = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("error").cloned());
        let message = match error {
            Some(error) => {
                let message = at(&error, "/message").as_str().unwrap_or("(no message)");
                let kind = at(&error, "/code")
                    .as_str()
                    .or_else(|| at(&error, "/type").as_str())
                    .map(|k| format!(" [{k}]"))
                    .unwrap_or_default();
                format!("{what}: HTTP {}: {message}{kind}", status.as_u16())
            }
            None => format!(
                "{what}: HTTP {} without an OpenAI error body (is --url a gateway?)",
                status.as_u16()
            ),
        };
        Self { status, message }
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

/// A response body, refused beyond `cap` bytes.
async fn read_bounded(mut response: Response, cap: usize, what: &str) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(what, e))?
    {
        if body.len() + chunk.len() > cap {
            return Err(format!("{what}: the answer is larger than {cap} bytes").into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_json(body: &[u8], what: &str) -> Result<Value, Failure> {
    Ok(serde_json::from_slice(body).map_err(|e| format!("{what}: the answer is not JSON: {e}"))?)
}

/// The value at a JSON pointer (`Null` when absent).
pub(crate) fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or(&Value::Null)
}

/// A JSON string as plain text (`-` when absent).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn count(batch: &Value, name: &str) -> u64 {
    at(batch, &format!("/request_counts/{name}"))
        .as_u64()
        .unwrap_or(0)
}

/// A job whose requests were sent straight to the queue: no input file, no end, no files.
fn is_direct_job(batch: &Value) -> bool {
    at(batch, "/completion_window") == "none"
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "expired" | "cancelled")
}

async fn submit(
    client: &Client,
    path: &Path,
    endpoint: &str,
    metadata: Vec<(String, String)>,
    part_size: u64,
) -> Result<(), Failure> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("batch.jsonl")
        .to_owned();
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if size == 0 || size > MAX_FILE_BYTES {
        return Err(format!(
            "{} has {size} bytes; a batch file has 1 to {MAX_FILE_BYTES} bytes (and at most {MAX_REQUESTS} requests)",
            path.display()
        )
        .into());
    }
    let file_id = if size <= part_size {
        let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.read_to_end(&mut body)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let part = Part::bytes(body)
            .file_name(name)
            .mime_str("application/jsonl")
            .map_err(|e| format!("multipart: {e}"))?;
        let form = Form::new().text("purpose", "batch").part("file", part);
        let uploaded = client.form("files", form).await?;
        text(at(&uploaded, "/id"))
    } else {
        upload_in_parts(client, &mut file, &name, size, part_size).await?
    };
    eprintln!("uploaded {} as {file_id} ({size} bytes)", path.display());
    let metadata = (!metadata.is_empty()).then(|| metadata.into_iter().collect::<BTreeMap<_, _>>());
    let body = json!({
        "input_file_id": file_id,
        "endpoint": endpoint,
        "completion_window": "24h",
        "metadata": metadata,
    });
    let batch = client.json(Method::POST, "batches", Some(body)).await?;
    println!("{}", text(at(&batch, "/id")));
    Ok(())
}

/// The Uploads API: create the upload, add the parts in order, complete it with the MD5 of the
/// whole file (the gateway checks it); returns the new file's id.
async fn upload_in_parts(
    client: &Client,
    file: &mut std::fs::File,
    name: &str,
    size: u64,
    part_size: u64,
) -> Result<String, Failure> {
    let parts = size.div_ceil(part_size);
    if parts > MAX_PARTS {
        return Err(format!(
            "{size} bytes in parts of {part_size} would be {parts} parts; the gateway takes at most {MAX_PARTS}: raise --part-size"
        )
        .into());
    }
    let upload = client
        .json(
            Method::POST,
            "uploads",
            Some(json!({
                "bytes": size,
                "filename": name,
                "mime_type": "text/jsonl",
                "purpose": "batch",
            })),
        )
        .await?;
    let upload_id = text(at(&upload, "/id"));
    let mut md5 = md5::Md5::new();
    let mut part_ids = Vec::new();
    let mut sent: u64 = 0;
    while sent < size {
        let length = part_size.min(size - sent);
        let mut chunk = vec![0; usize::try_from(length).map_err(|_| "part size too large")?];
        file.read_exact(&mut chunk)
            .map_err(|e| format!("cannot read {name} (did it change?): {e}"))?;
        md5.update(&chunk);
        let form = Form::new().part("data", Part::bytes(chunk).file_name(name.to_owned()));
        let part = client
            .form(&format!("uploads/{upload_id}/parts"), form)
            .await?;
        part_ids.push(text(at(&part, "/id")));
        sent += length;
        eprintln!("uploaded part {} of {parts}", part_ids.len());
    }
    let completed = client
        .json(
            Method::POST,
            &format!("uploads/{upload_id}/complete"),
            Some(json!({
                "part_ids": part_ids,
                "md5": hex::encode(md5.finalize()),
            })),
        )
        .await?;
    let file_id = at(&completed, "/file/id")
        .as_str()
        .ok_or("POST /v1/uploads/complete: the answer names no file")?;
    Ok(file_id.to_owned())
}

async fn list(client: &Client, limit: u64) -> Result<(), Failure> {
    let page = client
        .json(Method::GET, &format!("batches?limit={limit}"), None)
        .await?;
    println!(
        "{:<34} {:<12} {:>9} {:>9} {:>9} {:<8} ENDPOINT",
        "ID", "STATUS", "COMPLETED", "FAILED", "TOTAL", "AGE"
    );
    let now = now_secs();
    for batch in at(&page, "/data")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let age = now.saturating_sub(at(batch, "/created_at").as_u64().unwrap_or(now));
        println!(
            "{:<34} {:<12} {:>9} {:>9} {:>9} {:<8} {}",
            text(at(batch, "/id")),
            text(at(batch, "/status")),
            count(batch, "completed"),
            count(batch, "failed"),
            count(batch, "total"),
            human_age(age),
            text(at(batch, "/endpoint")),
        );
    }
    if at(&page, "/has_more").as_bool() == Some(true) {
        eprintln!("(more batches: raise --limit)");
    }
    Ok(())
}

fn human_age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

async fn status(client: &Client, id: &str) -> Result<(), Failure> {
    print_status(&client.batch(id).await?);
    Ok(())
}

fn print_status(batch: &Value) {
    println!("{} {}", text(at(batch, "/id")), text(at(batch, "/status")));
    println!(
        "requests: {} total, {} completed, {} failed",
        count(batch, "total"),
        count(batch, "completed"),
        count(batch, "failed")
    );
    for field in ["output_file_id", "error_file_id"] {
        let value = at(batch, &format!("/{field}"));
        if !value.is_null() {
            println!("{field}: {}", text(value));
        }
    }
    for error in at(batch, "/errors/data")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let line = at(error, "/line")
            .as_u64()
            .map(|l| format!("line {l}: "))
            .unwrap_or_default();
        println!(
            "error: {line}{} [{}]",
            text(at(error, "/message")),
            text(at(error, "/code"))
        );
    }
}

async fn watch(client: &Client, id: &str, timeout: Duration) -> Result<(), Failure> {
    let started = Instant::now();
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({rate}, ETA {eta})")
            .map_err(|e| format!("progress bar template: {e}"))?
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = write!(out, "{:.1}/s", state.per_sec());
                },
            )
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message("waiting for the gateway");
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut failures = 0;
    let batch = loop {
        match client.batch(id).await {
            Ok(batch) => {
                failures = 0;
                if is_direct_job(&batch) {
                    bar.abandon();
                    return Err(format!(
                        "{id} was sent straight to the queue and never ends; read its results with `batch results {id}` or `--custom-id`"
                    )
                    .into());
                }
                let status = text(at(&batch, "/status"));
                let total = count(&batch, "total");
                if total > 0 {
                    bar.set_length(total);
                }
                bar.set_position(count(&batch, "completed") + count(&batch, "failed"));
                bar.set_message(format!("{status}, {} failed", count(&batch, "failed")));
                if is_terminal(&status) {
                    break batch;
                }
            }
            Err(error) => {
                failures += 1;
                // Not found or refused (4xx) will not heal; a restarting gateway may.
                let refused = error
                    .downcast_ref::<ApiFailure>()
                    .is_some_and(|e| e.status.is_client_error());
                if failures >= MAX_POLL_FAILURES || refused {
                    bar.abandon();
                    return Err(error);
                }
                bar.set_message(format!("retrying: {error}"));
            }
        }
        if started.elapsed() >= timeout {
            bar.abandon();
            return Err(format!(
                "batch {id} did not end within {} s (--timeout-secs)",
                timeout.as_secs()
            )
            .into());
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    bar.finish_and_clear();
    print_status(&batch);
    match at(&batch, "/status").as_str() {
        Some("completed") => Ok(()),
        other => Err(format!("batch {id} ended {}", other.unwrap_or("(no status)")).into()),
    }
}

async fn results(
    client: &Client,
    id: &str,
    errors: bool,
    custom_id: Option<&str>,
    so_far: bool,
) -> Result<(), Failure> {
    if custom_id.is_some() || so_far {
        let mut url = client.url(&format!("batches/{id}/results"))?;
        if let Some(custom_id) = custom_id {
            url.query_pairs_mut().append_pair("custom_id", custom_id);
        }
        return client
            .download(url, &format!("GET /v1/batches/{id}/results"))
            .await;
    }
    let batch = client.batch(id).await?;
    if is_direct_job(&batch) {
        if errors {
            eprintln!(
                "{id} was sent straight to the queue: its records are not split into output and errors"
            );
        }
        let url = client.url(&format!("batches/{id}/results"))?;
        return client
            .download(url, &format!("GET /v1/batches/{id}/results"))
            .await;
    }
    let (field, kind) = if errors {
        ("/error_file_id", "error")
    } else {
        ("/output_file_id", "output")
    };
    let status = text(at(&batch, "/status"));
    let Some(file_id) = at(&batch, field).as_str() else {
        if is_terminal(&status) {
            // Empty files are not written: no record of that kind.
            eprintln!("batch {id} ({status}) has no {kind} file: no {kind} records");
            return Ok(());
        }
        return Err(format!(
            "batch {id} is {status}: its {kind} file is written when it ends (`--so-far` shows the records written so far)"
        )
        .into());
    };
    client
        .download(
            client.url(&format!("files/{file_id}/content"))?,
            &format!("GET /v1/files/{file_id}/content"),
        )
        .await
}
