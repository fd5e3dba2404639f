//! The floor of an HTTP/1 reverse proxy on this machine: hyper's server and pooled client, on
//! tokio's multi-threaded runtime as the gateway is, with `TCP_NODELAY` on every socket. Each
//! request goes to the upstream as it came (body collected, headers but `host` kept) and the
//! upstream's answer streams back frame by frame. Nothing is parsed, checked or recorded, so
//! what it adds to a request is what the hops themselves cost (two more sockets, hyper's
//! per-chunk hand-over between its client connection task and the server's, the threads'
//! wake-ups): the baseline beside the gateway's keep-alive stream rows. With `--tcp` it relays
//! bytes without reading HTTP at all (a connection to the upstream per client connection): the
//! cost of the hop alone.
//!
//! Usage: proxy-floor --upstream http://127.0.0.1:PORT --listen 127.0.0.1:0 [--tcp]
//! (prints its URL).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

fn flag(name: &str) -> bool {
    std::env::args().skip(1).any(|arg| arg == name)
}

/// Relays one client connection's bytes to a connection of its own to the upstream, both ways.
async fn relay_tcp(mut client: tokio::net::TcpStream, upstream: String) {
    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

fn argument(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == name {
            return args.next();
        }
    }
    None
}

async fn forward(
    client: Client<HttpConnector, http_body_util::Full<Bytes>>,
    upstream: hyper::Uri,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let failed = |status: StatusCode| {
        let mut response = Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = status;
        Ok(response)
    };
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return failed(StatusCode::BAD_REQUEST);
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{upstream}{}", path.trim_start_matches('/')).parse() else {
        return failed(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    parts.headers.remove(hyper::header::HOST);
    let upstream_request = Request::from_parts(parts, http_body_util::Full::new(body));
    match client.request(upstream_request).await {
        Ok(response) => Ok(response.map(BodyExt::boxed)),
        Err(_) => failed(StatusCode::BAD_GATEWAY),
    }
}

#[tokio::main]
async fn main() {
    let (Some(upstream), Some(listen)) = (argument("--upstream"), argument("--listen")) else {
        eprintln!("usage: proxy-floor --upstream http://HOST:PORT --listen ADDR");
        std::process::exit(2);
    };
    let Ok(upstream) = format!("{}/", upstream.trim_end_matches('/')).parse::<hyper::Uri>() else {
        eprintln!("proxy-floor: --upstream is not a URL");
        std::process::exit(2);
    };
    let listener = match TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("proxy-floor: cannot listen on {listen}: {error}");
            std::process::exit(1);
        }
    };
    if let Ok(address) = listener.local_addr() {
        println!("http://{address}");
    }
    let tcp = flag("--tcp");
    let upstream_address = upstream.authority().map(|a| a.to_string()).unwrap_or_default();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        if tcp {
            tokio::spawn(relay_tcp(stream, upstream_address.clone()));
            continue;
        }
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service =
                service_fn(move |request| forward(client.clone(), upstream.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
