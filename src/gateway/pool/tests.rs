//! The pool and the HTTP/1.1 wire against instances that response with
//! bytes written by hand: framing, reuse, deadlines and malformed responses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::{SendError, send};
use crate::gateway::h1_client;

/// A request as an instance received it: head and body, raw.
type Received = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// Reads one request (head, and a body framed by Content-Length or
/// chunked coding) off `stream`; none at the connection's end.
async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok());
            let chunked = head.contains("transfer-encoding: chunked");
            let body_start = end + 4;
            let complete = match (length, chunked) {
                (_, true) => pending[body_start..]
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map(|at| body_start + at + 5),
                (Some(n), false) => (pending.len() >= body_start + n).then_some(body_start + n),
                (None, false) => Some(body_start),
            };
            if let Some(total) = complete {
                return Some(pending.drain(..total).collect());
            }
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// An instance answering each connection's requests with `responses`, in
/// turn (`None`: close the connection instead of answering); it counts
/// connections and keeps the requests.
async fn instance(responses: Vec<Option<&'static str>>) -> (String, Arc<AtomicUsize>, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let received = Received::default();
    let (count, keep) = (connections.clone(), received.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (responses, keep) = (responses.clone(), keep.clone());
            tokio::spawn(async move {
                let mut pending = Vec::new();
                for response in responses {
                    let Some(request) = read_request(&mut stream, &mut pending).await else {
                        return;
                    };
                    keep.lock().unwrap().push(request);
                    let Some(response) = response else { return };
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, connections, received)
}

/// A deadline no test reaches.
fn far() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// How long a response's body may pause in these tests.
const PAUSE: Duration = Duration::from_millis(300);

/// Sends a request for `/thing?x=1` to `address`, as the client of
/// `client.example` asked it.
async fn ask(
    address: &str,
    method: http::Method,
    body: Body,
) -> Result<http::Response<super::UpstreamBody>, SendError> {
    ask_by(address, method, body, far()).await
}

/// [`ask`], with the response due by `deadline`.
async fn ask_by(
    address: &str,
    method: http::Method,
    body: Body,
    deadline: Instant,
) -> Result<http::Response<super::UpstreamBody>, SendError> {
    let (parts, ()) = http::Request::builder()
        .method(method)
        .uri("/ignored")
        .header(http::header::HOST, "client.example")
        .body(())
        .unwrap()
        .into_parts();
    send(
        address,
        &["/thing", "?x=1"],
        &parts,
        None,
        body,
        deadline,
        PAUSE,
    )
    .await
}

async fn read_all(
    response: http::Response<super::UpstreamBody>,
) -> Result<(http::StatusCode, Vec<u8>, Option<http::HeaderMap>), h1_client::Error> {
    let status = response.status();
    let collected = response.into_body().collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((status, collected.to_bytes().to_vec(), trailers))
}

#[tokio::test]
async fn chunked_responses_are_decoded_with_their_trailers_and_the_connection_is_reused() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                   5;note=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
    let (address, connections, received) = instance(vec![Some(chunked), Some(chunked)]).await;
    for _ in 0..2 {
        let response = ask(&address, http::Method::GET, Body::empty())
            .await
            .unwrap();
        let (status, body, trailers) = read_all(response).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "42");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    let first = received.lock().unwrap()[0].clone();
    let head = String::from_utf8_lossy(&first).to_ascii_lowercase();
    // The instance's own Host, not the client's.
    let request_line = format!("get /thing?x=1 http/1.1\r\nhost: {address}\r\n");
    assert!(head.starts_with(&request_line), "{head}");
    assert!(!head.contains("client.example"));
    // A GET without a body announces none.
    assert!(!head.contains("content-length") && !head.contains("transfer-encoding"));
}

#[tokio::test]
async fn a_response_read_to_the_close_does_not_keep_its_connection() {
    let until_close = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it";
    let (address, connections, _) = instance(vec![Some(until_close)]).await;
    for _ in 0..2 {
        let response = ask(&address, http::Method::GET, Body::empty())
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "text/plain");
        // The instance's handler ends after one response and closes.
        let (_, body, _) = read_all(response).await.unwrap();
        assert_eq!(body, b"all of it");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_response_framed_both_ways_is_read_by_its_coding_and_ends_its_connection() {
    let both = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
                5\r\nhello\r\n0\r\n\r\n";
    let (address, connections, _) = instance(vec![Some(both), Some(both)]).await;
    for _ in 0..2 {
        let response = ask(&address, http::Method::GET, Body::empty())
            .await
            .unwrap();
        assert!(response.headers().get("content-length").is_none());
        assert_eq!(read_all(response).await.unwrap().1, b"hello");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn interim_responses_are_passed_over_and_some_responses_have_no_body() {
    let responses = vec![
        Some("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
        Some("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
        Some("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"),
    ];
    let (address, connections, _) = instance(responses).await;
    let response = ask(&address, http::Method::GET, Body::empty())
        .await
        .unwrap();
    let (status, body, _) = read_all(response).await.unwrap();
    assert_eq!((status.as_u16(), body.len()), (204, 0));
    // A response to HEAD states a length but carries no body.
    let response = ask(&address, http::Method::HEAD, Body::empty())
        .await
        .unwrap();
    assert_eq!(response.headers()["content-length"], "5");
    let (status, body, _) = read_all(response).await.unwrap();
    assert_eq!((status.as_u16(), body.len()), (200, 0));
    let response = ask(&address, http::Method::GET, Body::empty())
        .await
        .unwrap();
    assert_eq!(read_all(response).await.unwrap().1, b"ok");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // `Connection: close` was heeded: the next request needs a new one.
    let _ = ask(&address, http::Method::GET, Body::empty()).await;
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn malformed_responses_are_errors_not_responses() {
    for raw in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "nonsense\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
    ] {
        let (address, _, _) = instance(vec![Some(raw)]).await;
        let outcome = ask(&address, http::Method::GET, Body::empty()).await;
        assert!(
            matches!(
                outcome,
                Err(SendError::Exchange(h1_client::Error::Malformed(_)))
            ),
            "{raw:?} gave {:?}",
            outcome.map(|r| r.status())
        );
    }
    // A body cut short by the connection's end is an error of the body.
    for raw in [
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        // No size at all, read loosely, would be the last chunk.
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n;x\r\n\r\n",
    ] {
        // The instance writes it and closes.
        let (address, _, _) = instance(vec![Some(raw)]).await;
        let response = ask(&address, http::Method::GET, Body::empty())
            .await
            .unwrap();
        assert!(read_all(response).await.is_err(), "{raw:?}");
    }
}

#[tokio::test]
async fn request_bodies_go_with_their_length_or_chunked() {
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (address, _, received) = instance(vec![Some(ok), Some(ok), Some(ok)]).await;
    let response = ask(&address, http::Method::POST, Body::from("abc"))
        .await
        .unwrap();
    read_all(response).await.unwrap();
    let chunks = tokio_stream::iter(["one", "two"].map(Ok::<_, std::io::Error>));
    let response = ask(&address, http::Method::PUT, Body::from_stream(chunks))
        .await
        .unwrap();
    read_all(response).await.unwrap();
    let response = ask(&address, http::Method::POST, Body::empty())
        .await
        .unwrap();
    read_all(response).await.unwrap();
    let received = received.lock().unwrap();
    let text = |i: usize| String::from_utf8_lossy(&received[i]).to_string();
    assert!(text(0).starts_with("POST /thing?x=1 HTTP/1.1\r\n"));
    assert!(
        text(0).ends_with("content-length: 3\r\n\r\nabc"),
        "{}",
        text(0)
    );
    assert!(
        text(1).ends_with("transfer-encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"),
        "{}",
        text(1)
    );
    // An empty POST still says it is empty.
    assert!(
        text(2).ends_with("content-length: 0\r\n\r\n"),
        "{}",
        text(2)
    );
}

#[tokio::test]
async fn a_request_that_meets_a_connection_closed_while_idle_goes_out_again_when_it_may() {
    // Each connection answers once, then closes on the next request
    // unanswered, as an instance whose idle timeout just ran out.
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (address, connections, _) = instance(vec![Some(ok), None]).await;
    let response = ask(&address, http::Method::GET, Body::empty())
        .await
        .unwrap();
    read_all(response).await.unwrap();
    let response = ask(&address, http::Method::GET, Body::empty())
        .await
        .unwrap();
    assert_eq!(read_all(response).await.unwrap().1, b"ok");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    // A POST is not sent twice: the caller hears the connection closed.
    let outcome = ask(&address, http::Method::POST, Body::from("x")).await;
    assert!(
        matches!(outcome, Err(SendError::Exchange(h1_client::Error::Closed))),
        "{:?}",
        outcome.map(|r| r.status())
    );
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_response_not_in_by_its_deadline_times_out_and_its_connection_is_not_kept() {
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    // The second request gets no response: the instance waits for a third.
    let (address, connections, _) = instance(vec![Some(ok), Some(""), Some(ok)]).await;
    let response = ask(&address, http::Method::GET, Body::empty())
        .await
        .unwrap();
    assert_eq!(read_all(response).await.unwrap().1, b"ok");
    // The kept connection's timer is due far later than this deadline.
    let started = Instant::now();
    let soon = started + Duration::from_millis(200);
    let outcome = ask_by(&address, http::Method::GET, Body::empty(), soon).await;
    assert!(matches!(outcome, Err(SendError::TimedOut)));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // The silent connection is gone: the next request makes a new one.
    let response = ask(&address, http::Method::GET, Body::empty())
        .await
        .unwrap();
    assert_eq!(read_all(response).await.unwrap().1, b"ok");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_that_pauses_too_long_fails_and_its_connection_is_not_kept() {
    // Every response's body stops after two of its ten bytes; the
    // instance then waits for another request.
    let slow = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok";
    let (address, connections, _) = instance(vec![Some(slow), Some(slow)]).await;
    let response = ask(&address, http::Method::GET, Body::empty())
        .await
        .unwrap();
    let started = Instant::now();
    let outcome = read_all(response).await;
    assert!(
        matches!(outcome, Err(h1_client::Error::TimedOut)),
        "{outcome:?}"
    );
    assert!(started.elapsed() >= PAUSE && started.elapsed() < Duration::from_secs(5));
    // The stalled connection is gone: the next request makes a new one.
    let response = ask(&address, http::Method::GET, Body::empty())
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_target_that_cannot_be_written_is_refused_before_sending() {
    let (address, connections, _) = instance(vec![]).await;
    let (parts, ()) = http::Request::new(()).into_parts();
    for path in [["/a b", ""], ["/x", "?\r\nx-evil: 1"]] {
        let outcome = send(&address, &path, &parts, None, Body::empty(), far(), PAUSE).await;
        assert!(matches!(
            outcome,
            Err(SendError::Exchange(h1_client::Error::Target))
        ));
    }
    let outcome = send(
        "bad host:1",
        &["/"],
        &parts,
        None,
        Body::empty(),
        far(),
        PAUSE,
    )
    .await;
    assert!(matches!(
        outcome,
        Err(SendError::Exchange(h1_client::Error::Target))
    ));
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_response_announcing_a_body_where_none_may_be_does_not_keep_its_connection() {
    let responses = vec![
        Some("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
        Some("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ];
    let (address, connections, _) = instance(responses).await;
    for _ in 0..2 {
        let response = ask(&address, http::Method::GET, Body::empty())
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        read_all(response).await.unwrap();
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_still_streaming_when_the_response_comes_is_sent_to_its_end() {
    // Answers as soon as the head is in, then reads the body on, as a
    // streaming handler does; it keeps what it read.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (got, read) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        stream.write_all(response).await.unwrap();
        while !seen.ends_with(b"0\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let _ = got.send(seen);
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<&'static str, std::io::Error>>(1);
    tx.send(Ok("one")).await.unwrap();
    // The rest comes once the response has had time to arrive.
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let _ = tx.send(Ok("two")).await;
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let response = ask(&address, http::Method::POST, body).await.unwrap();
    assert_eq!(read_all(response).await.unwrap().1, b"ok");
    let seen = String::from_utf8(read.await.unwrap()).unwrap();
    assert!(
        seen.ends_with("3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"),
        "{seen}"
    );
}
