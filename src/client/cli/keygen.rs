//! `ringcrypt keygen`: a new `[[key]]` entry with a fresh secret, printed to stdout or
//! written to a new key ring file (`-o`, mode 0600, as `age-keygen -o`), and the default
//! name it gets (`key-YYYYMMDD-<random>`).
//!
//! What this room does not do: make or check the secret and the entry's syntax (that is
//! [`crate::crypto::keys`]), or append to an existing ring (the user does, with `>>`).

use std::io::Write;
use std::path::Path;

use super::Failure;
use crate::crypto::keys::{self, KeyRing};
use crate::error::{Code, Error};
use crate::offline::output::{AtomicFile, Durability};

/// A new `[[key]]` entry, named `name` or `key-YYYYMMDD-<random>`: printed, or with
/// `output` written as a new ring file of mode 0600 (an existing one is replaced only with
/// `force`, atomically).
pub(super) fn keygen(
    name: Option<&str>,
    output: Option<&Path>,
    force: bool,
) -> Result<(), Failure> {
    let name = match name {
        Some(name) => name.to_string(),
        None => {
            let tag: [u8; 3] = crate::crypto::format::random_bytes()?;
            format!("key-{}-{}", today(), keys::hex_encode(&tag))
        }
    };
    // Parse the entry back, so a name that TOML cannot carry fails here, not at load time.
    let entry = keys::keygen_entry(&name)?;
    KeyRing::parse(&entry, "the new entry")?;
    if let Some(path) = output {
        return write_ring(path, entry.as_bytes(), force);
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(entry.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| {
            Error::new(
                Code::IoError,
                format!("cannot write to standard output: {e}"),
            )
        })?;
    Ok(())
}

/// Writes a new ring file: created unnamed (0600 from the start, so the secret is never
/// readable by others, whatever the umask), made durable, then linked under `path`.
fn write_ring(path: &Path, entry: &[u8], force: bool) -> Result<(), Failure> {
    let mut file = AtomicFile::create(path, force).map_err(|err| match err.code {
        Code::Exists => Failure {
            hint: Some(format!(
                "pass --force to replace it (its keys are lost), or add a key to it with \
                 `ringcrypt keygen >> {}`",
                path.display()
            )),
            ..Failure::from(Error::new(
                Code::Exists,
                format!(
                    "{} already exists; keygen -o does not replace a key ring",
                    path.display()
                ),
            ))
        },
        _ => Failure::from(err),
    })?;
    file.file()
        .write_all(entry)
        .map_err(|e| Failure::from(Error::io("write", path, e)))?;
    file.commit(0o600, force, Durability::Fsync)?;
    eprintln!("wrote a new key ring to {} (mode 0600)", path.display());
    Ok(())
}

/// Today's date as YYYYMMDD (UTC), from the system clock.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Civil-from-days (H. Hinnant's algorithm), valid for every date after 1970.
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days / 146_097;
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn today_is_a_plausible_date() {
        let date = today();
        assert_eq!(date.len(), 8);
        assert!(date.as_str() >= "20240101", "{date}");
    }
}
