//! `verify`: every chunk's tag of sealed files checked, in this process, with no plaintext
//! written anywhere (the scrub a backup operator runs). Files named directly are checked
//! whatever their name; under a directory (`recursive`), every `.rcrypt` file is, on all
//! cores, with the tree rules ([`crate::tree_rules`]): symlinks are never followed, other
//! entries are skipped with their reason.
//!
//! What this room does not do: print (the CLI does, from the [`Event`]s), or decide the exit
//! code.

#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Mutex, PoisonError};

use crate::crypto::keys::KeyRing;
use crate::crypto::openssl;
use crate::error::{Code, Error};
use crate::offline::output::is_temp_name;
use crate::offline::stream;
use crate::protocol::FileOp;
use crate::tree_rules::{Special, output_name};

/// What a verify run reports, one event at a time, in the order files finish.
#[derive(Debug)]
pub enum Event {
    /// A file was checked: its plaintext size when every tag verified.
    Checked {
        path: PathBuf,
        result: Result<u64, Error>,
    },
    /// An entry of a tree that is not checked, and why.
    Skipped { path: PathBuf, reason: &'static str },
}

/// Files waiting per worker: enough to keep a worker busy while the walk lists a directory,
/// few enough that a huge tree never sits in memory.
const QUEUE_PER_WORKER: usize = 16;

/// Verifies one sealed file: the header parses, its key is in `ring` and usable, and every
/// record's tag verifies, in order, up to an end exactly after the final record. Returns the
/// plaintext size. A symlink is followed only when `follow` (a file the user named).
pub fn verify_file(ring: &KeyRing, path: &Path, follow: bool) -> Result<u64, Error> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    if !follow {
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let mut file = options.open(path).map_err(|e| Error::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "is a directory (pass -r to verify every .rcrypt file under it)"
        } else {
            "is not a regular file"
        };
        return Err(Error::new(
            Code::BadRequest,
            format!("{} {what}", path.display()),
        ));
    }
    let mut magic = [0u8; 8];
    let got = openssl::read_full(&mut file, &mut magic).map_err(|e| Error::io("read", path, e))?;
    if magic[..got].starts_with(openssl::MAGIC) {
        return Err(Error::new(
            Code::BadFormat,
            format!(
                "{}: an openssl-format file has no tags to verify (it is not authenticated); \
                 rewrap it into the ringcrypt format",
                path.display()
            ),
        ));
    }
    let mut whole = std::io::Read::chain(&magic[..got], &mut file);
    stream::open(&mut whole, meta.len(), ring, &mut std::io::sink())
        .map(|(plain, _)| plain)
        .map_err(|e| e.context(path.display()))
}

/// Verifies `inputs` (files, or with `recursive` also directories, walked) on `workers`
/// threads (0: one per core), calling `on_event` on this thread as each result comes.
pub fn verify_all(
    ring: &KeyRing,
    inputs: &[PathBuf],
    recursive: bool,
    workers: usize,
    mut on_event: impl FnMut(Event),
) {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let (queue, queued) = sync_channel::<(PathBuf, bool)>(workers * QUEUE_PER_WORKER);
    let queued = Mutex::new(queued);
    let (events, received) = channel::<Event>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let events = events.clone();
            let queued = &queued;
            scope.spawn(move || check_queued(ring, queued, &events));
        }
        let walk_events = events.clone();
        scope.spawn(move || {
            for input in inputs {
                let is_dir = fs::metadata(input).is_ok_and(|m| m.is_dir());
                if recursive && is_dir {
                    walk(input, &queue, &walk_events);
                } else if queue.send((input.clone(), true)).is_err() {
                    return;
                }
            }
        });
        drop(events);
        for event in received.iter() {
            on_event(event);
        }
    });
}

fn check_queued(ring: &KeyRing, queued: &Mutex<Receiver<(PathBuf, bool)>>, events: &Sender<Event>) {
    loop {
        let next = queued.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((path, follow)) = next else { return };
        let result = verify_file(ring, &path, follow);
        if events.send(Event::Checked { path, result }).is_err() {
            return;
        }
    }
}

/// Depth first, in name order; directories are listed one at a time (their names only).
fn walk(root: &Path, queue: &SyncSender<(PathBuf, bool)>, events: &Sender<Event>) {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut names = match fs::read_dir(&dir).and_then(|list| {
            list.map(|entry| entry.map(|e| e.file_name()))
                .collect::<std::io::Result<Vec<_>>>()
        }) {
            Ok(names) => names,
            Err(e) => {
                let err = Error::io("list", &dir, e);
                let _ = events.send(Event::Checked {
                    path: dir,
                    result: Err(err),
                });
                continue;
            }
        };
        names.sort_unstable();
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let kind = match fs::symlink_metadata(&path) {
                Ok(meta) => meta.file_type(),
                Err(e) => {
                    let err = Error::io("stat", &path, e);
                    let _ = events.send(Event::Checked {
                        path,
                        result: Err(err),
                    });
                    continue;
                }
            };
            let skip = if kind.is_dir() {
                subdirs.push(path);
                continue;
            } else if is_temp_name(&name) {
                "temp file of an interrupted job"
            } else if kind.is_file() {
                match output_name(FileOp::Decrypt, &name) {
                    Ok(_) => {
                        if queue.send((path, false)).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(reason) => reason,
                }
            } else {
                Special::of(kind).reason()
            };
            let _ = events.send(Event::Skipped { path, reason: skip });
        }
        // Reversed, so that popping visits them in name order.
        pending.extend(subdirs.into_iter().rev());
    }
}
