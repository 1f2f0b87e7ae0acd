//! `walflow`: the status of a walflow deployment, its dead letters, its
//! replication slot, its operators and its schema, from the command line.
//!
//! Reads its settings as the library does ([`walflow::Config::from_env`]:
//! `DATABASE_URL`, `WALFLOW_HOST`, `WALFLOW_PORT`, `WALFLOW_DATABASE`,
//! `WALFLOW_USERNAME`, `WALFLOW_PASSWORD`, `WALFLOW_SLOT_NAME`), with
//! `--database-url` and `--slot` over them, and checks them with the
//! library's rules. Errors are printed as `error: <message>` on stderr,
//! with exit status 1.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::postgres::{PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};
use walflow::admin::{self, AdminError, RequestState, SlotSummary, Status};
use walflow::{Config, ConfigBuilder};

mod escape;
mod table;

use table::Table;

/// The library's default slot name.
const DEFAULT_SLOT: &str = "walflow_slot";

/// How long connecting may take before the command gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `dead-letters retry --timeout`, in seconds: a day.
const MAX_RETRY_TIMEOUT_SECS: u64 = 24 * 60 * 60;

const AFTER_HELP: &str = "\
Settings are read as the walflow library reads them (walflow::Config::from_env), so the command \
finds the application's database and slot:
  DATABASE_URL         the database, unless --database-url is given
  WALFLOW_HOST, WALFLOW_PORT, WALFLOW_DATABASE, WALFLOW_USERNAME, WALFLOW_PASSWORD
                       the connection without a URL, or what the URL leaves out
                       (defaults: localhost, 5432, postgres, postgres, postgres)
  WALFLOW_SLOT_NAME    the slot, unless --slot is given

Exit status: 0 on success; 1 on an error, printed as `error: ...` on stderr (also when \
`status` finds the slot gone: it prints what walflow's tables hold for it first); 2 for \
invalid arguments.";

/// Status, dead letters, replication slot, operators and schema of a walflow
/// deployment.
#[derive(Debug, Parser)]
#[command(name = "walflow", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// The database the flow runs on, `postgres://user:password@host:port/database`.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// The flow's replication slot.
    ///
    /// When neither this nor WALFLOW_SLOT_NAME is given and the database has
    /// no `walflow_slot`, the commands but `slot drop` work on the only slot
    /// a walflow flow ran on in the database, and say so on stderr.
    #[arg(
        long,
        env = "WALFLOW_SLOT_NAME",
        default_value = DEFAULT_SLOT,
        global = true,
        hide_env_values = true,
        value_name = "NAME"
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
    /// Operators of the slot.
    #[command(subcommand)]
    Operator(Operator),
    /// Creates the walflow tables, or brings them up to date.
    Migrate,
}

#[derive(Debug, Subcommand)]
enum DeadLetters {
    /// Lists the dead letters, oldest first, with the first line of each
    /// error; on a terminal (or with `COLUMNS` set) the error is wrapped to
    /// the width, never cut.
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
        #[arg(value_parser = dead_letter_id(), allow_negative_numbers = true)]
        id: i64,
        /// Prints it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Asks the running flow to retry dead letters, and follows its
    /// progress. With `--all`, asks for confirmation on a terminal;
    /// without one, refuses unless `--yes`.
    Retry(Retry),
    /// Deletes dead letters: they will not run again. Asks for
    /// confirmation on a terminal; without one, refuses unless `--yes`.
    Discard {
        /// Their ids.
        #[arg(required = true, value_parser = dead_letter_id(), allow_negative_numbers = true)]
        ids: Vec<i64>,
        /// Only if they are this operator's.
        #[arg(long)]
        operator: Option<String>,
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all"])))]
struct Retry {
    /// The dead letters' ids.
    #[arg(value_parser = dead_letter_id(), allow_negative_numbers = true)]
    ids: Vec<i64>,
    /// Every dead letter (of `--operator`, when given).
    #[arg(long)]
    all: bool,
    /// Only this operator's.
    #[arg(long)]
    operator: Option<String>,
    /// How long to wait for the flow to finish, in seconds (1 to 86400).
    #[arg(
        long,
        default_value_t = 60,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=MAX_RETRY_TIMEOUT_SECS),
        allow_negative_numbers = true
    )]
    timeout: u64,
    /// Does not ask for confirmation (for `--all`).
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Subcommand)]
enum Slot {
    /// Drops the replication slot (refused while a flow holds it). Asks
    /// for confirmation on a terminal; without one, refuses unless `--yes`.
    Drop {
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Operator {
    /// Drops an operator no running flow declares any more: its queued rows
    /// become dead letters ("operator NAME dropped"), so they no longer
    /// wait. Refused while a running flow declares it. Asks for
    /// confirmation on a terminal; without one, refuses unless `--yes`.
    Drop {
        /// The operator's name.
        name: String,
        /// Does not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// A dead letter's id: 1 or more, as the ids walflow gives them.
fn dead_letter_id() -> clap::builder::RangedI64ValueParser<i64> {
    clap::value_parser!(i64).range(1..=i64::MAX)
}

/// An error to print; its message is the whole story.
struct Failure(String);

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        Failure(e.to_string())
    }
}

type Outcome = Result<(), Failure>;

/// Whether the slot was asked for (with `--slot` or `WALFLOW_SLOT_NAME`),
/// and the URL given with `--database-url`, rather than defaulted or read
/// from the environment (which the library reads itself).
struct Given {
    database_url: Option<String>,
    slot: Option<String>,
    slot_asked: bool,
}

impl Given {
    fn new(cli: &Cli, matches: &ArgMatches) -> Given {
        let on_command_line = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let slot = on_command_line("slot").then(|| cli.slot.clone());
        Given {
            database_url: cli
                .database_url
                .clone()
                .filter(|_| on_command_line("database_url")),
            slot_asked: slot.is_some()
                || std::env::var("WALFLOW_SLOT_NAME").is_ok_and(|v| !v.trim().is_empty()),
            slot,
        }
    }
}

/// The database URLs the command was given (on its command line or in
/// `DATABASE_URL`), each with its password masked by the library's
/// [`walflow::config::redact_url`]: whatever the command prints goes
/// through [`Secrets::redact`], so no message shows one as it was given.
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn new() -> Secrets {
        let args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
        let env = std::env::var_os("DATABASE_URL").map(|v| v.to_string_lossy().into_owned());
        let mut given = Vec::new();
        for text in args.chain(env) {
            if !text.contains("://") {
                continue;
            }
            // `--database-url=URL`: the URL alone too.
            if let Some((name, url)) = text.split_once('=')
                && !name.contains("://")
            {
                given.push(url.to_owned());
            }
            given.push(text);
        }
        // The longest first, so a URL is masked whole rather than a part
        // of it that is another one.
        given.sort_by_key(|url| std::cmp::Reverse(url.len()));
        given.dedup();
        Secrets(
            given
                .into_iter()
                .map(|url| {
                    let masked = walflow::config::redact_url(&url);
                    (url, masked)
                })
                .filter(|(url, masked)| url != masked)
                .collect(),
        )
    }

    /// `text` with every URL given replaced by its masked form.
    fn redact(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |text, (url, masked)| {
            text.replace(url, masked)
        })
    }
}

/// Parses the command line; an invalid one exits with status 2 and
/// clap's message, any URL in it masked.
fn parse(secrets: &Secrets) -> (Cli, ArgMatches) {
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| refuse(e, secrets));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| refuse(e, secrets));
    (cli, matches)
}

/// Exits with clap's message and status (help and version included), any
/// URL given masked in it.
fn refuse(e: clap::Error, secrets: &Secrets) -> ! {
    let text = e.render().to_string();
    let masked = secrets.redact(&text);
    if masked == text {
        e.exit()
    }
    eprint!("{masked}");
    std::process::exit(e.exit_code())
}

fn main() -> ExitCode {
    let secrets = Secrets::new();
    let (cli, matches) = parse(&secrets);
    let given = Given::new(&cli, &matches);
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
    match runtime.block_on(run(cli.command, given)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("error: {}", escape::lines(&secrets.redact(&message)));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, given: Given) -> Outcome {
    let config = settings(&given)?;
    let pool = connect(&config, &given).await?;
    let outcome = dispatch(&pool, &config, given.slot_asked, command).await;
    pool.close().await;
    outcome
}

async fn dispatch(pool: &PgPool, config: &Config, slot_asked: bool, command: Command) -> Outcome {
    let slot = || pick_slot(pool, config, slot_asked);
    match command {
        Command::Status { json } => status(pool, &slot().await?, json).await,
        Command::DeadLetters(DeadLetters::List { operator, json }) => {
            list(pool, &slot().await?, operator.as_deref(), json).await
        }
        Command::DeadLetters(DeadLetters::Show { id, json }) => {
            show(pool, &slot().await?, id, json).await
        }
        Command::DeadLetters(DeadLetters::Retry(retry)) => {
            retry_dead_letters(pool, &slot().await?, retry).await
        }
        Command::DeadLetters(DeadLetters::Discard { ids, operator, yes }) => {
            discard(pool, &slot().await?, operator.as_deref(), &ids, yes).await
        }
        Command::Slot(Slot::Drop { yes }) => {
            drop_slot(pool, config.slot_name(), slot_asked, yes).await
        }
        Command::Operator(Operator::Drop { name, yes }) => {
            drop_operator(pool, &slot().await?, &name, yes).await
        }
        Command::Migrate => migrate(pool).await,
    }
}

/// The library's configuration from the environment, with the URL and
/// slot given on the command line over it, checked by the library.
fn settings(given: &Given) -> Result<Config, Failure> {
    let mut builder = ConfigBuilder::from_env().map_err(|e| Failure(e.to_string()))?;
    if let Some(url) = &given.database_url {
        builder = builder.database_url(url);
    }
    if let Some(slot) = &given.slot {
        builder = builder.slot_name(slot);
    }
    builder.build().map_err(|e| Failure(e.to_string()))
}

/// Where the connection settings came from, for messages.
fn source(config: &Config, given: &Given) -> &'static str {
    let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.trim().is_empty());
    if given.database_url.is_some() {
        "from --database-url"
    } else if config.database_url().is_some() {
        "from DATABASE_URL"
    } else if ["WALFLOW_HOST", "WALFLOW_PORT", "WALFLOW_DATABASE"]
        .into_iter()
        .any(set)
    {
        "from the WALFLOW_* variables"
    } else {
        "the default: no --database-url, DATABASE_URL or WALFLOW_HOST is given"
    }
}

/// Connects once on a plain connection, so a failure says what happened
/// (a refused connection, a failed login, a database that does not
/// exist) at once; then hands out a pool for the commands.
async fn connect(config: &Config, given: &Given) -> Result<PgPool, Failure> {
    let options = config.connect_options().application_name("walflow-cli");
    let host = config.host();
    let server = if host.starts_with('/') {
        format!("the socket in {host} (port {})", config.port())
    } else if host.contains(':') {
        format!("[{host}]:{}", config.port())
    } else {
        format!("{host}:{}", config.port())
    };
    let failed = |why: String| {
        Failure(format!(
            "cannot connect to {server} ({}): {why}",
            source(config, given)
        ))
    };
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| failed(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|e| failed(connect_error(&e)))?;
    // Closing is a courtesy to the server: the pool has its own connections.
    let _ = probe.close().await;
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options))
}

/// Why a connection failed.
fn connect_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused: is PostgreSQL running and listening there?".to_owned()
            }
            _ => io.to_string(),
        },
        e => admin::describe_database_error(e),
    }
}

/// The slot to work on: the one asked for; otherwise the default when the
/// database or walflow's tables know it; otherwise the only slot a walflow
/// flow ran on in the database, said on stderr.
async fn pick_slot(pool: &PgPool, config: &Config, asked: bool) -> Result<String, Failure> {
    let name = config.slot_name();
    if asked {
        return Ok(name.to_owned());
    }
    let slots = admin::slots(pool).await?;
    if slots.iter().any(|s| s.name == name) {
        return Ok(name.to_owned());
    }
    let walflow: Vec<&SlotSummary> = slots.iter().filter(|s| s.walflow).collect();
    if let [only] = walflow.as_slice() {
        eprintln!(
            "walflow: using slot `{}`, the only slot a walflow flow ran on in this database \
             (there is no `{name}`, and neither --slot nor WALFLOW_SLOT_NAME is given)",
            escape::one_line(&only.name)
        );
        return Ok(only.name.clone());
    }
    let known = if slots.is_empty() {
        "none".to_owned()
    } else {
        slots
            .iter()
            .map(describe_slot)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(no_default_slot(name, &known))
}

/// The default slot `name` is not in the database, whose slots are
/// `known`.
fn no_default_slot(name: &str, known: &str) -> Failure {
    Failure(format!(
        "no replication slot `{name}` in this database (the default, as neither --slot nor \
         WALFLOW_SLOT_NAME is given); its slots: {known}; pass --slot NAME or set \
         WALFLOW_SLOT_NAME"
    ))
}

/// `name (walflow, active)`, `name (walflow, dropped)`, `name`.
fn describe_slot(s: &SlotSummary) -> String {
    let notes: Vec<&str> = [
        (s.walflow, "walflow"),
        (s.active, "active"),
        (!s.exists, "dropped"),
    ]
    .into_iter()
    .filter_map(|(on, note)| on.then_some(note))
    .collect();
    if notes.is_empty() {
        s.name.clone()
    } else {
        format!("{} ({})", s.name, notes.join(", "))
    }
}

/// Asks `question` on the terminal, unless `yes`. Without a terminal to
/// ask on, refuses: `not {doing} without confirmation ...; pass --yes`.
/// Any answer but yes is the failure `declined`.
fn confirm(yes: bool, question: &str, doing: &str, declined: String) -> Outcome {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure(format!(
            "not {doing} without confirmation, and there is no terminal to ask on; pass --yes"
        )));
    }
    eprint!("{} [y/N] ", escape::one_line(question));
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(Failure(declined))
    }
}

fn plural(n: impl Into<u64>) -> &'static str {
    if n.into() == 1 { "" } else { "s" }
}

fn json<T: serde::Serialize>(value: &T) -> Outcome {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure(format!("cannot write JSON: {e}")))?;
    println!("{}", escape::json(&text));
    Ok(())
}

/// Prints human-readable `text` to standard output, every control
/// character in it but its line breaks escaped.
fn say(text: &str) {
    print!("{}", escape::lines(text));
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
        json(&status)?;
    } else {
        say(&render_status(&status));
    }
    if !status.slot.exists {
        return Err(Failure(format!(
            "no replication slot `{slot}` in this database: it was dropped (or lost and \
             dropped); above is what walflow's tables still hold for it; a flow started on it \
             creates it again, from the current position"
        )));
    }
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
                "no application name".into()
            } else {
                escape::one_line(&h.application_name)
            },
            h.client_addr
                .as_deref()
                .map_or("a unix socket".into(), escape::one_line),
            or_dash(h.backend_start.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC")))
        ),
        (None, Some(pid)) => format!("active, held by pid {pid}"),
        (None, None) => "inactive: no flow holds it".to_owned(),
    };
    if !slot.exists {
        out.push_str(&format!(
            "slot {}: missing: the database has no such replication slot\n",
            escape::one_line(&slot.name)
        ));
    } else {
        out.push_str(&format!("slot {}: {held}\n", escape::one_line(&slot.name)));
        out.push_str(&format!(
            "  wal status {}, confirmed flush {}, restart {}, lag {}, retained WAL {}\n",
            or_dash(slot.wal_status.as_deref().map(escape::one_line)),
            or_dash(slot.confirmed_flush_lsn),
            or_dash(slot.restart_lsn),
            bytes(slot.lag_bytes),
            bytes(slot.retained_wal_bytes),
        ));
    }
    out.push_str(&match s.enqueued_lsn {
        Some(l) => format!("queue: enqueued up to {l}\n"),
        None => "queue: no queue position (nothing queued yet, or the stream storage, \
                 whose position is the slot's)\n"
            .to_owned(),
    });
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
        let mut lines = d.error.lines();
        let mut error = lines.next().unwrap_or_default().to_owned();
        if lines.next().is_some() {
            error.push_str(" …");
        }
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
    say(&t.render_fitted("", output_width()));
    Ok(())
}

/// The width to fit tables to: `COLUMNS` when set to a number, otherwise
/// the terminal's when standard output is one; `None` (no limit) when
/// neither.
fn output_width() -> Option<usize> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c > 0)
        .or_else(|| {
            console::Term::stdout()
                .size_checked()
                .map(|(_rows, columns)| usize::from(columns))
        })
}

async fn discard(
    pool: &PgPool,
    slot: &str,
    operator: Option<&str>,
    ids: &[i64],
    yes: bool,
) -> Outcome {
    admin::check_dead_letters(pool, slot, operator, ids).await?;
    let which = format!(
        "dead letter{} {}",
        plural(ids.len() as u64),
        ids.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    confirm(
        yes,
        &format!("Discard {which} of slot `{slot}`? They are deleted and will not run again."),
        &format!("discarding {which}"),
        format!("{which} not discarded"),
    )?;
    let n = admin::discard_dead_letters(pool, slot, operator, ids).await?;
    say(&format!("discarded {n} dead letter{}\n", plural(n)));
    Ok(())
}

async fn show(pool: &PgPool, slot: &str, id: i64, as_json: bool) -> Outcome {
    let d = admin::dead_letter_detail(pool, slot, id).await?;
    if as_json {
        return json(&d);
    }
    let s = &d.summary;
    let field = escape::one_line;
    let mut out = format!("dead letter {}\n", s.id);
    out.push_str(&format!("operator:  {}\n", field(&s.operator)));
    out.push_str(&format!("table:     {}\n", field(&s.table)));
    out.push_str(&format!("kind:      {}\n", field(&s.kind)));
    out.push_str(&format!("row id:    {}\n", field(&s.mapped_id)));
    out.push_str(&format!("position:  {}\n", field(&s.position)));
    out.push_str(&format!("attempts:  {}\n", s.attempts));
    out.push_str(&format!(
        "failed at: {}\n",
        s.failed_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
    ));
    out.push_str("error:\n");
    for line in s.error.lines() {
        out.push_str(&format!("  {}\n", field(line)));
    }
    match &d.event {
        Some(event) => {
            let text = serde_json::to_string_pretty(event)
                .map_err(|e| Failure(format!("cannot write JSON: {e}")))?;
            out.push_str("event:\n");
            for line in escape::json(&text).lines() {
                out.push_str(&format!("  {}\n", field(line)));
            }
        }
        None => out.push_str("event:     (not kept: a query operator needs only the row id)\n"),
    }
    say(&out);
    Ok(())
}

async fn retry_dead_letters(pool: &PgPool, slot: &str, retry: Retry) -> Outcome {
    let ids = (!retry.all).then_some(retry.ids.as_slice());
    if retry.all {
        admin::check_retry(pool, slot, retry.operator.as_deref(), None).await?;
        let n = admin::dead_letters(pool, slot, retry.operator.as_deref())
            .await?
            .len() as u64;
        let which = match &retry.operator {
            Some(op) => format!("every dead letter of operator `{op}` on slot `{slot}`"),
            None => format!("every dead letter of slot `{slot}`"),
        };
        confirm(
            retry.yes,
            &format!(
                "Retry {which} ({n} now)? Each goes back in its operator's queue and runs again."
            ),
            &format!("retrying {which}"),
            "no dead letter retried".to_owned(),
        )?;
    }
    // Checked before the request is made: a deadline out of reach is
    // refused, never found out after acting.
    let timeout = Duration::from_secs(retry.timeout);
    let deadline = tokio::time::Instant::now()
        .checked_add(timeout)
        .ok_or_else(|| {
            Failure(format!(
                "--timeout {}: too far in the future; use at most {MAX_RETRY_TIMEOUT_SECS}",
                retry.timeout
            ))
        })?;
    let id = admin::request_retry(pool, slot, retry.operator.as_deref(), ids).await?;
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
    say(&format!("{}\n", outcome?));
    Ok(())
}

/// Drops the slot asked for, or the default one: never another picked for
/// the user, nor without the `walflow` schema (a slot to drop may be all
/// that is left).
async fn drop_slot(pool: &PgPool, slot: &str, asked: bool, yes: bool) -> Outcome {
    admin::check_droppable(pool, slot)
        .await
        .map_err(|e| match e {
            AdminError::UnknownSlot { slot, known } if !asked => no_default_slot(&slot, &known),
            e => e.into(),
        })?;
    confirm(
        yes,
        &format!(
            "Drop replication slot `{slot}`? The server stops keeping WAL for it; a flow \
             started on it again starts from the current position."
        ),
        &format!("dropping slot `{slot}`"),
        format!("slot `{slot}` not dropped"),
    )?;
    admin::drop_slot(pool, slot).await?;
    say(&format!("dropped slot {slot}\n"));
    Ok(())
}

async fn drop_operator(pool: &PgPool, slot: &str, operator: &str, yes: bool) -> Outcome {
    let queued = admin::check_droppable_operator(pool, slot, operator).await?;
    confirm(
        yes,
        &format!(
            "Drop operator `{operator}` of slot `{slot}`? Its queued rows ({queued} now) become \
             dead letters (\"operator {operator} dropped\") and no longer run."
        ),
        &format!("dropping operator `{operator}`"),
        format!("operator `{operator}` not dropped"),
    )?;
    let n = admin::drop_operator(pool, slot, operator).await?;
    say(&format!(
        "dropped operator {operator}: moved {n} queued row{} to the dead letters\n",
        plural(n)
    ));
    Ok(())
}

async fn migrate(pool: &PgPool) -> Outcome {
    let applied = walflow::migrate::migrate(pool).await.map_err(|e| {
        Failure(format!(
            "migrating the walflow schema: {}",
            admin::describe_database_error(&e)
        ))
    })?;
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
        Cli::command().debug_assert();
    }

    #[test]
    fn the_default_slot_is_the_librarys() {
        assert_eq!(DEFAULT_SLOT, Config::default().slot_name());
    }
}
