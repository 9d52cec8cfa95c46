//! ringcrypt end to end against what users run today, side by side in one run (README
//! "Performance").
//!
//! A plain bench binary (`harness = false`): `cargo bench --bench e2e` runs it at full size
//! (several minutes, most of it the `xargs openssl` baseline over 20,000 files) and
//! `cargo bench --bench e2e -- --quick` at small sizes for a smoke run. It prints one table
//! of results, a block of targets marked met or NOT met, and under it, for every row that
//! missed a target, where that row's CPU went. It exits 0 whatever the speeds; it fails
//! loudly only when a tool's outputs are missing, of the wrong size, or (after decryption)
//! differ from the original, so a broken run can never report a speed.
//!
//! Options (after `--`):
//!
//! - `--quick`: the small sizes below (`RINGCRYPT_BENCH_QUICK=1` does the same);
//! - `--runs N`: timed runs of every row; the table shows the median run and, in "runs
//!   max/min", the slowest over the fastest (default 3; 1 with `--quick`). Runs go round
//!   by round (every tool once, then again), so a drift of the machine touches every tool
//!   alike. Before the rounds, each data set gets one untimed pass of the daemon rows: the
//!   first pass over fresh data pays for new pages and for the kernel's io workers coming
//!   up, and would otherwise be the slowest run of the first row;
//! - `--dir PATH`: the scratch directory goes under PATH instead of /dev/shm;
//! - `--disk DIR`: after the main table, a second one with the disk sets (1 GiB, 300 x 1
//!   MiB, 5,000 x 4 KiB; `--quick`: 64 MiB, 30 x 1 MiB, 500 x 4 KiB) under DIR, meant to
//!   be a real disk (ext4): the daemon at `--fsync never` and `always`, and openssl
//!   followed by `sync` as the durable baseline. Its "fsync always / never" targets are
//!   in the last table;
//! - `--shards N`: passed to every `ringcryptd`; by default the daemon runs one shard per
//!   core. The header prints the shard count the daemon reported. `--shards 1` and
//!   `--shards 2` side by side show how the daemon scales;
//! - `--sets LIST`: a comma list of `big` (the single large file), `mib` (the 1 MiB files),
//!   `small` (the 4 KiB files); all three by default. Targets of sets left out are not
//!   printed;
//! - `--no-baselines`: only the ringcrypt rows, no openssl or Python; the targets that
//!   compare against a baseline then say "skipped: no baseline in this run".
//!
//! Other arguments, such as the `--bench` that `cargo bench` passes, are ignored; a
//! malformed value of one of these options stops the bench before it measures anything.
//!
//! What it does:
//!
//! 1. Measures, in this process, how fast the library seals on one core:
//!    `ringcrypt::format::Sealer::seal_full` over 256 MiB (64 MiB with `--quick`) in 1 MiB
//!    batches of 64 KiB records, best of 3 after a warm-up; `Opener::open_full` likewise, for
//!    reference. Cores × that rate is the ceiling a daemon with one shard per core can reach.
//! 2. Makes the data sets in a scratch directory (under /dev/shm when it exists, so tmpfs
//!    keeps the disk out of the figures; `--dir PATH` puts it under PATH instead): one 1 GiB
//!    file, 1000 files of 1 MiB in 10 directories, 20,000 files of 4 KiB in 100 directories
//!    (`--quick`: 64 MiB, 100 × 1 MiB, 2,000 × 4 KiB). Every input is read once before any
//!    timing, so the page cache holds it.
//! 3. Times, for each data set, encryption and then decryption of what was encrypted, by:
//!    - the real client through a fresh `ringcryptd` per row, `ringcrypt --socket S encrypt
//!      -r IN -o OUT` (`encrypt FILE -o OUT` for the single file) and `decrypt` likewise,
//!      with the daemon at `--fsync never` and at `--fsync always`; the daemon's peak RSS
//!      (VmHWM from /proc/PID/status) is read before it is stopped with SIGTERM;
//!    - `openssl enc -aes-256-cbc -pbkdf2 -iter 10000` (`-d` to decrypt), one process per
//!      file through `find | xargs -0 -P<cores>` for the trees, and directly on the big file;
//!    - a Python `ProcessPoolExecutor` with one worker per core over the `cryptography`
//!      package (`benches/e2e_pool.py`: AES-256-CBC + PKCS7 + HMAC-SHA256 per file), twice:
//!      "map default" calls `pool.map(fn, files)` as most scripts do, with the standard
//!      library's chunksize of 1, and is the one the targets compare against (the issue's
//!      Python figures come from such a script); "map chunksize tuned" hands each worker
//!      batches of files, and its ratio is printed next to each Python target. Both are
//!      skipped with a printed note when `python3 -c 'import cryptography'` fails;
//!    - on the two trees, the same script rewritten with the ringcrypt Python client
//!      (`benches/e2e_client.py`: `client.map_files(op, paths)` from `clients/python`)
//!      through a fresh `ringcryptd` at `--fsync never`, "map_files" passing each file as
//!      descriptors (its default) and "map_files by_path" sending paths, hundreds to a
//!      request (the daemon's batches). Issue 15 holds both to 5x the pool at the default
//!      chunksize and to beating the tuned pool; the targets block has a line for each.
//!      These rows need only python3, and `--no-baselines` leaves them out with the pool.
//!
//!    Each timing runs from spawning the command to its exit, so client start-up and the walk
//!    of the tree are included.
//! 4. Reads the CPU each row used, in clock ticks from /proc (the tick rate is AT_CLKTCK
//!    from /proc/self/auxv, what sysconf(_SC_CLK_TCK) returns), as a difference between a
//!    reading just before the command is spawned and one just after it has been waited for:
//!    - "client": this process's cutime + cstime (/proc/self/stat fields 16 and 17), which
//!      grow by the CPU of each child it reaps and of the descendants that child reaped. The
//!      timed command is the only child reaped in between, so this is the client's CPU; for
//!      a baseline it is all of sh, find, xargs and every openssl, or python and its pool's
//!      workers;
//!    - "daemon", for the ringcrypt rows: the daemon's utime + stime (/proc/PID/stat fields
//!      14 and 15). The kernel folds the time of threads that have exited into it, so this
//!      total misses nothing. Each live thread is read from /proc/PID/task/TID/stat with its
//!      name (field 2): `shard-*` threads are the shards, whose user time is mostly the
//!      crypto and whose system time is their own syscalls. "io+other" is total − shards:
//!      the kernel's io_uring workers (`iou-wrk-*`: the page-cache copies, opens and links
//!      that do not complete inline), the daemon's main and metrics threads, and anything
//!      else. Io workers can exit mid-row (the kernel retires idle ones) and an exited
//!      thread cannot be read on its own, so io+other is the figure that is complete; the
//!      lines under the targets split it further into "live io workers" (the `iou-wrk-*`
//!      threads still alive at the second reading) and "other" = total − shards − live io
//!      workers, which holds the exited workers too;
//!    - "cores busy" = (daemon + client) / (wall time × cores). For each row that missed a
//!      target the line under the targets table gives these figures and reads "CPU-bound"
//!      at 70% or more, "not CPU-bound: latency or a serial step" below it. The daemon pins
//!      each shard to a core and the kernel gives a ring's io workers its owner's affinity,
//!      so with fewer shards than cores (`--shards 1` on 2 cores) the daemon can keep at
//!      most that many cores busy: the line then also gives the daemon's CPU over the cores
//!      its shards may use (the union of their Cpus_allowed_list in /proc/PID/task/TID/
//!      status), and 70% or more of those reads "CPU-bound on the pinned cores". (The
//!      single big file is split into ranges over every shard, so it is held to one core
//!      only in its `--shards 1` rows.)
//!
//!    Figures are whole ticks (10 ms at the usual 100 Hz), so the short rows of a `--quick`
//!    run show little more than which side the time went to.
//!    "page cache +MiB" is how much `Cached` in /proc/meminfo grew over the row: what the
//!    row left in memory for the host's other work to compete with.
//! 5. Checks every output, then deletes it before the next row, so at most one plaintext set,
//!    one encrypted set and one decrypted set exist at a time (about 3 GiB in a full run).
//!
//! Cores are `std::thread::available_parallelism()`. Every wait is bounded: a command that
//! runs past its timeout has its whole process group killed and stops the bench. The scratch
//! directory is removed at the end.
//!
//! Layout: this file reads the options and runs the steps in order. `library` measures the
//! library's one-core rates (step 1); `sets` makes the data sets and names their outputs
//! (step 2); `runners` times each tool on them (step 3) through `command`, which spawns,
//! times and bounds one command; `cpu` reads the CPU times from /proc (step 4); `check`
//! checks every output (step 5); `report` prints the results table, the targets and the CPU
//! picture of each miss. What the daemon benches share (scratch directory, daemon, key ring,
//! inputs, the plain-text table) is in `benches/support/`.

#![forbid(unsafe_code)]

#[path = "../support/mod.rs"]
mod support;

mod check;
mod command;
mod cpu;
mod library;
mod report;
mod runners;
mod sets;

use std::cell::RefCell;
use std::path::PathBuf;
use std::thread;
use std::time::Instant;

use serde_json::Value;
use support::{OPENSSL_ENC, Scratch, make_key_ring};

use command::{Bench, probe};
use cpu::clock_ticks_per_second;
use library::{SEAL_REPS, library_rates};
use report::{cost_targets, cpu_picture, results_table, targets_table};
use runners::{make_python_keys, measure_set};
use sets::{DISK_FULL, DISK_QUICK, FULL, QUICK, Set, Shape};

struct Args {
    quick: bool,
    dir: Option<PathBuf>,
    /// `--shards N` for every daemon; `None` leaves the daemon's default, one per core.
    shards: Option<u16>,
    /// The data sets to run, in the order of `Sizes::sets`.
    sets: Vec<Set>,
    /// False with `--no-baselines`: only the ringcrypt rows run.
    baselines: bool,
    /// `--runs N`: timed runs per row, the table shows the median [default: 3; 1 with
    /// `--quick`].
    runs: Option<usize>,
    /// `--disk DIR`: a second table with the sets on DIR (a real disk).
    disk: Option<PathBuf>,
}

impl Args {
    fn parse() -> Args {
        let mut parsed = Args {
            quick: std::env::var("RINGCRYPT_BENCH_QUICK").is_ok_and(|v| v == "1"),
            dir: None,
            shards: None,
            sets: vec![Set::Big, Set::Many, Set::Small],
            baselines: true,
            runs: None,
            disk: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            // `--name value` and `--name=value` both work; a missing value is an error
            // rather than a silent default, since it would change what the run measures.
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .unwrap_or_else(|| usage(&format!("{name} needs a value")))
            };
            match name.as_str() {
                "--quick" => parsed.quick = true,
                "--no-baselines" => parsed.baselines = false,
                "--dir" => parsed.dir = Some(PathBuf::from(value("--dir"))),
                "--disk" => parsed.disk = Some(PathBuf::from(value("--disk"))),
                "--runs" => {
                    let text = value("--runs");
                    parsed.runs = match text.parse::<usize>() {
                        Ok(n) if n >= 1 => Some(n),
                        _ => usage(&format!("--runs {text}: expected a number from 1")),
                    };
                }
                "--shards" => {
                    let text = value("--shards");
                    parsed.shards = match text.parse::<u16>() {
                        Ok(n) if n >= 1 => Some(n),
                        _ => usage(&format!("--shards {text}: expected a number from 1")),
                    };
                }
                "--sets" => {
                    let text = value("--sets");
                    let mut sets = Vec::new();
                    for word in text.split(',').map(str::trim) {
                        let set = match word {
                            "big" => Set::Big,
                            "mib" => Set::Many,
                            "small" => Set::Small,
                            _ => usage(&format!(
                                "--sets {text}: `{word}` is none of big, mib, small"
                            )),
                        };
                        if !sets.contains(&set) {
                            sets.push(set);
                        }
                    }
                    // The run keeps the usual order, whatever order the list has.
                    parsed.sets = [Set::Big, Set::Many, Set::Small]
                        .into_iter()
                        .filter(|set| sets.contains(set))
                        .collect();
                }
                // Anything else, such as the `--bench` that `cargo bench` passes, is not ours.
                _ => {}
            }
        }
        parsed
    }
}

/// Stops the bench on a malformed option of its own, before anything is measured.
fn usage(problem: &str) -> ! {
    eprintln!(
        "e2e: {problem}\nusage: cargo bench --bench e2e -- [--quick] [--runs N] [--dir PATH] \
         [--disk DIR] [--shards N] [--sets big,mib,small] [--no-baselines]"
    );
    std::process::exit(2);
}

fn main() {
    let args = Args::parse();
    let all_sizes = if args.quick { QUICK } else { FULL };
    let shapes: Vec<Shape> = all_sizes
        .sets
        .into_iter()
        .filter(|shape| args.sets.contains(&shape.set))
        .collect();
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let ticks = clock_ticks_per_second() as f64;

    // The library figure first, while nothing else of this bench runs.
    eprintln!(
        "library: seal and open {} MiB on one core, best of {SEAL_REPS}",
        all_sizes.seal_bytes >> 20
    );
    let (seal_mb_s, open_mb_s) = library_rates(all_sizes.seal_bytes);

    let scratch = Scratch::create(args.dir, "e2e");
    // The baselines' versions are asked only when they run, so `--no-baselines` works on a
    // machine without them.
    let python_version = args
        .baselines
        .then(|| {
            probe(
                "python3",
                &[
                    "-c",
                    "import sys, cryptography; print(sys.version.split()[0], \
                     cryptography.__version__)",
                ],
            )
        })
        .flatten();
    let openssl_version = args.baselines.then(|| {
        probe("openssl", &["version"]).expect("the openssl CLI runs (apt-get install openssl)")
    });
    let bench = Bench {
        keys: make_key_ring(&scratch.path),
        python_keys: make_python_keys(&scratch.path),
        dir: scratch.path.clone(),
        baselines: args.baselines,
        python: python_version.is_some(),
        cores,
        shards: args.shards,
        ticks,
        pong: RefCell::new(Value::Null),
        commands: RefCell::new(0),
        runs: args.runs.unwrap_or(if args.quick { 1 } else { 3 }),
        sync_baselines: false,
    };
    let python_skipped = args.baselines && !bench.python;
    let python_note = "note: python pool skipped: `python3 -c 'import cryptography'` failed (pip \
                       install cryptography)";
    if python_skipped {
        eprintln!("{python_note}");
    }

    let started = Instant::now();
    let mut rows = Vec::new();
    for (index, shape) in shapes.iter().enumerate() {
        measure_set(&bench, *shape, index, &mut rows);
    }
    let elapsed = started.elapsed();

    let seal_ceiling = cores as f64 * seal_mb_s;
    let pong = bench.pong.borrow().clone();
    println!(
        "\nringcrypt end to end{}: ringcryptd {} with {} ({}), backend {}, {cores} cores",
        if args.quick { " (quick)" } else { "" },
        pong["version"].as_str().unwrap_or("?"),
        match pong["shards"].as_u64() {
            Some(1) => "1 shard".to_string(),
            Some(n) => format!("{n} shards"),
            None => "? shards".to_string(),
        },
        match args.shards {
            Some(n) => format!("--shards {n}"),
            None => "default: one per core".to_string(),
        },
        pong["backend"].as_str().unwrap_or("?"),
    );
    let set_names: Vec<String> = shapes.iter().map(Shape::label).collect();
    println!("data sets: {}", set_names.join(", "));
    println!("scratch: {}", scratch.note);
    match &openssl_version {
        Some(openssl) => println!(
            "baselines: {openssl}; python3 + cryptography {}",
            python_version.as_deref().unwrap_or("unavailable")
        ),
        None => println!("baselines: none (--no-baselines)"),
    }
    println!(
        "library on one core ({} MiB in 1 MiB batches, best of {SEAL_REPS}): Sealer::seal_full \
         {seal_mb_s:.0} MB/s, Opener::open_full {open_mb_s:.0} MB/s; {cores} x seal = \
         {seal_ceiling:.0} MB/s",
        all_sizes.seal_bytes >> 20
    );
    if let Some(shards) = args.shards.map(usize::from).filter(|&n| n < cores) {
        println!(
            "with --shards {shards} the shards can use at most {shards} of {cores} cores: \
             {shards} x seal = {:.0} MB/s",
            shards as f64 * seal_mb_s
        );
    }
    println!("measurements took {:.0} s\n", elapsed.as_secs_f64());

    results_table(&rows, cores, seal_ceiling).print();
    if python_skipped {
        println!("{python_note}");
    }
    println!(
        "\nMB/s = 10^6 plaintext bytes/s from spawning the command to its exit; files/s the same \
         for files. \"vs openssl\" and \"vs python\" divide by those tools' rate on the same data \
         set in the same direction in this run (openssl: `{OPENSSL_ENC}`, `-d` to decrypt, one \
         process per file, no MAC; python: the pool at `pool.map`'s default chunksize of 1). \
         \"of cores x seal\" is the share of {cores} x the library's one-core seal rate. A \
         fresh daemon per ringcrypt row: VmHWM is that row's peak RSS."
    );
    println!(
        "CPU, in CPU seconds over the timed span: \"daemon\" is the daemon's utime + stime from \
         /proc/PID/stat, exited threads included, split into its shard-* threads and the rest \
         (io+other = total - shards: the kernel's iou-wrk-* io_uring workers, live or exited, \
         and any other thread). \"client\" is everything the timed command ran, waited for: \
         the client; or sh, find, xargs and each openssl; or python and its workers. \"cores \
         busy\" = (daemon + client) / (seconds x {cores} cores)."
    );

    println!();
    let (targets, missed) = targets_table(&rows, cores, seal_ceiling);
    targets.print();
    for row in missed {
        println!("{}", cpu_picture(row, cores));
    }
    // The disk table: the same tools on a real disk, with the baselines made durable.
    let disk_rows = match &args.disk {
        Some(dir) => {
            let disk_scratch = Scratch::create(Some(dir.clone()), "e2e-disk");
            let disk_bench = Bench {
                dir: disk_scratch.path.clone(),
                keys: make_key_ring(&disk_scratch.path),
                python_keys: make_python_keys(&disk_scratch.path),
                sync_baselines: true,
                pong: RefCell::new(Value::Null),
                commands: RefCell::new(0),
                ..bench
            };
            let disk_shapes = if args.quick { DISK_QUICK } else { DISK_FULL };
            let mut disk_rows = Vec::new();
            for (index, shape) in disk_shapes
                .into_iter()
                .filter(|shape| args.sets.contains(&shape.set))
                .enumerate()
            {
                measure_set(&disk_bench, shape, index, &mut disk_rows);
            }
            println!(
                "\non a disk: {} (openssl rows are followed by `sync`, so they are durable as \
                 `--fsync always` is; page cache +MiB is what each row left in memory)",
                disk_scratch.note
            );
            results_table(&disk_rows, cores, seal_ceiling).print();
            disk_rows
        }
        None => Vec::new(),
    };
    println!();
    cost_targets(&rows, &disk_rows).print();
    if shapes.len() < 3 {
        println!("note: --sets: the targets of the data sets not in this run are left out");
    }
    if args.quick {
        println!(
            "note: --quick sizes; the targets are meant for the full run (`cargo bench --bench e2e`)"
        );
    }
}
