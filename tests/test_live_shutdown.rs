//! The live example stops cleanly on Ctrl-C (SIGINT) while a page holds a
//! live stream open: the flow shuts down, which ends the stream, and the
//! server's graceful shutdown can finish.

mod common;
#[path = "common/examples.rs"]
mod examples;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_example_stops_on_ctrl_c_with_a_stream_open() {
    let db = common::db().await;
    let mut child = Command::new(examples::example_async("live").await)
        .env("DATABASE_URL", &db.url)
        .env("LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::task::spawn_blocking(move || {
        let addr = lines
            .by_ref()
            .map(|l| l.unwrap())
            .find_map(|l| l.strip_prefix("live example on http://").map(str::to_owned));
        (addr, lines)
    });
    let (addr, mut lines) = tokio::time::timeout(Duration::from_secs(60), addr)
        .await
        .expect("the example listens within 60 s")
        .unwrap();
    let addr = addr.expect("the example printed its address");

    // A page's live stream, held open.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /events/counts HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "the stream is open");

    // SAFETY: kill has no preconditions; the pid is our child's.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = tokio::task::spawn_blocking(move || {
        let rest: Vec<String> = lines.by_ref().map(|l| l.unwrap()).collect();
        (child.wait().unwrap(), rest)
    });
    let (status, rest) = tokio::time::timeout(Duration::from_secs(30), status)
        .await
        .expect("the example stops within 30 s of Ctrl-C")
        .unwrap();
    assert!(status.success(), "the example exited with {status}");
    assert_eq!(rest, ["stopping", "stopped"]);
    // The stream ended with it.
    let mut tail = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .read_to_end(&mut tail)
        .expect("the stream ends, not times out");
}
