//! The two examples as a person runs them, with `DATABASE_URL` on a
//! database that also holds an application's tables: they touch no table
//! outside their own schemas, leave no slot or publication behind, run one
//! after the other (and on two databases of one server at once) as often
//! as wanted, and an error from `main` prints its message.

mod common;
#[path = "common/examples.rs"]
mod examples;

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use examples::example_async;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use walflow::embedded::EmbeddedPostgres;

/// How long a run of the blog example may take, and the live example to
/// start or stop.
const TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished run printed.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the blog example on `url` to the end.
async fn blog(url: &str) -> Run {
    let mut command = Command::new(example_async("blog").await);
    command
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .expect("the blog example ends within its timeout")
        .expect("the blog example runs");
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the blog example on `url` and checks that it succeeded.
async fn blog_succeeds(url: &str) {
    let run = blog(url).await;
    assert!(
        run.status.success()
            && run
                .stdout
                .contains("summary: 1 derived row(s), 3 comment notification(s), 0 dead letter(s)"),
        "the blog example failed ({}):\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
}

/// A running live example.
struct Live {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    addr: String,
}

/// Starts the live example on `url`, on a free port; returns once it
/// listens.
async fn live(url: &str) -> Live {
    let mut child = Command::new(example_async("live").await)
        .env("DATABASE_URL", url)
        .env("LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the live example starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(addr) = line.strip_prefix("live example on http://") {
                return Some(addr.to_owned());
            }
        }
        None
    })
    .await
    .expect("the live example listens within its timeout");
    let Some(addr) = addr else {
        let status = child.wait().await.unwrap();
        panic!("the live example ended before it listened ({status})");
    };
    Live { child, lines, addr }
}

impl Live {
    /// Stops it with Ctrl-C (SIGINT); returns what it printed from then on.
    async fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().expect("the live example runs") as i32;
        // SAFETY: kill has no preconditions; the pid is our child's.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let rest = tokio::time::timeout(TIMEOUT, async {
            let mut rest = Vec::new();
            while let Some(line) = self.lines.next_line().await.unwrap() {
                rest.push(line);
            }
            (self.child.wait().await.unwrap(), rest)
        })
        .await
        .expect("the live example stops within its timeout of Ctrl-C");
        assert!(rest.0.success(), "the live example exited with {}", rest.0);
        rest.1
    }
}

/// One HTTP/1.1 request; the status and the body.
async fn http(addr: &str, method: &str, path: &str, form: Option<&str>) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = form.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut response))
        .await
        .expect("an answer within the timeout")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {response:?}"));
    (status, head.to_owned(), body.to_owned())
}

/// Creates a post through the live example's form; checks the redirect to
/// its page and the page.
async fn create_post(live: &Live, title: &str) {
    let (status, head, body) = http(
        &live.addr,
        "POST",
        "/posts",
        Some(&format!("title={}", title.replace(' ', "+"))),
    )
    .await;
    assert_eq!(status, 303, "{head}\n{body}");
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or(l.strip_prefix("Location: "))
        })
        .expect("a redirect to the post");
    let (status, _, page) = http(&live.addr, "GET", location, None).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(title), "{page}");
}

/// The database's slots and publications (none should remain).
async fn leftovers(db: &common::Db) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database()
         UNION ALL SELECT 'publication ' || pubname FROM pg_publication ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// Waits (bounded) until nothing remains: the server drops a temporary slot
/// a moment after its session ended.
async fn no_leftovers(db: &common::Db) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = leftovers(db).await;
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind on {}: {left:?}",
            db.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The application's tables, as text.
async fn application_tables(db: &common::Db) -> String {
    sqlx::query_scalar(
        "SELECT (SELECT json_agg(p ORDER BY id) FROM public.posts p)::text || ' '
             || (SELECT json_agg(c ORDER BY id) FROM public.comments c)::text",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_in_turn_beside_an_applications_tables() {
    let db = common::db().await;
    // An application's tables, named as the examples' are, with its data.
    db.exec(
        "CREATE TABLE public.posts (id int PRIMARY KEY, title text NOT NULL, author text);
         INSERT INTO public.posts VALUES (7, 'the application''s post', 'ann');
         CREATE TABLE public.comments (id int PRIMARY KEY, post_id int, body text);
         INSERT INTO public.comments VALUES (70, 7, 'the application''s comment');",
    )
    .await;
    let tables = application_tables(&db).await;

    blog_succeeds(&db.url).await;
    no_leftovers(&db).await;
    blog_succeeds(&db.url).await;
    no_leftovers(&db).await;

    let live1 = live(&db.url).await;
    let (status, _, page) = http(&live1.addr, "GET", "/", None).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("No posts yet"), "{page}");
    create_post(&live1, "from the test").await;
    assert_eq!(live1.stop().await, ["stopping", "stopped"]);
    no_leftovers(&db).await;

    // Again: the live example keeps its posts.
    let live2 = live(&db.url).await;
    let (status, _, page) = http(&live2.addr, "GET", "/", None).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("from the test"), "{page}");
    create_post(&live2, "second run").await;
    assert_eq!(live2.stop().await, ["stopping", "stopped"]);
    no_leftovers(&db).await;

    blog_succeeds(&db.url).await;
    no_leftovers(&db).await;
    assert_eq!(
        application_tables(&db).await,
        tables,
        "the application's tables are untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_on_two_databases_of_one_server_at_once() {
    let (one, two) = (common::db().await, common::db().await);
    let (live_one, live_two) = tokio::join!(live(&one.url), live(&two.url));
    create_post(&live_one, "on one").await;
    create_post(&live_two, "on two").await;
    // The blog example beside both, on each database.
    blog_succeeds(&one.url).await;
    blog_succeeds(&two.url).await;
    assert_eq!(live_one.stop().await, ["stopping", "stopped"]);
    assert_eq!(live_two.stop().await, ["stopping", "stopped"]);
    no_leftovers(&one).await;
    no_leftovers(&two).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_from_main_prints_its_message() {
    let pg = EmbeddedPostgres::builder()
        .setting("wal_level", "replica")
        .start()
        .await
        .expect("a cluster with wal_level = replica");
    let run = blog(&pg.url()).await;
    assert!(!run.status.success(), "{}", run.stdout);
    assert_eq!(
        run.stderr.lines().next(),
        Some(
            "Error: wal_level is 'replica'; walflow needs 'logical' \
             (set wal_level = logical and restart PostgreSQL)"
        ),
        "stderr: {}",
        run.stderr
    );
}
