//! What the soak's threads share: the trees, the key ring, every connection's ledger, the
//! violations found, the counters for the summary and the cues between the phases.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ringcrypt::keys::KeyRing;

use crate::ledger::Ledger;
use crate::support::{Daemon, bytes, keygen};
use crate::{FD_SIZES, TREE_FILES, TREES};

/// Counters for the summary.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) cancels_sent: AtomicU64,
    pub(crate) cancels_cancelled: AtomicU64,
    pub(crate) cancels_too_late: AtomicU64,
    pub(crate) reloads_sent: AtomicU64,
    pub(crate) reloads_seen: AtomicU64,
    pub(crate) tree_runs_done: AtomicU64,
    pub(crate) tree_runs_cancelled: AtomicU64,
    pub(crate) tree_files_checked: AtomicU64,
    pub(crate) tree_files_decrypted: AtomicU64,
    pub(crate) pipe_outputs_checked: AtomicU64,
    pub(crate) pipe_outputs_decrypted: AtomicU64,
    pub(crate) pipe_errors_clean: AtomicU64,
    pub(crate) fd_outputs_decrypted: AtomicU64,
    pub(crate) flood_lines: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Job ids from `accepted` replies, for the canceller to pick from.
#[derive(Default)]
pub(crate) struct JobPool {
    pub(crate) jobs: Mutex<VecDeque<(String, &'static str)>>,
}

impl JobPool {
    pub(crate) fn push(&self, job: String, kind: &'static str) {
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.len() >= 1024 {
            jobs.pop_front();
        }
        jobs.push_back((job, kind));
    }

    /// A random job of `kind` if there is one, else any.
    pub(crate) fn take(&self, kind: &str, rng: &mut Rng) -> Option<(String, &'static str)> {
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.is_empty() {
            return None;
        }
        let of_kind: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].1 == kind).collect();
        let at = if of_kind.is_empty() {
            rng.below(jobs.len())
        } else {
            of_kind[rng.below(of_kind.len())]
        };
        jobs.remove(at)
    }
}

/// xorshift64*: random enough to pick jobs and pauses, and reproducible from its seed.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The key ring file's content: the test adds a key and makes it the default before each
/// SIGHUP. Keys are only ever added, so every output stays decryptable with the final ring.
pub(crate) struct RingFile {
    pub(crate) default: String,
    pub(crate) entries: Vec<String>,
}

impl RingFile {
    /// Keys k0 and k1, default k0.
    pub(crate) fn initial() -> RingFile {
        RingFile {
            default: "k0".into(),
            entries: vec![keygen("k0"), keygen("k1")],
        }
    }

    pub(crate) fn text(&self) -> String {
        format!("default = \"{}\"\n{}", self.default, self.entries.concat())
    }
}

/// `RINGCRYPT_SOAK_NAMED_TEMPS=1`: the daemons write named temp files (the path for file
/// systems without `O_TMPFILE`).
pub(crate) fn named_temps() -> bool {
    std::env::var_os("RINGCRYPT_SOAK_NAMED_TEMPS").is_some()
}

/// One source tree.
pub(crate) struct TreeSrc {
    pub(crate) dir: PathBuf,
    /// Relative path and size of every regular file.
    pub(crate) files: Vec<(PathBuf, usize)>,
}

pub(crate) struct Soak {
    pub(crate) backend: &'static str,
    pub(crate) named_temps: bool,
    /// The daemon's directory (`support::Daemon`), everything below it the test's.
    pub(crate) dir: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) outside: PathBuf,
    pub(crate) keys: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) ring: Mutex<RingFile>,
    pub(crate) trees: Vec<TreeSrc>,
    /// One input owned by each shard (found in the warm-up from the job ids' shard part).
    pub(crate) pipe_inputs: Mutex<Vec<PathBuf>>,
    pub(crate) fd_inputs: Vec<(PathBuf, usize)>,
    pub(crate) ledgers: Mutex<Vec<Arc<Ledger>>>,
    pub(crate) violations: Mutex<Vec<String>>,
    pub(crate) pool: Arc<JobPool>,
    pub(crate) c: Counters,
    /// Workers send no new request once this is set.
    pub(crate) stop: AtomicBool,
    pub(crate) sigterm_at: Mutex<Option<Instant>>,
    pub(crate) next_id: AtomicU64,
    /// Per tree worker: a tree request is out and its final reply has not come.
    pub(crate) tree_in_flight: [AtomicBool; TREES],
    /// Per tree worker: the output directory of its current run.
    pub(crate) tree_current: Mutex<[Option<PathBuf>; TREES]>,
    /// Output directories of phase 2's tree runs, resumed after the restart.
    pub(crate) phase2_dirs: Mutex<Vec<(usize, PathBuf)>>,
    /// Phase 2 cues the flooder to write a batch just before the SIGTERM.
    pub(crate) flood_cue: AtomicU8,
    /// Set when phase 2's pipeline has written its first burst.
    pub(crate) pipe_burst_sent: AtomicBool,
    pub(crate) daemon_pid: AtomicUsize,
    /// 0 warm-up, 1 and 2 the phases on the first daemon, 3 the restarted daemon.
    pub(crate) phase: AtomicUsize,
}

impl Soak {
    /// The soak's state on the directory of `d` (prepared, not started), whose key ring is
    /// `ring`: makes the trees, the descriptor jobs' inputs and the output directories.
    pub(crate) fn new(backend: &'static str, d: &Daemon, ring: RingFile) -> Soak {
        let (root, outside) = (d.root.clone(), d.outside.clone());
        fs::create_dir_all(outside.join("fdsrc")).unwrap();
        fs::create_dir_all(outside.join("fdout")).unwrap();
        fs::create_dir_all(root.join("out")).unwrap();
        fs::create_dir_all(root.join("pipe")).unwrap();
        let trees = (0..TREES)
            .map(|k| make_tree(&root.join(format!("src/t{k}")), k))
            .collect();
        let fd_inputs = FD_SIZES
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let path = outside.join(format!("fdsrc/in{i}.bin"));
                fs::write(&path, bytes(size, 500 + i as u64)).unwrap();
                (path, size)
            })
            .collect();
        Soak {
            backend,
            named_temps: named_temps(),
            dir: d.dir.path().to_path_buf(),
            root,
            outside,
            keys: d.keys.clone(),
            socket: d.socket.clone(),
            ring: Mutex::new(ring),
            trees,
            pipe_inputs: Mutex::new(Vec::new()),
            fd_inputs,
            ledgers: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            pool: Arc::new(JobPool::default()),
            c: Counters::default(),
            stop: AtomicBool::new(false),
            sigterm_at: Mutex::new(None),
            next_id: AtomicU64::new(1),
            tree_in_flight: Default::default(),
            tree_current: Mutex::new(Default::default()),
            phase2_dirs: Mutex::new(Vec::new()),
            pipe_burst_sent: AtomicBool::new(false),
            flood_cue: AtomicU8::new(0),
            daemon_pid: AtomicUsize::new(0),
            phase: AtomicUsize::new(0),
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Records a broken invariant (printed at once, listed again at the end).
    pub(crate) fn violation(&self, what: String) {
        eprintln!("soak {}: VIOLATION: {what}", self.backend);
        self.violations.lock().unwrap().push(what);
    }

    pub(crate) fn new_id(&self, tag: &str) -> String {
        format!("{tag}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// The key ring as the test reads it now (keys are only added, so this opens every
    /// output sealed so far).
    pub(crate) fn ring_now(&self) -> KeyRing {
        let _guard = self.ring.lock().unwrap();
        KeyRing::load(&self.keys).expect("the key ring loads")
    }

    /// Adds a key, makes it the default and replaces the ring file; returns its name.
    pub(crate) fn add_key(&self, n: u64) -> String {
        let name = format!("hup{n}");
        let entry = keygen(&name);
        let mut ring = self.ring.lock().unwrap();
        ring.entries.push(entry);
        ring.default = name.clone();
        write_ring(&self.keys, &ring);
        name
    }
}

/// Writes the ring to a new 0600 file and renames it over `path`, so a reload never reads
/// half a file.
pub(crate) fn write_ring(path: &Path, ring: &RingFile) {
    let text = ring.text();
    let tmp = path.with_extension("toml.new");
    let _ = fs::remove_file(&tmp);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write the key ring");
    fs::rename(&tmp, path).expect("replace the key ring");
}

pub(crate) fn tree_file_size(k: usize, i: usize) -> usize {
    let h = (k as u64 + 1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
        .rotate_left(29);
    match i {
        0 => 0,
        1..=5 => 65536,
        6 => 256 * 1024,
        7 => 65535,
        8 => 65537,
        9 => 1,
        _ if i.is_multiple_of(23) => (h % (256 * 1024)) as usize + 1,
        _ => (h % 12_000) as usize,
    }
}

/// A tree of `TREE_FILES[k]` files in a few nested directories.
pub(crate) fn make_tree(dir: &Path, k: usize) -> TreeSrc {
    let mut files = Vec::with_capacity(TREE_FILES[k]);
    for i in 0..TREE_FILES[k] {
        let rel = if i % 10 == 0 {
            PathBuf::from(format!("f{i}.bin"))
        } else {
            PathBuf::from(format!("d{}/e{}/f{i}.bin", i % 4, i % 3))
        };
        let size = tree_file_size(k, i);
        let path = dir.join(&rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes(size, (k * 100_000 + i) as u64)).unwrap();
        files.push((rel, size));
    }
    TreeSrc {
        dir: dir.to_path_buf(),
        files,
    }
}

/// `rel` as its encrypted tree output: the name with `.rcrypt` appended.
pub(crate) fn sealed_name(rel: &Path) -> PathBuf {
    let mut name = rel.file_name().unwrap().to_os_string();
    name.push(".rcrypt");
    rel.with_file_name(name)
}
