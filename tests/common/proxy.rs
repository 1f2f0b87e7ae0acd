//! A TCP proxy between walflow and PostgreSQL that loses the reply to a
//! `COMMIT`: it reads the client's protocol messages, and for every `n`-th
//! simple-query `COMMIT` once armed, either forwards it and resets the
//! client's connection before any reply (the server commits; the client
//! cannot know), or resets it without forwarding (the server never sees the
//! `COMMIT` and rolls back when the connection closes). Both cases alternate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; stops with the test.
pub struct CommitLosingProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    upstream: SocketAddr,
    every: u64,
    armed: AtomicBool,
    commits: AtomicU64,
    /// COMMITs forwarded whose reply was lost.
    pub forwarded_lost: AtomicU64,
    /// COMMITs dropped with the connection.
    pub dropped: AtomicU64,
}

impl CommitLosingProxy {
    /// Proxies to `upstream`; once [`arm`](Self::arm)ed, breaks every
    /// `every`-th COMMIT.
    pub async fn start(upstream: SocketAddr, every: u64) -> CommitLosingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            every,
            armed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            forwarded_lost: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(connection(client, s.clone()));
            }
        });
        CommitLosingProxy { addr, state }
    }

    pub fn arm(&self, on: bool) {
        self.state.armed.store(on, Ordering::SeqCst);
    }

    /// (COMMITs forwarded with their reply lost, COMMITs dropped).
    pub fn broken(&self) -> (u64, u64) {
        (
            self.state.forwarded_lost.load(Ordering::SeqCst),
            self.state.dropped.load(Ordering::SeqCst),
        )
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        // The proxy reads the protocol: no TLS through it.
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| k != "sslmode")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        u.query_pairs_mut()
            .clear()
            .extend_pairs(pairs)
            .append_pair("sslmode", "disable");
        u.to_string()
    }
}

async fn connection(mut client: TcpStream, state: Arc<State>) {
    let Ok(mut server) = TcpStream::connect(state.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Start-up: untyped messages (an SSL or GSS request, answered with one
    // byte, then the startup message).
    loop {
        let Ok(len) = client.read_u32().await else {
            return;
        };
        let mut body = vec![0u8; len as usize - 4];
        if client.read_exact(&mut body).await.is_err() {
            return;
        }
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        let mut msg = len.to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        if server.write_all(&msg).await.is_err() {
            return;
        }
        if code == 80877103 || code == 80877104 {
            let mut answer = [0u8; 1];
            if server.read_exact(&mut answer).await.is_err()
                || client.write_all(&answer).await.is_err()
            {
                return;
            }
            continue;
        }
        break;
    }
    let (mut server_read, mut server_write) = server.into_split();
    let (mut client_read, mut client_write) = client.into_split();
    // Replies flow until the connection is cut: from then on nothing more
    // reaches the client.
    let (cut, mut cut_seen) = tokio::sync::watch::channel(false);
    let replies = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                biased;
                _ = cut_seen.changed() => break,
                n = server_read.read(&mut buf) => n,
            };
            let Ok(n @ 1..) = n else { break };
            let cut_now = *cut_seen.borrow();
            if cut_now || client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        (client_write, server_read)
    });
    while let Ok(kind) = client_read.read_u8().await {
        let Ok(len) = client_read.read_u32().await else {
            break;
        };
        let mut msg = vec![kind];
        msg.extend_from_slice(&len.to_be_bytes());
        msg.resize(len as usize + 1, 0);
        if client_read.read_exact(&mut msg[5..]).await.is_err() {
            break;
        }
        let commit = kind == b'Q'
            && msg[5..]
                .strip_suffix(&[0])
                .is_some_and(|q| q.trim_ascii().eq_ignore_ascii_case(b"COMMIT"));
        let nth = if commit && state.armed.load(Ordering::SeqCst) {
            let n = state.commits.fetch_add(1, Ordering::SeqCst) + 1;
            n.is_multiple_of(state.every).then_some(n / state.every)
        } else {
            None
        };
        if let Some(k) = nth {
            let _ = cut.send(true);
            if !k.is_multiple_of(2) {
                let _ = server_write.write_all(&msg).await;
                state.forwarded_lost.fetch_add(1, Ordering::SeqCst);
            } else {
                state.dropped.fetch_add(1, Ordering::SeqCst);
            }
            // The client's side is reset before any reply can reach it; the
            // server's side is closed in order (it reads what was sent).
            if let Ok((client_write, server_read)) = replies.await {
                if let Ok(c) = client_read.reunite(client_write) {
                    let _ = c.set_zero_linger();
                    drop(c);
                }
                drop(server_read);
            }
            let _ = server_write.shutdown().await;
            return;
        }
        if server_write.write_all(&msg).await.is_err() {
            break;
        }
    }
}
