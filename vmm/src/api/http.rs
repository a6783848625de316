//! Just enough HTTP/1.1 for the control socket, both ends: one request per
//! connection, `Content-Length` bodies only (no chunked encoding, no
//! keep-alive), a cap on the request size, and a deadline for the whole
//! request so a stalled client cannot hold a worker. Anything else is
//! refused with the status that says why. `httparse` parses request and
//! status lines and headers; this module keeps the bounds (head size,
//! header count, body size, deadline) and the statuses.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::protocol::ApiError;

/// Most bytes of request line and headers together.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Most header lines in a request; `ctl` sends four.
const MAX_HEADERS: usize = 32;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// A response: status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why reading a request stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The client went away; there is nobody to answer.
    Disconnected,
    /// Answer with this error.
    Refused(ApiError),
}

impl From<ApiError> for ReadError {
    fn from(error: ApiError) -> Self {
        ReadError::Refused(error)
    }
}

/// Reads one request from `stream`, which must arrive complete before
/// `deadline`; the body may hold at most `max_body` bytes.
pub fn read_request(
    stream: &mut UnixStream,
    deadline: Instant,
    max_body: usize,
) -> Result<Request, ReadError> {
    let mut buffer = Vec::with_capacity(1024);
    let (method, path, content_length, body_start) = loop {
        if let Some(head) = parse_head(&buffer)? {
            break head;
        }
        if buffer.len() >= MAX_HEAD_BYTES {
            return Err(head_too_large().into());
        }
        read_some(stream, &mut buffer, deadline, MAX_HEAD_BYTES + 4)?;
    };
    if content_length > max_body {
        return Err(ApiError::TooLarge(format!(
            "the request body has {content_length} bytes; the limit is {max_body}"
        ))
        .into());
    }
    let total = body_start + content_length;
    while buffer.len() < total {
        read_some(stream, &mut buffer, deadline, total)?;
    }
    if buffer.len() > total {
        return Err(ApiError::BadRequest(
            "more bytes than Content-Length announced (one request per connection)".into(),
        )
        .into());
    }
    Ok(Request {
        method,
        path,
        body: buffer.split_off(body_start),
    })
}

fn head_too_large() -> ApiError {
    ApiError::TooLarge(format!(
        "the request line and headers exceed {MAX_HEAD_BYTES} bytes"
    ))
}

/// Reads what is available (up to `limit` bytes in `buffer`) before the
/// deadline.
fn read_some(
    stream: &mut UnixStream,
    buffer: &mut Vec<u8>,
    deadline: Instant,
    limit: usize,
) -> Result<(), ReadError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(too_slow().into());
    }
    // A zero timeout would mean "block forever".
    stream
        .set_read_timeout(Some(remaining.max(Duration::from_millis(1))))
        .map_err(|_| ReadError::Disconnected)?;
    let mut chunk = [0u8; 4096];
    let room = limit.saturating_sub(buffer.len()).clamp(1, chunk.len());
    match stream.read(&mut chunk[..room]) {
        Ok(0) => Err(ReadError::Disconnected),
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(too_slow().into())
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(_) => Err(ReadError::Disconnected),
    }
}

fn too_slow() -> ApiError {
    ApiError::Timeout("the request did not arrive in time; send it in one go".into())
}

/// The request line and headers in `buffer`, parsed by `httparse`: method,
/// path, body length and where the body starts; `None` while the head is
/// incomplete.
fn parse_head(buffer: &[u8]) -> Result<Option<(String, String, usize, usize)>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let body_start = match request.parse(buffer) {
        Ok(httparse::Status::Complete(body_start)) => body_start,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ApiError::TooLarge(format!(
                "the request has more than {MAX_HEADERS} headers"
            )))
        }
        Err(error) => return Err(malformed_head(buffer, error)),
    };
    if std::str::from_utf8(&buffer[..body_start]).is_err() {
        return Err(ApiError::BadRequest(
            "the request headers are not UTF-8".into(),
        ));
    }
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return Err(malformed_head(buffer, httparse::Error::Token));
    };
    if !path.starts_with('/') {
        return Err(malformed_head(buffer, httparse::Error::Token));
    }
    let mut content_length = None;
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = value.parse::<usize>().map_err(|_| {
                ApiError::BadRequest(format!("Content-Length '{value}' is not a number"))
            })?;
            if content_length.is_some_and(|known| known != length) {
                return Err(ApiError::BadRequest(
                    "two different Content-Length headers".into(),
                ));
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::LengthRequired(
                "Transfer-Encoding is not supported; send the body with Content-Length".into(),
            ));
        }
    }
    let content_length = match (content_length, method) {
        (Some(length), _) => length,
        (None, "GET" | "HEAD" | "DELETE") => 0,
        (None, _) => {
            return Err(ApiError::LengthRequired(format!(
                "{method} needs a Content-Length header (0 for an empty body)"
            )))
        }
    };
    Ok(Some((
        method.to_string(),
        path.to_string(),
        content_length,
        body_start,
    )))
}

/// A 400 naming the line `httparse` refused: the request line for errors in
/// it, else the offending header line.
fn malformed_head(buffer: &[u8], error: httparse::Error) -> ApiError {
    let mut lines = buffer.split(|&byte| byte == b'\n');
    let request_line = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let request_line = request_line.trim_end_matches('\r');
    match error {
        httparse::Error::HeaderName | httparse::Error::HeaderValue | httparse::Error::NewLine => {
            ApiError::BadRequest(format!(
                "malformed header ({error}) after '{}'",
                request_line.escape_debug()
            ))
        }
        _ => ApiError::BadRequest(format!(
            "malformed request line '{}'; expected e.g. 'GET /status HTTP/1.1'",
            request_line.escape_debug()
        )),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The bytes of `response` on the wire.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason_phrase(response.status),
        response.body.len()
    )
    .into_bytes();
    out.extend_from_slice(&response.body);
    out
}

/// Writes `response` within `timeout`; a client that does not read loses it.
pub fn write_response(stream: &mut UnixStream, response: &Response, timeout: Duration) {
    if stream.set_write_timeout(Some(timeout)).is_ok() {
        let _ = stream.write_all(&encode_response(response));
    }
}

/// The bytes of a request, as `securevm ctl` sends it.
pub fn encode_request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: securevm\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Reads a whole response. The server may close without reading all the
/// client sent (a refused oversized body, a busy answer): the kernel then
/// reports a reset after the answer, which is just the end of the answer.
pub fn read_reply(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply) {
        Ok(_) => Ok(reply),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !reply.is_empty() => Ok(reply),
        Err(e) => Err(e),
    }
}

/// Splits a complete response (read to end of stream) into status and body.
pub fn decode_response(bytes: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(body_start) = response.parse(bytes).ok()? else {
        return None;
    };
    Some(Response {
        status: response.code?,
        body: bytes[body_start..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn read_from(bytes: &[u8], max_body: usize) -> Result<Request, ReadError> {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        client.write_all(bytes).unwrap();
        drop(client);
        read_request(
            &mut server,
            Instant::now() + Duration::from_secs(2),
            max_body,
        )
    }

    fn refused_status(result: Result<Request, ReadError>) -> u16 {
        match result {
            Err(ReadError::Refused(e)) => e.status(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_request_is_parsed() {
        let request = read_from(&encode_request("PUT", "/policy", b"{\"a\":1}"), 100).unwrap();
        assert_eq!(request.method, "PUT");
        assert_eq!(request.path, "/policy");
        assert_eq!(request.body, b"{\"a\":1}");
        let get = read_from(b"GET /status HTTP/1.1\r\n\r\n", 100).unwrap();
        assert!(get.body.is_empty());
    }

    #[test]
    fn a_body_larger_than_the_cap_is_413_without_reading_it() {
        let head = b"PUT /policy HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n";
        assert_eq!(refused_status(read_from(head, 1000)), 413);
    }

    #[test]
    fn endless_headers_are_413() {
        let mut flood = b"GET /status HTTP/1.1\r\n".to_vec();
        while flood.len() < 2 * MAX_HEAD_BYTES {
            flood.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let (mut server, mut client) = UnixStream::pair().unwrap();
        let writer = thread::spawn(move || {
            let _ = client.write_all(&flood);
        });
        let result = read_request(&mut server, Instant::now() + Duration::from_secs(2), 100);
        assert_eq!(refused_status(result), 413);
        drop(server);
        writer.join().unwrap();
    }

    #[test]
    fn more_headers_than_the_cap_are_413_even_in_a_small_head() {
        let mut head = b"GET /status HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            head.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
        }
        let mut within_cap = head.clone();
        within_cap.extend_from_slice(b"\r\n");
        assert!(read_from(&within_cap, 100).is_ok());
        head.extend_from_slice(b"X-last: a\r\n\r\n");
        assert!(head.len() < MAX_HEAD_BYTES);
        assert_eq!(refused_status(read_from(&head, 100)), 413);
    }

    #[test]
    fn refusals_name_the_line_at_fault() {
        let message = |bad: &[u8]| match read_from(bad, 100) {
            Err(ReadError::Refused(e)) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(message(b"GET status HTTP/1.1\r\n\r\n")
            .contains("malformed request line 'GET status HTTP/1.1'"),);
        assert!(message(b"GET /status HTTP/1.1\r\nno colon here\r\n\r\n")
            .contains("malformed header (invalid header name) after 'GET /status HTTP/1.1'"));
    }

    #[test]
    fn a_put_without_content_length_is_411() {
        assert_eq!(
            refused_status(read_from(b"PUT /vm/pause HTTP/1.1\r\n\r\n", 100)),
            411
        );
        assert_eq!(
            refused_status(read_from(
                b"PUT /policy HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                100
            )),
            411
        );
    }

    #[test]
    fn garbage_is_400() {
        for bad in [
            &b"hello\r\n\r\n"[..],
            b"GET status HTTP/1.1\r\n\r\n",
            b"GET /status HTTP/2\r\n\r\n",
            b"GET /status HTTP/1.1\r\nno colon here\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}extra",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(refused_status(read_from(bad, 100)), 400, "{bad:?}");
        }
    }

    #[test]
    fn a_client_that_disconnects_mid_request_is_just_dropped() {
        let result = read_from(
            b"PUT /policy HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"po",
            100,
        );
        assert!(matches!(result, Err(ReadError::Disconnected)), "{result:?}");
        let result = read_from(b"GET /sta", 100);
        assert!(matches!(result, Err(ReadError::Disconnected)), "{result:?}");
    }

    #[test]
    fn a_stalled_client_is_408_at_the_deadline() {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        client
            .write_all(b"PUT /policy HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
            .unwrap();
        let start = Instant::now();
        let result = read_request(&mut server, start + Duration::from_millis(200), 100);
        assert_eq!(refused_status(result), 408);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        drop(client);
    }

    #[test]
    fn responses_round_trip() {
        let response = Response {
            status: 422,
            body: b"{\"error\":\"no\"}".to_vec(),
        };
        let wire = encode_response(&response);
        assert!(wire.starts_with(b"HTTP/1.1 422 Unprocessable Content\r\n"));
        assert_eq!(decode_response(&wire), Some(response));
        assert_eq!(decode_response(b"not http"), None);
    }
}
