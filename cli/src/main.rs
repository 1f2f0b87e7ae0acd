//! `walflow`: the status of a walflow deployment, its dead letters, its
//! replication slot and its schema, from the command line.
//!
//! Reads the database from `--database-url` or `DATABASE_URL`, and the
//! slot from `--slot` or `WALFLOW_SLOT_NAME` (default `walflow_slot`).
//! Errors are printed as `error: <message>` on stderr, with exit status 1.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use walflow::admin::{self, AdminError, RequestState, Status};

mod table;

use table::Table;

/// Status, dead letters, replication slot and schema of a walflow
/// deployment.
#[derive(Debug, Parser)]
#[command(name = "walflow", version, about)]
struct Cli {
    /// The database the flow runs on.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// The flow's replication slot.
    #[arg(
        long,
        env = "WALFLOW_SLOT_NAME",
        default_value = "walflow_slot",
        global = true
    )]
    slot: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The slot, the process holding it, and each operator's queue and
    /// dead letters.
    Status {
        /// Prints the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Events the operators gave up on.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// The replication slot.
    #[command(subcommand)]
    Slot(Slot),
    /// Creates the walflow tables, or brings them up to date.
    Migrate,
}

#[derive(Debug, Subcommand)]
enum DeadLetters {
    /// Lists the dead letters, oldest first.
    List {
        /// Only those of this operator.
        #[arg(long)]
        operator: Option<String>,
        /// Prints them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows one dead letter, with its event and whole error.
    Show {
        /// Its id.
        id: i64,
        /// Prints it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Asks the running flow to retry dead letters, and follows its
    /// progress.
    Retry(Retry),
    /// Deletes dead letters: they will not run again.
    Discard {
        /// Their ids.
        #[arg(required = true)]
        ids: Vec<i64>,
        /// Only if they are this operator's.
        #[arg(long)]
        operator: Option<String>,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all"])))]
struct Retry {
    /// The dead letters' ids.
    ids: Vec<i64>,
    /// Every dead letter (of `--operator`, when given).
    #[arg(long)]
    all: bool,
    /// Only this operator's.
    #[arg(long)]
    operator: Option<String>,
    /// How long to wait for the flow to finish, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Slot {
    /// Drops the replication slot (refused while a flow holds it).
    Drop {
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// An error to print; its message is the whole story.
struct Failure(String);

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        Failure(e.to_string())
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Outcome {
    let pool = connect(cli.database_url.as_deref()).await?;
    let slot = cli.slot.as_str();
    let outcome = match cli.command {
        Command::Status { json } => status(&pool, slot, json).await,
        Command::DeadLetters(DeadLetters::List { operator, json }) => {
            list(&pool, slot, operator.as_deref(), json).await
        }
        Command::DeadLetters(DeadLetters::Show { id, json }) => show(&pool, slot, id, json).await,
        Command::DeadLetters(DeadLetters::Retry(retry)) => {
            retry_dead_letters(&pool, slot, retry).await
        }
        Command::DeadLetters(DeadLetters::Discard { ids, operator }) => {
            let n = admin::discard_dead_letters(&pool, slot, operator.as_deref(), &ids).await?;
            println!("discarded {n} dead letter{}", plural(n));
            Ok(())
        }
        Command::Slot(Slot::Drop { yes }) => drop_slot(&pool, slot, yes).await,
        Command::Migrate => migrate(&pool).await,
    };
    pool.close().await;
    outcome
}

async fn connect(url: Option<&str>) -> Result<PgPool, Failure> {
    let url = url.filter(|u| !u.trim().is_empty()).ok_or_else(|| {
        Failure("no database given: set DATABASE_URL or pass --database-url".to_owned())
    })?;
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| {
            Failure(format!(
                "cannot connect to {}: {e}",
                walflow::config::redact_url(url)
            ))
        })
}

fn plural(n: impl Into<u64>) -> &'static str {
    if n.into() == 1 { "" } else { "s" }
}

fn json<T: serde::Serialize>(value: &T) -> Outcome {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure(format!("cannot write JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn bytes(n: Option<i64>) -> String {
    let Some(n) = n else {
        return "-".to_owned();
    };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn seconds(secs: Option<f64>) -> String {
    match secs {
        None => "-".to_owned(),
        Some(s) if s < 60.0 => format!("{s:.1}s"),
        Some(s) if s < 3600.0 => format!("{:.0}m{:02.0}s", (s / 60.0).floor(), s % 60.0),
        Some(s) => format!("{:.0}h{:02.0}m", (s / 3600.0).floor(), (s % 3600.0) / 60.0),
    }
}

fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

async fn status(pool: &PgPool, slot: &str, as_json: bool) -> Outcome {
    let status = admin::status(pool, slot).await?;
    if as_json {
        return json(&status);
    }
    print!("{}", render_status(&status));
    Ok(())
}

fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let slot = &s.slot;
    let held = match (&s.holder, slot.active_pid) {
        (Some(h), _) => format!(
            "active, held by pid {} ({}) from {} since {}",
            h.pid,
            if h.application_name.is_empty() {
                "no application name"
            } else {
                &h.application_name
            },
            h.client_addr.as_deref().unwrap_or("a unix socket"),
            or_dash(h.backend_start.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC")))
        ),
        (None, Some(pid)) => format!("active, held by pid {pid}"),
        (None, None) => "inactive: no flow holds it".to_owned(),
    };
    out.push_str(&format!("slot {}: {held}\n", slot.name));
    out.push_str(&format!(
        "  wal status {}, confirmed flush {}, restart {}, lag {}, retained WAL {}\n",
        or_dash(slot.wal_status.as_deref()),
        or_dash(slot.confirmed_flush_lsn),
        or_dash(slot.restart_lsn),
        bytes(slot.lag_bytes),
        bytes(slot.retained_wal_bytes),
    ));
    out.push_str(&format!(
        "queue: enqueued up to {}\n",
        s.enqueued_lsn
            .map_or_else(|| "nothing yet".to_owned(), |l| l.to_string())
    ));
    if s.operators.is_empty() {
        out.push_str("operators: none recorded\n");
    } else {
        out.push_str("operators:\n");
        let mut t = Table::new(["OPERATOR", "STATE", "QUEUED", "OLDEST", "DEAD LETTERS"]);
        for o in &s.operators {
            let name = if o.in_flow {
                o.name.clone()
            } else {
                format!("{} (not in the flow)", o.name)
            };
            t.row([
                name,
                o.state.to_string(),
                o.queued.to_string(),
                seconds(o.oldest_queued_secs),
                o.dead_letters.to_string(),
            ]);
        }
        out.push_str(&t.render("  "));
    }
    if !s.tables.is_empty() {
        out.push_str("tables:\n");
        let mut t = Table::new(["TABLE", "PROCESSED UP TO"]);
        for table in &s.tables {
            t.row([
                table.table.clone(),
                match table.updated_at_time {
                    Some(time) => format!(
                        "{} ({})",
                        time.format("%Y-%m-%d %H:%M:%S%.6f UTC"),
                        table.updated_at
                    ),
                    None => table.updated_at.to_string(),
                },
            ]);
        }
        out.push_str(&t.render("  "));
    }
    out
}

async fn list(pool: &PgPool, slot: &str, operator: Option<&str>, as_json: bool) -> Outcome {
    let letters = admin::dead_letters(pool, slot, operator).await?;
    if as_json {
        return json(&letters);
    }
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    let mut t = Table::new([
        "ID",
        "OPERATOR",
        "TABLE",
        "KIND",
        "ROW ID",
        "ATTEMPTS",
        "FAILED AT",
        "ERROR",
    ]);
    for d in &letters {
        let first = d.error.lines().next().unwrap_or_default();
        let error = if first.chars().count() > 60 {
            format!("{}…", first.chars().take(59).collect::<String>())
        } else {
            first.to_owned()
        };
        t.row([
            d.id.to_string(),
            d.operator.clone(),
            d.table.clone(),
            d.kind.clone(),
            d.mapped_id.clone(),
            d.attempts.to_string(),
            d.failed_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            error,
        ]);
    }
    print!("{}", t.render(""));
    Ok(())
}

async fn show(pool: &PgPool, slot: &str, id: i64, as_json: bool) -> Outcome {
    let d = admin::dead_letter_detail(pool, slot, id).await?;
    if as_json {
        return json(&d);
    }
    let s = &d.summary;
    println!("dead letter {}", s.id);
    println!("operator:  {}", s.operator);
    println!("table:     {}", s.table);
    println!("kind:      {}", s.kind);
    println!("row id:    {}", s.mapped_id);
    println!("position:  {}", s.position);
    println!("attempts:  {}", s.attempts);
    println!(
        "failed at: {}",
        s.failed_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
    );
    println!("error:");
    for line in s.error.lines() {
        println!("  {line}");
    }
    match &d.event {
        Some(event) => {
            let text = serde_json::to_string_pretty(event)
                .map_err(|e| Failure(format!("cannot write JSON: {e}")))?;
            println!("event:");
            for line in text.lines() {
                println!("  {line}");
            }
        }
        None => println!("event:     (not kept: a query operator needs only the row id)"),
    }
    Ok(())
}

async fn retry_dead_letters(pool: &PgPool, slot: &str, retry: Retry) -> Outcome {
    let ids = (!retry.all).then_some(retry.ids.as_slice());
    let id = admin::request_retry(pool, slot, retry.operator.as_deref(), ids).await?;
    let timeout = Duration::from_secs(retry.timeout);
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("request {id}: waiting for the flow"));
    bar.enable_steady_tick(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = loop {
        let progress = match admin::request_progress(pool, id).await {
            Ok(p) => p,
            Err(e) => break Err(Failure::from(e)),
        };
        if let Some(total) = progress.total {
            bar.set_length(total.max(0) as u64);
            bar.set_message(format!("request {id}: retrying"));
        }
        bar.set_position(progress.done.max(0) as u64);
        match progress.state {
            RequestState::Done => {
                let n = progress.done.max(0) as u64;
                break Ok(format!(
                    "retried {n} dead letter{} (request {id})",
                    plural(n)
                ));
            }
            RequestState::Failed => {
                break Err(Failure(format!(
                    "request {id} failed after {} of {} dead letters: {}",
                    progress.done,
                    or_dash(progress.total),
                    progress.error.as_deref().unwrap_or("no reason recorded")
                )));
            }
            _ if tokio::time::Instant::now() < deadline => {}
            RequestState::Pending => {
                let reason = format!("no flow took it within {}s", retry.timeout);
                break match admin::withdraw_request(pool, id, &reason).await {
                    Ok(true) => Err(Failure(format!(
                        "request {id} withdrawn: the process holding slot `{slot}` did not take \
                         it within {}s; is it a walflow flow, and is it running?",
                        retry.timeout
                    ))),
                    // Taken meanwhile: look again.
                    Ok(false) => continue,
                    Err(e) => Err(e.into()),
                };
            }
            _ => {
                break Err(Failure(format!(
                    "request {id} is still running after {}s ({} of {} done); the flow goes on \
                     with it (see request {id} in walflow.requests)",
                    retry.timeout,
                    progress.done,
                    or_dash(progress.total),
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();
    println!("{}", outcome?);
    Ok(())
}

async fn drop_slot(pool: &PgPool, slot: &str, yes: bool) -> Outcome {
    admin::check_droppable(pool, slot).await?;
    if !yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(Failure(format!(
                "not dropping slot `{slot}` without confirmation, and there is no terminal \
                 to ask on; pass --yes"
            )));
        }
        eprint!(
            "Drop replication slot `{slot}`? The server stops keeping WAL for it; a flow \
             started on it again starts from the current position. [y/N] "
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        stdin
            .lock()
            .read_line(&mut answer)
            .map_err(|e| Failure(format!("cannot read the answer: {e}")))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return Err(Failure(format!("slot `{slot}` not dropped")));
        }
    }
    admin::drop_slot(pool, slot).await?;
    println!("dropped slot {slot}");
    Ok(())
}

async fn migrate(pool: &PgPool) -> Outcome {
    let applied = walflow::migrate::migrate(pool)
        .await
        .map_err(|e| Failure(format!("migrating the walflow schema: {e}")))?;
    if applied.is_empty() {
        println!(
            "the walflow schema is up to date (version {})",
            walflow::migrate::LATEST_VERSION
        );
    } else {
        let versions: Vec<String> = applied.iter().map(|v| v.to_string()).collect();
        println!("applied migrations {}", versions.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(Some(512)), "512 B");
        assert_eq!(bytes(Some(4096)), "4.0 KiB");
        assert_eq!(bytes(None), "-");
        assert_eq!(seconds(Some(1.25)), "1.2s");
        assert_eq!(seconds(Some(125.0)), "2m05s");
        assert_eq!(seconds(Some(7260.0)), "2h01m");
    }

    #[test]
    fn the_arguments_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
