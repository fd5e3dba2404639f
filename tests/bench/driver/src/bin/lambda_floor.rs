//! The floor of a Lambda cold start: a process that does nothing but poll the Runtime API once,
//! with blocking std I/O. Its start-to-poll time is the baseline beside each function's.

use std::io::{Read, Write};
use std::net::TcpStream;

fn main() {
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        eprintln!("lambda-floor: AWS_LAMBDA_RUNTIME_API is not set");
        std::process::exit(2);
    };
    let Ok(mut stream) = TcpStream::connect(&api) else {
        std::process::exit(1);
    };
    let request = format!(
        "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: {api}\r\nUser-Agent: lambda-floor\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        std::process::exit(1);
    }
    // The stand-in never answers; wait until it hangs up.
    let mut buf = [0u8; 1024];
    let _ = stream.read(&mut buf);
}
