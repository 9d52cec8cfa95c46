//! The key ring (README "Key ring"): a TOML file of named master keys (`secret`) and openssl-format
//! passphrases (`passphrase`), each `active`, `decrypt-only` or `retired`, plus the default.
//!
//! Loading refuses, as ssh does, a file that is a symlink, not a regular file, owned by
//! another user, or readable or writable by group or others. Key bytes live in zeroizing
//! memory and never appear in `Debug` output, messages or logs: the ring's `Debug` prints
//! names, ids and states only.
//!
//! This module resolves names and ids to keys; it does no cryptography beyond the key id.
//! Its one `unsafe` item is `lock_in_memory`, which keeps loaded secrets out of swap.

use std::fmt;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::format::{self, KeyId};
use crate::error::{Code, Error};
use crate::limits::{HEADER_BYTES, KEYRING_MAX_BYTES, OPENSSL_DEFAULT_ITER};

/// A 32-byte master key. Zeroized on drop; `Debug` shows only its id.
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
    id: KeyId,
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        let bytes = Zeroizing::new(bytes);
        let id = format::key_id(&bytes);
        MasterKey { bytes, id }
    }

    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Result<MasterKey, Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        format::random_fill(bytes.as_mut())?;
        Ok(MasterKey::from_bytes(*bytes))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The secret as 64 lowercase hex digits, for `keygen` output only.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex_encode(self.bytes.as_ref()))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(id {})", hex_encode(&self.id))
    }
}

/// What a key may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// Encrypts and decrypts.
    Active,
    /// Decrypts old files; never used to encrypt.
    DecryptOnly,
    /// Known, but refused for everything: files under it give `key_retired`.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt-only",
            KeyState::Retired => "retired",
        }
    }
}

/// The secret of a key entry.
#[derive(Clone)]
pub enum KeyMaterial {
    /// A master key for RCRYPT v1.
    Secret(MasterKey),
    /// A passphrase for the unauthenticated `openssl` compatibility format.
    Passphrase {
        passphrase: Zeroizing<String>,
        iter: u32,
    },
}

impl KeyMaterial {
    /// `ringcrypt` or `openssl`: the format this key is for.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyMaterial::Secret(_) => "ringcrypt",
            KeyMaterial::Passphrase { .. } => "openssl",
        }
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Secret(key) => key.fmt(f),
            KeyMaterial::Passphrase { iter, .. } => write!(f, "Passphrase(iter {iter})"),
        }
    }
}

/// One `[[key]]` entry.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub name: String,
    pub state: KeyState,
    pub material: KeyMaterial,
}

impl KeyEntry {
    /// The key id as 32 hex digits (ringcrypt keys), or `None` (passphrases have no id).
    pub fn id_hex(&self) -> Option<String> {
        match &self.material {
            KeyMaterial::Secret(key) => Some(hex_encode(key.id())),
            KeyMaterial::Passphrase { .. } => None,
        }
    }
}

/// A loaded key ring.
#[derive(Clone, Debug)]
pub struct KeyRing {
    default: Option<String>,
    entries: Vec<KeyEntry>,
    /// Whether every secret's page could be locked in RAM (see `memory_locked`).
    memory_locked: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRing {
    default: Option<String>,
    #[serde(default)]
    key: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    secret: Option<String>,
    passphrase: Option<String>,
    iter: Option<u32>,
    state: Option<String>,
}

impl Drop for RawKey {
    fn drop(&mut self) {
        self.secret.zeroize();
        self.passphrase.zeroize();
    }
}

/// A sealed file's header checked against the ring ([`KeyRing::tail_check`]), waiting for
/// its final record.
pub struct TailCheck {
    opener: format::Opener,
    key_id: KeyId,
    /// Where the final record starts, and its length.
    pub final_offset: u64,
    pub final_len: usize,
}

impl TailCheck {
    /// Verifies the final record's tag (`last`: the file's last `final_len` bytes, opened
    /// in place) and returns the key the file is under.
    pub fn verify(mut self, last: &mut [u8]) -> Result<KeyId, Error> {
        self.opener.open_final(last)?;
        Ok(self.key_id)
    }
}

impl KeyRing {
    /// Reads and checks the key ring at `path` (see the module docs for what is refused).
    pub fn load(path: &Path) -> Result<KeyRing, Error> {
        let shown = path.display();
        let refuse = |why: String| Error::new(Code::BadRequest, format!("key ring {shown}: {why}"));
        // O_NOFOLLOW makes a symlink fail to open (ELOOP) instead of being followed, and
        // every later check is on the opened descriptor, so nothing can be swapped in between.
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|errno| {
            if errno == rustix::io::Errno::LOOP {
                refuse("is a symbolic link; point --keys at the real file".into())
            } else {
                Error::io("open key ring", path, errno.into())
            }
        })?;
        let stat = rustix::fs::fstat(fd.as_fd()).map_err(|e| Error::io("stat", path, e.into()))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(refuse("is not a regular file".into()));
        }
        let uid = rustix::process::geteuid().as_raw();
        if stat.st_uid != uid {
            return Err(refuse(format!(
                "is owned by uid {}, not by this user (uid {uid}); key rings must belong to \
                 the user that reads them",
                stat.st_uid
            )));
        }
        let mode = stat.st_mode & 0o777;
        if mode & 0o077 != 0 {
            return Err(refuse(format!(
                "permissions {mode:04o} let group or others access it; run `chmod 600 {shown}`"
            )));
        }
        if stat.st_size as u64 > KEYRING_MAX_BYTES {
            return Err(refuse(format!(
                "is {} bytes, more than the {KEYRING_MAX_BYTES}-byte limit for a key ring",
                stat.st_size
            )));
        }
        let mut text = Zeroizing::new(String::new());
        std::fs::File::from(fd)
            .take(KEYRING_MAX_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => refuse("is not UTF-8 text".into()),
                _ => Error::io("read", path, e),
            })?;
        KeyRing::parse(&text, &shown.to_string())
    }

    /// Parses key ring text; `origin` names it in messages. Does not check file permissions.
    pub fn parse(text: &str, origin: &str) -> Result<KeyRing, Error> {
        let refuse = |why: String| {
            Error::new(
                Code::BadRequest,
                redact_hex(&format!("key ring {origin}: {why}")),
            )
        };
        let raw: RawRing = toml::from_str(text).map_err(|err| {
            // toml's messages quote the offending line and value; for a `secret` or
            // `passphrase` that would print key material, so only the line number and the
            // kind of problem are kept (see `redact`).
            let at = err
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!(" at line {line}")
                })
                .unwrap_or_default();
            refuse(format!(
                "is not a valid key ring{at}: {}",
                redact(err.message())
            ))
        })?;
        let mut entries: Vec<KeyEntry> = Vec::with_capacity(raw.key.len());
        for key in &raw.key {
            let name = key.name.trim();
            if name.is_empty() || name != key.name || name.chars().any(char::is_control) {
                return Err(refuse(format!(
                    "key name {:?} is empty or has surrounding spaces or control characters",
                    key.name
                )));
            }
            if entries.iter().any(|entry| entry.name == name) {
                return Err(refuse(format!("key name {name:?} appears twice")));
            }
            let state = match key.state.as_deref() {
                None | Some("active") => KeyState::Active,
                Some("decrypt-only") => KeyState::DecryptOnly,
                Some("retired") => KeyState::Retired,
                Some(other) => {
                    return Err(refuse(format!(
                        "key {name:?} has state {other:?}; use active, decrypt-only or retired"
                    )));
                }
            };
            let material = match (&key.secret, &key.passphrase) {
                (Some(secret), None) => {
                    if key.iter.is_some() {
                        return Err(refuse(format!(
                            "key {name:?}: `iter` belongs to passphrase entries only"
                        )));
                    }
                    let bytes = parse_secret(secret).ok_or_else(|| {
                        refuse(format!(
                            "key {name:?}: secret must be exactly 64 hex digits (32 bytes); \
                             `ringcrypt keygen` makes one"
                        ))
                    })?;
                    let key = MasterKey::from_bytes(*bytes);
                    if let Some(twin) = entries.iter().find(|e| match &e.material {
                        KeyMaterial::Secret(other) => other.id() == key.id(),
                        KeyMaterial::Passphrase { .. } => false,
                    }) {
                        return Err(refuse(format!(
                            "keys {:?} and {name:?} have the same secret",
                            twin.name
                        )));
                    }
                    KeyMaterial::Secret(key)
                }
                (None, Some(passphrase)) => {
                    if passphrase.is_empty() {
                        return Err(refuse(format!("key {name:?}: passphrase is empty")));
                    }
                    let iter = key.iter.unwrap_or(OPENSSL_DEFAULT_ITER);
                    if iter == 0 {
                        return Err(refuse(format!("key {name:?}: iter must be at least 1")));
                    }
                    KeyMaterial::Passphrase {
                        passphrase: Zeroizing::new(passphrase.clone()),
                        iter,
                    }
                }
                (Some(_), Some(_)) => {
                    return Err(refuse(format!(
                        "key {name:?} has both `secret` and `passphrase`; give one"
                    )));
                }
                (None, None) => {
                    return Err(refuse(format!(
                        "key {name:?} has neither `secret` nor `passphrase`"
                    )));
                }
            };
            entries.push(KeyEntry {
                name: name.to_string(),
                state,
                material,
            });
        }
        let mut ring = KeyRing {
            default: raw.default.clone(),
            entries,
            memory_locked: true,
        };
        ring.check_default(origin)?;
        // Keep the secrets out of swap. The entries never move after this: the ring is
        // immutable once loaded.
        for entry in &ring.entries {
            if let KeyMaterial::Secret(key) = &entry.material {
                ring.memory_locked &= lock_in_memory(key.bytes()).is_ok();
            }
        }
        Ok(ring)
    }

    /// The default must name an active ringcrypt key. Without `default`, a ring with exactly
    /// one active ringcrypt key uses that one, so `ringcrypt keygen > keys.toml` is usable.
    fn check_default(&self, origin: &str) -> Result<(), Error> {
        let refuse = |why: String| {
            Error::new(
                Code::BadRequest,
                redact_hex(&format!("key ring {origin}: {why}")),
            )
        };
        let Some(name) = &self.default else {
            return Ok(());
        };
        let entry = self
            .by_name(name)
            .ok_or_else(|| refuse(format!("default key {name:?} is not in the ring")))?;
        if !matches!(entry.material, KeyMaterial::Secret(_)) {
            return Err(refuse(format!(
                "default key {name:?} is a passphrase; the default must be a `secret` key"
            )));
        }
        if entry.state != KeyState::Active {
            return Err(refuse(format!(
                "default key {name:?} is {}; the default must be active",
                entry.state.as_str()
            )));
        }
        Ok(())
    }

    /// True when every secret key's page is locked in RAM (never swapped). False under a
    /// locked-memory limit too small for them; the keys work either way.
    pub fn memory_locked(&self) -> bool {
        self.memory_locked
    }

    /// Checks a sealed file of `file_len` bytes cheaply: the header parses, its key is in
    /// this ring, and the header tag and the final record's tag verify. Only the header and
    /// the last record are read, through `read_at(buf, offset)` (the caller does the IO);
    /// earlier records are not authenticated (outputs are linked only when complete, so this
    /// catches foreign or damaged files, not torn ones). Returns the key id the file names.
    pub fn verify_tail(
        &self,
        file_len: u64,
        mut read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<()>,
    ) -> Result<KeyId, Error> {
        let auth = || Error::from(format::AuthFailed);
        let mut head = [0u8; HEADER_BYTES];
        read_at(&mut head, 0).map_err(|_| auth())?;
        let check = self.tail_check(&head, file_len)?;
        let mut last = vec![0u8; check.final_len];
        read_at(&mut last, check.final_offset).map_err(|_| auth())?;
        check.verify(&mut last)
    }

    /// The first half of [`KeyRing::verify_tail`], for a caller that does its own reads:
    /// checks the header (`head`, the file's first bytes) against the ring and says where
    /// the final record is.
    pub fn tail_check(&self, head: &[u8], file_len: u64) -> Result<TailCheck, Error> {
        let header = format::Header::parse(head)?;
        let master = self.opening_key(&header.key_id)?;
        let mut opener = format::Opener::new(&header, master.bytes())?;
        let layout = format::Layout::for_file(file_len, header.chunk_log2)?;
        opener.skip_to(layout.full_records);
        Ok(TailCheck {
            opener,
            key_id: header.key_id,
            final_offset: file_len - layout.final_record_bytes as u64,
            final_len: layout.final_record_bytes,
        })
    }

    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// Loads a ring for the daemon, which refuses one with no usable key (none at all, or
    /// every one retired): every job would fail `unknown_key` or `key_retired`, so a
    /// start-up fails and a reload keeps the ring in force instead.
    pub fn load_for_daemon(path: &Path) -> Result<KeyRing, Error> {
        let ring = KeyRing::load(path)?;
        if !ring
            .entries
            .iter()
            .any(|entry| entry.state != KeyState::Retired)
        {
            return Err(Error::new(
                Code::BadRequest,
                format!(
                    "key ring {}: no usable key ({} entries, none active or decrypt-only); \
                     add one with `ringcrypt keygen --name NAME >> {}`",
                    path.display(),
                    ring.entries.len(),
                    path.display()
                ),
            ));
        }
        Ok(ring)
    }

    pub fn by_name(&self, name: &str) -> Option<&KeyEntry> {
        self.entries.iter().find(|entry| entry.name == name)
    }

    /// The default key's entry, if there is one (see `check_default`).
    pub fn default_entry(&self) -> Option<&KeyEntry> {
        match &self.default {
            Some(name) => self.by_name(name),
            None => {
                let mut active = self.entries.iter().filter(|entry| {
                    entry.state == KeyState::Active
                        && matches!(entry.material, KeyMaterial::Secret(_))
                });
                match (active.next(), active.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
    }

    /// The entry to encrypt with: `name`, or the default. Refuses keys that are not active.
    pub fn sealing_entry(&self, name: Option<&str>) -> Result<&KeyEntry, Error> {
        let entry = match name {
            Some(name) => self.by_name(name).ok_or_else(|| {
                Error::new(
                    Code::UnknownKey,
                    format!("there is no key named {name:?} in the key ring"),
                )
            })?,
            None => self.default_entry().ok_or_else(|| {
                Error::new(
                    Code::BadRequest,
                    "the key ring has no default key: add `default = \"NAME\"` or pass --key NAME",
                )
            })?,
        };
        match entry.state {
            KeyState::Active => Ok(entry),
            state => Err(Error::new(
                Code::KeyRetired,
                format!(
                    "key {:?} is {}: it cannot encrypt new files",
                    entry.name,
                    state.as_str()
                ),
            )),
        }
    }

    /// True when `id` is the default key's: a file sealed under it needs no rewrap.
    pub fn is_default_key(&self, id: &KeyId) -> bool {
        matches!(self.default_entry().map(|e| &e.material), Some(KeyMaterial::Secret(key)) if key.id() == id)
    }

    /// The name of the ringcrypt key with id `id`.
    pub fn name_for_id(&self, id: &KeyId) -> Option<&str> {
        self.entries.iter().find_map(|entry| match &entry.material {
            KeyMaterial::Secret(key) if key.id() == id => Some(entry.name.as_str()),
            _ => None,
        })
    }

    /// The master key for a file's key id: `unknown_key` when no entry has it, `key_retired`
    /// when its entry is retired.
    pub fn opening_key(&self, id: &KeyId) -> Result<&MasterKey, Error> {
        for entry in &self.entries {
            if let KeyMaterial::Secret(key) = &entry.material
                && key.id() == id
            {
                return match entry.state {
                    KeyState::Retired => Err(Error::new(
                        Code::KeyRetired,
                        format!("the file is sealed under retired key {:?}", entry.name),
                    )),
                    KeyState::Active | KeyState::DecryptOnly => Ok(key),
                };
            }
        }
        Err(Error::new(
            Code::UnknownKey,
            format!(
                "the file is sealed under key id {}, which is not in the key ring",
                hex_encode(id)
            ),
        ))
    }

    /// The passphrase entry to encrypt an openssl-format file with: like
    /// [`KeyRing::passphrase_entry`], and the entry must be active.
    pub fn sealing_passphrase(&self, name: Option<&str>) -> Result<(&KeyEntry, &str, u32), Error> {
        let found = self.passphrase_entry(name)?;
        match found.0.state {
            KeyState::Active => Ok(found),
            state => Err(Error::new(
                Code::KeyRetired,
                format!(
                    "key {:?} is {}: it cannot encrypt new files",
                    found.0.name,
                    state.as_str()
                ),
            )),
        }
    }

    /// The passphrase entry to use for an openssl-format file: `name`, or the only passphrase
    /// entry when the ring has exactly one.
    pub fn passphrase_entry(&self, name: Option<&str>) -> Result<(&KeyEntry, &str, u32), Error> {
        let entry = match name {
            Some(name) => self.by_name(name).ok_or_else(|| {
                Error::new(
                    Code::UnknownKey,
                    format!("there is no key named {name:?} in the key ring"),
                )
            })?,
            None => {
                let mut found = self
                    .entries
                    .iter()
                    .filter(|entry| matches!(entry.material, KeyMaterial::Passphrase { .. }));
                match (found.next(), found.next()) {
                    (Some(only), None) => only,
                    (None, _) => {
                        return Err(Error::new(
                            Code::UnknownKey,
                            "the key ring has no passphrase entry for openssl-format files",
                        ));
                    }
                    (Some(_), Some(_)) => {
                        return Err(Error::new(
                            Code::BadRequest,
                            "the key ring has several passphrase entries: pass --key NAME",
                        ));
                    }
                }
            }
        };
        match &entry.material {
            KeyMaterial::Passphrase { passphrase, iter } => {
                if entry.state == KeyState::Retired {
                    return Err(Error::new(
                        Code::KeyRetired,
                        format!("key {:?} is retired", entry.name),
                    ));
                }
                Ok((entry, passphrase.as_str(), *iter))
            }
            KeyMaterial::Secret(_) => Err(Error::new(
                Code::BadRequest,
                format!(
                    "key {:?} is a ringcrypt key; openssl-format files need a passphrase entry",
                    entry.name
                ),
            )),
        }
    }
}

/// The field names a key ring may contain; only these survive [`redact`].
const RING_FIELDS: [&str; 7] = [
    "default",
    "key",
    "name",
    "secret",
    "passphrase",
    "iter",
    "state",
];

/// Locks the pages holding `bytes` in RAM (`mlock`), so key material is never written to
/// swap. Locks are per page and stay until the process exits; a page may hold several keys,
/// so they are never unlocked one by one. Fails under a locked-memory limit too small for
/// the pages.
#[allow(unsafe_code)]
fn lock_in_memory(bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    // SAFETY: mlock only changes how the kernel pages the range; it neither reads nor writes
    // it, and `bytes` is a live borrow for the call, so the range is mapped.
    unsafe { rustix::mm::mlock(bytes.as_ptr().cast_mut().cast(), bytes.len()) }
        .map_err(std::io::Error::from)
}

/// A parser message with every quoted fragment that is not a known field name replaced by
/// `…`: values (and misspelled field names, which may be pasted secrets) are never echoed.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['`', '"']) {
        let quote = rest[start..].chars().next().expect("found above");
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(quote) {
            Some(end) => {
                let inner = &after[..end];
                if RING_FIELDS.contains(&inner) {
                    out.push(quote);
                    out.push_str(inner);
                    out.push(quote);
                } else {
                    out.push('…');
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.trim_end().to_string()
}

/// A message with every run of 32 or more hex digits replaced: a secret pasted into a
/// `name`, `state` or `default` by mistake must not reach a terminal or a log.
fn redact_hex(message: &str) -> String {
    const RUN: usize = 32;
    let mut out = String::with_capacity(message.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= RUN {
            out.push_str("[hex redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in message.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

fn parse_secret(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        *slot = (high * 16 + low) as u8;
    }
    Some(out)
}

/// Lowercase hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 15)] as char);
    }
    out
}

/// One `[[key]]` entry with a fresh secret, as `ringcrypt keygen` prints it.
pub fn keygen_entry(name: &str) -> Result<Zeroizing<String>, Error> {
    let key = MasterKey::generate()?;
    Ok(Zeroizing::new(format!(
        "[[key]]\nname = {}\nsecret = \"{}\"\nstate = \"active\"\n",
        toml_string(name),
        key.to_hex().as_str()
    )))
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests;
