//! The connection: the URL merged with the separate options, percent-decoded,
//! and redacted for messages.

use sqlx::postgres::PgConnectOptions;
use url::Url;

use super::{Config, ConfigError, Conn};

impl Config {
    /// Connection options for sqlx: the URL when given (its query
    /// parameters such as `sslmode` honoured), the resolved host, port, user
    /// name, password and database, and the application name.
    pub fn connect_options(&self) -> PgConnectOptions {
        let base = self
            .database_url
            .as_deref()
            .and_then(|u| u.parse::<PgConnectOptions>().ok())
            .unwrap_or_else(|| {
                let base = PgConnectOptions::new_without_pgpass();
                if self.conn.host.starts_with('/') {
                    // A directory: connect through its unix socket.
                    base.socket(&self.conn.host)
                } else {
                    base.host(&self.conn.host)
                }
            });
        base.port(self.conn.port)
            .username(&self.conn.username)
            .password(&self.conn.password)
            .database(&self.conn.database)
            .application_name(self.application_name())
    }

    pub(super) fn resolve_conn(&self) -> Result<Conn, ConfigError> {
        let mut conn = Conn {
            host: self.host.clone(),
            port: self.port,
            username: self.username.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
            ssl_mode: None,
        };
        let Some(raw) = self.database_url.as_deref() else {
            return Ok(conn);
        };
        let invalid = |reason: String| ConfigError::InvalidUrl {
            url: redact_url(raw),
            reason,
        };
        let url = Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid(format!(
                "scheme `{}` is not `postgres` or `postgresql`",
                url.scheme()
            )));
        }
        if let Some(host) = url.host_str().filter(|h| !h.is_empty()) {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            conn.host = decode(host).map_err(|e| invalid(format!("host: {e}")))?;
        }
        if let Some(port) = url.port() {
            if port == 0 {
                return Err(invalid("port 0 is not usable".into()));
            }
            conn.port = port;
        }
        if !url.username().is_empty() {
            conn.username =
                decode(url.username()).map_err(|e| invalid(format!("user name: {e}")))?;
        }
        if let Some(password) = url.password() {
            // Do not echo the decoding error's details: they are about the password.
            conn.password = decode(password)
                .map_err(|_| invalid("the password is not valid percent-encoded UTF-8".into()))?;
        }
        conn.ssl_mode = url
            .query_pairs()
            .find(|(k, _)| k == "sslmode" || k == "ssl-mode")
            .map(|(_, v)| v.into_owned());
        let path = url.path().trim_start_matches('/');
        if !path.is_empty() {
            conn.database = decode(path).map_err(|e| invalid(format!("database: {e}")))?;
        }
        Ok(conn)
    }
}

fn decode(s: &str) -> Result<String, String> {
    percent_decode(s).map_err(|_| "not valid percent-encoded UTF-8".to_string())
}

/// Percent-decodes `s` (`+` is kept as is, as in URL user info and paths).
fn percent_decode(s: &str) -> Result<String, std::str::Utf8Error> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
}

/// `url` with every password in it replaced by `***`: the password of its
/// user info, and the value of any `password=` parameter. Works on strings
/// that do not parse as URLs too, so it is safe for every message: there,
/// everything between `://` and the last `@` is taken as user info (a
/// password may hold `/`, `?`, `#` and `@` unescaped), and only a user name
/// before its first `:` is kept.
pub fn redact_url(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let rest = match (head.is_empty(), rest.rfind('@')) {
        (false, Some(at)) => {
            let (userinfo, host_on) = rest.split_at(at);
            let ambiguous = userinfo.contains(['/', '?', '#']);
            let user = match userinfo.split_once(':') {
                Some((user, _)) if !user.contains(['/', '?', '#']) => format!("{user}:***"),
                Some(_) => "***".to_owned(),
                None if ambiguous => "***".to_owned(),
                None => userinfo.to_owned(),
            };
            user + host_on
        }
        _ => rest.to_owned(),
    };
    format!("{head}{}", redact_password_parameters(&rest))
}

/// Replaces the value of every `password=` parameter (any case, after the
/// start, `?`, `&`, `;` or white space) by `***`, up to the next `&`, `#`,
/// `;` or white space.
fn redact_password_parameters(s: &str) -> String {
    const KEY: &str = "password=";
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut from = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(KEY) {
        let at = search + found;
        let starts = at == 0
            || matches!(s.as_bytes()[at - 1], b'?' | b'&' | b';')
            || s.as_bytes()[at - 1].is_ascii_whitespace();
        let value = at + KEY.len();
        search = value;
        if !starts {
            continue;
        }
        let end = s[value..]
            .find(|c: char| matches!(c, '&' | '#' | ';') || c.is_whitespace())
            .map_or(s.len(), |e| value + e);
        out.push_str(&s[from..value]);
        out.push_str("***");
        from = end;
        search = end;
    }
    out.push_str(&s[from..]);
    out
}
