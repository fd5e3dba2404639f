//! The floor of a Lambda function: a process that does nothing but speak the Runtime API, with
//! blocking std I/O on one keep-alive connection. It polls `/next`, answers each event with a
//! fixed small buffered HTTP answer, and polls again. Its start-to-first-poll time is the
//! baseline beside each function's init (`bench-driver coldstart`, whose stand-in never answers:
//! the first poll waits until it hangs up), and its CPU and wall time per invocation the baseline
//! beside a function's (`bench-driver invoke`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

const ANSWER: &str = r#"{"statusCode":200,"headers":{"content-type":"application/json"},"isBase64Encoded":false,"body":"{}"}"#;

/// Reads one response head and body; the request id header's value when there is one.
fn read_response(reader: &mut BufReader<TcpStream>) -> Option<Option<String>> {
    let mut length = 0usize;
    let mut id = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if name == "content-length" {
                length = value.trim().parse().ok()?;
            } else if name == "lambda-runtime-aws-request-id" {
                id = Some(value.trim().to_owned());
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(id)
}

fn main() {
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        eprintln!("lambda-floor: AWS_LAMBDA_RUNTIME_API is not set");
        std::process::exit(2);
    };
    let Ok(stream) = TcpStream::connect(&api) else {
        std::process::exit(1);
    };
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        std::process::exit(1);
    };
    let mut reader = BufReader::new(stream);
    let next = format!(
        "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: {api}\r\nUser-Agent: lambda-floor\r\n\r\n"
    );
    loop {
        if writer.write_all(next.as_bytes()).is_err() {
            return;
        }
        // A stand-in that never answers (the init timer) hangs up instead: the loop ends.
        let Some(Some(id)) = read_response(&mut reader) else {
            return;
        };
        let response = format!(
            "POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\nHost: {api}\r\n\
             User-Agent: lambda-floor\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{ANSWER}",
            ANSWER.len()
        );
        if writer.write_all(response.as_bytes()).is_err() || read_response(&mut reader).is_none() {
            return;
        }
    }
}
