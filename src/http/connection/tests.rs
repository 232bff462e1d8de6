//! The connection guard against byte streams of every shape.
use super::framing::Framing;
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Everything the server side reads from `input`, split into reads of `step` bytes.
async fn served(input: &[u8], step: usize) -> (Vec<u8>, Framing) {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    for part in input.chunks(step.max(1)) {
        client.write_all(part).await.unwrap();
    }
    drop(client);
    let mut guarded = GuardedIo::new(server);
    let mut seen = Vec::new();
    guarded.read_to_end(&mut seen).await.unwrap();
    (seen, guarded.framing)
}

#[tokio::test]
async fn requests_pass_unchanged_whatever_the_read_sizes() {
    let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
GET /d HTTP/1.1\r\n\r\n";
    for step in [1, 2, 3, 7, 64, 4096] {
        let (seen, framing) = served(stream, step).await;
        assert_eq!(seen, stream, "step {step}");
        assert_eq!(framing, Framing::Head, "step {step}");
    }
}

#[tokio::test]
async fn both_framings_are_refused_before_the_server_sees_the_head() {
    let first: &[u8] = b"GET /ok HTTP/1.1\r\n\r\n";
    let bad: &[u8] =
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let both = [first, bad].concat();
    for step in [1, 5, 4096] {
        let (seen, framing) = served(&both, step).await;
        assert_eq!(seen, first, "step {step}");
        assert_eq!(framing, Framing::Refused);
    }
    // Either order of the two headers.
    let reversed: &[u8] =
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(served(reversed, 4096).await, (Vec::new(), Framing::Refused));
}

#[tokio::test]
async fn what_the_check_cannot_follow_goes_through_unchecked() {
    let upgrade: &[u8] =
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05frame";
    assert_eq!(
        served(upgrade, 4096).await,
        (upgrade.to_vec(), Framing::Off)
    );
    let garbage: &[u8] = b"NOT HTTP AT ALL\r\n\r\n";
    assert_eq!(served(garbage, 4096).await.1, Framing::Off);
    let partial: &[u8] = b"GET / HTTP/1.1\r\nHost:";
    assert_eq!(served(partial, 4096).await.0, partial);
    let huge = [
        b"GET / HTTP/1.1\r\nX-Big: ".as_slice(),
        &vec![b'a'; MAX_HEAD + 10],
        b"\r\n\r\n",
    ]
    .concat();
    let (seen, framing) = served(&huge, 4096).await;
    assert_eq!(seen.len(), huge.len());
    assert_eq!(framing, Framing::Off);
}

#[tokio::test]
async fn closing_writes_the_refusal_then_lingers_until_the_client_closes() {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let mut guarded = GuardedIo::refusing(server, REFUSED_BUSY);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let closing = tokio::spawn(async move { guarded.shutdown().await });
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 503"));
    let text = String::from_utf8_lossy(&answer);
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(body.len(), 45);
    // The client may still be sending: its bytes are read, not reset.
    client.write_all(&[b'x'; 100_000]).await.unwrap();
    drop(client);
    closing.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn lingering_is_bounded_by_idle_time() {
    let (_client, server) = tokio::io::duplex(1 << 16);
    let mut guarded = GuardedIo::new(server);
    let started = Instant::now();
    guarded.shutdown().await.unwrap();
    assert!(started.elapsed() >= LINGER_IDLE);
    assert!(started.elapsed() < LINGER_TOTAL);
}

#[test]
fn refusal_bodies_match_their_lengths() {
    for reply in [REFUSED_FRAMING, REFUSED_BUSY] {
        let text = std::str::from_utf8(reply).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len(), "{head}");
    }
}

#[tokio::test]
async fn an_upgrade_request_the_server_declines_does_not_switch_the_check_off() {
    let declined: &[u8] = b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n";
    let bad: &[u8] =
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (seen, framing) = served(&[declined, bad].concat(), 4096).await;
    assert_eq!(seen, declined);
    assert_eq!(framing, Framing::Refused);
}

#[tokio::test]
async fn after_the_server_answers_an_upgrade_the_bytes_are_the_tunnels() {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let switched = Arc::new(AtomicBool::new(false));
    let mut guarded = GuardedIo::new(server).with_upgrade_flag(Arc::clone(&switched));
    let head: &[u8] = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    client.write_all(head).await.unwrap();
    let mut got = vec![0u8; head.len()];
    guarded.read_exact(&mut got).await.unwrap();
    // A body that merely looks like an answer changes nothing; the server's word does.
    guarded
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        .await
        .unwrap();
    switched.store(true, Ordering::Release);
    // Tunnel bytes that would look like a refused request to the framing check.
    let inside: &[u8] =
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    client.write_all(inside).await.unwrap();
    let mut got = vec![0u8; inside.len()];
    guarded.read_exact(&mut got).await.unwrap();
    assert_eq!(got, inside);
}
