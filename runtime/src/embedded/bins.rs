//! Locating the PostgreSQL server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::EmbeddedError;

/// Oldest supported major version.
pub(super) const MIN_MAJOR: u32 = 14;

/// Environment variable naming the directory holding `initdb` and
/// `postgres`; it bypasses the search.
pub const BIN_DIR_ENV: &str = "WALFLOW_PG_BIN_DIR";

/// A directory holding usable `initdb` and `postgres` binaries.
#[derive(Debug, Clone)]
pub(super) struct PgBinaries {
    pub(super) dir: PathBuf,
    pub(super) version: String,
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `postgres --version` prints e.g. `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
fn parse_version(output: &str) -> Option<(String, u32)> {
    let rest = output.split(')').nth(1)?.trim();
    let version = rest.split_whitespace().next()?.to_string();
    let major = version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((version, major))
}

fn probe(dir: &Path) -> Result<(String, u32), String> {
    let postgres = dir.join("postgres");
    let initdb = dir.join("initdb");
    match (is_executable(&postgres), is_executable(&initdb)) {
        (false, false) => return Err("no `postgres` nor `initdb`".into()),
        (false, true) => return Err("`postgres` missing".into()),
        (true, false) => return Err("`initdb` missing".into()),
        (true, true) => {}
    }
    let out = Command::new(&postgres)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run `postgres --version`: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text).ok_or_else(|| format!("unrecognised version output {:?}", text.trim()))
}

/// The real directory of a binaries directory found through symbolic links
/// (`/usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres`), if it
/// holds both binaries; otherwise `dir` itself.
fn resolve(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir.join("postgres"))
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|real| is_executable(&real.join("initdb")))
        .unwrap_or_else(|| dir.to_path_buf())
}

fn debian_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key: Vec<u32> = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some((key, e.path().join("bin")))
        })
        .collect();
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    dirs.into_iter().map(|(_, d)| d).collect()
}

/// Finds the binaries: `explicit` if given, else `$WALFLOW_PG_BIN_DIR`, else
/// the first directory of `PATH` holding both, else the newest
/// `/usr/lib/postgresql/*/bin`. Directories with a version older than
/// [`MIN_MAJOR`] are skipped.
pub(super) fn find(explicit: Option<&Path>) -> Result<PgBinaries, EmbeddedError> {
    let env_dir = std::env::var_os(BIN_DIR_ENV).filter(|v| !v.is_empty());
    let (candidates, searched): (Vec<PathBuf>, String) = match (explicit, env_dir) {
        (Some(dir), _) => (vec![dir.to_path_buf()], dir.display().to_string()),
        (None, Some(dir)) => (
            vec![PathBuf::from(&dir)],
            format!("{BIN_DIR_ENV}={}", PathBuf::from(&dir).display()),
        ),
        (None, None) => {
            let mut c: Vec<PathBuf> = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default();
            c.retain(|d| d.join("postgres").exists() || d.join("initdb").exists());
            c.extend(debian_dirs());
            (c, "PATH and /usr/lib/postgresql/*/bin".to_string())
        }
    };
    let mut found = Vec::new();
    for dir in candidates {
        match probe(&dir) {
            Ok((version, major)) if major >= MIN_MAJOR => {
                return Ok(PgBinaries {
                    dir: resolve(&dir),
                    version,
                });
            }
            Ok((version, _)) => {
                found.push(format!("{} (version {version}, too old)", dir.display()))
            }
            Err(why) => found.push(format!("{} ({why})", dir.display())),
        }
    }
    let found = if found.is_empty() {
        "nothing".to_string()
    } else {
        found.join(", ")
    };
    Err(EmbeddedError::BinariesNotFound { searched, found })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(("15.18".into(), 15))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17beta2"),
            Some(("17beta2".into(), 17))
        );
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn missing_directory_is_reported() {
        let err = find(Some(Path::new("/nonexistent/pg/bin"))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/pg/bin (no `postgres` nor `initdb`)"),
            "{msg}"
        );
        assert!(msg.contains("WALFLOW_PG_BIN_DIR"), "{msg}");
    }
}
