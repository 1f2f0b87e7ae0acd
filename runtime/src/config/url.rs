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

/// `url` with the password of its user info replaced by `***`. Works on
/// strings that do not parse as URLs too, so it is safe for error messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:***{}",
        &url[..rest_start],
        &userinfo[..colon],
        &url[rest_start + at..]
    )
}
