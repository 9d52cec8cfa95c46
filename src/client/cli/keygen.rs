//! `ringcrypt keygen`: a new `[[key]]` entry with a fresh secret, printed to stdout, and the
//! default name it gets (`key-YYYYMMDD-<random>`).
//!
//! What this room does not do: make or check the secret and the entry's syntax (that is
//! [`crate::crypto::keys`]), or touch a key ring file (the user appends the entry).

use std::io::Write;

use super::Failure;
use crate::crypto::keys::{self, KeyRing};
use crate::error::{Code, Error};

/// Prints a new `[[key]]` entry, named `name` or `key-YYYYMMDD-<random>`.
pub(super) fn keygen(name: Option<&str>) -> Result<(), Failure> {
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
