//! What the e2e bench prints from its rows: the results table with every rate, ratio and
//! CPU figure, the targets marked met or NOT met, and for each row that missed one a
//! line on where its CPU went.

use std::time::Duration;

use crate::cpu::Cpu;
use crate::runners::{Chunksize, Op, Send, Tool};
use crate::sets::{Set, Shape};
use crate::support::{Fsync, Table};

/// The targets, for the client through the daemon at `--fsync never`; decryption is
/// held to the same ratios against the decrypting baselines.
const TARGET_MANY_VS_OPENSSL: f64 = 8.0;
const TARGET_MANY_OF_SEAL: f64 = 0.80;
const TARGET_SMALL_VS_OPENSSL: f64 = 60.0;
const TARGET_SMALL_VS_PYTHON: f64 = 10.0;
const TARGET_BIG_VS_OPENSSL: f64 = 3.5;
/// Decrypting the big file against `openssl enc -d`.
const TARGET_BIG_DECRYPT_VS_OPENSSL: f64 = 2.0;
/// The big file on every core against the daemon's own `--shards 1`.
const TARGET_BIG_VS_ONE_SHARD: f64 = 1.8;
/// Daemon CPU (shards and io workers) per MiB of 1 MiB files, and per 4 KiB file.
const TARGET_MANY_CPU_MS_PER_MIB: f64 = 0.7;
const TARGET_SMALL_CPU_US_PER_FILE: f64 = 20.0;
/// 4 KiB files against the Python pool at a tuned chunksize.
const TARGET_SMALL_VS_TUNED: f64 = 3.0;
/// Slowest over fastest of the big file's `--fsync never` encrypt runs.
const TARGET_BIG_SPREAD: f64 = 1.3;
/// On a disk: `--fsync always` over `--fsync never`, encrypting 1 MiB and 4 KiB files.
const TARGET_DISK_MANY_ALWAYS_OVER_NEVER: f64 = 1.3;
const TARGET_DISK_SMALL_ALWAYS_OVER_NEVER: f64 = 2.0;
/// Issue 15's targets for a Python user's script rewritten with the Python client
/// (`map_files`, by descriptor and by path): 5x the pool at `pool.map`'s default
/// chunksize, and faster than the pool at a tuned chunksize, on both many-file sets.
const TARGET_PYCLIENT_VS_POOL: f64 = 5.0;
const TARGET_PYCLIENT_VS_TUNED: f64 = 1.0;

/// One timed row.
pub struct Row {
    pub shape: Shape,
    pub tool: Tool,
    pub op: Op,
    pub time: Duration,
    pub cpu: Cpu,
    /// The daemon's VmHWM in MiB, for the ringcrypt rows.
    pub rss: Option<f64>,
    /// Growth of the page cache over the command, in MiB.
    pub cache_growth_mib: f64,
    /// Slowest over fastest of the row's timed runs (1 with one run).
    pub spread: f64,
}

impl Row {
    fn mb_s(&self) -> f64 {
        self.shape.total_bytes() as f64 / self.time.as_secs_f64() / 1e6
    }

    pub fn busy_percent(&self, cores: usize) -> f64 {
        self.cpu.busy_percent(self.time, cores)
    }
}

/// The row of one tool on one data set in one direction, from this run.
fn baseline(rows: &[Row], set: Set, op: Op, tool: Tool) -> Option<&Row> {
    rows.iter()
        .find(|row| row.shape.set == set && row.op == op && row.tool == tool)
}

fn ratio(rate: f64, base: Option<f64>) -> String {
    match base {
        Some(base) => {
            let ratio = rate / base;
            let digits = if ratio < 10.0 { 2 } else { 1 };
            format!("{:.digits$}x", floor_to(ratio, digits))
        }
        None => "-".to_string(),
    }
}

fn tool_name(tool: Tool, set: Set, cores: usize) -> String {
    match tool {
        Tool::Ringcrypt(_) => "ringcrypt -> ringcryptd".to_string(),
        Tool::RingcryptOneShard => "ringcrypt -> ringcryptd --shards 1".to_string(),
        Tool::Openssl if set == Set::Big => "openssl enc".to_string(),
        Tool::Openssl => format!("find | xargs -P{cores} openssl enc"),
        Tool::Python(Chunksize::Default) => format!("python pool({cores}), map default"),
        Tool::Python(Chunksize::Tuned) => format!("python pool({cores}), map chunksize tuned"),
        Tool::PyClient(Send::Descriptors) => "python -> ringcryptd, map_files".to_string(),
        Tool::PyClient(Send::Paths) => "python -> ringcryptd, map_files by_path".to_string(),
    }
}

/// Below this share of the machine busy, a missed target is not for want of CPU.
const CPU_BOUND_PERCENT: f64 = 70.0;

/// One line on where a row that missed a target spent its CPU, so the table says why.
pub fn cpu_picture(row: &Row, cores: usize) -> String {
    let busy = row.busy_percent(cores);
    let mut daemon = String::new();
    // The share of the cores the daemon may use, when its shards are pinned to fewer than
    // all of them: one shard on a 2-core machine can keep its core saturated while the
    // machine as a whole reads half idle.
    let mut pinned = None;
    if let Some(d) = row.cpu.daemon {
        daemon = format!(
            "shards {:.2} core-s (user {:.2} + sys {:.2}), io+other {:.2} core-s (live io \
             workers {:.2} + other {:.2}), ",
            d.shards(),
            d.shard_user,
            d.shard_sys,
            d.io_other(),
            d.io_live,
            d.other()
        );
        // A large file is split over every shard, so only fewer shards than cores hold the
        // daemon to fewer cores.
        if let Some(n) = d.pinned_cores.filter(|&n| n < cores) {
            pinned = Some((n, 100.0 * d.total / (row.time.as_secs_f64() * n as f64)));
        }
    }
    let pinned_note = match pinned {
        Some((n, share)) => format!(
            "; the shards and their io workers are pinned to {n} of {cores} cores, which the \
             daemon kept {:.0}% busy",
            floor_to(share, 0)
        ),
        None => String::new(),
    };
    let cpu_bound =
        busy >= CPU_BOUND_PERCENT || pinned.is_some_and(|(_, share)| share >= CPU_BOUND_PERCENT);
    let why = if !cpu_bound {
        "not CPU-bound: latency or a serial step"
    } else if busy >= CPU_BOUND_PERCENT {
        "CPU-bound; see docs/performance.md"
    } else {
        "CPU-bound on the pinned cores; see docs/performance.md"
    };
    format!(
        "{} {}: {:.2} s, cores busy {:.0}%: {daemon}client {:.2} core-s{pinned_note} — {why}",
        row.shape.label(),
        row.op.as_str(),
        row.time.as_secs_f64(),
        floor_to(busy, 0),
        row.cpu.client
    )
}

/// `x` rounded down to `digits` decimals. Figures are shown rounded down so that one just
/// short of a target (7.996x against 8x) never reads as reaching it.
fn floor_to(x: f64, digits: usize) -> f64 {
    let scale = 10f64.powi(digits as i32);
    (x * scale).floor() / scale
}

fn verdict(met: bool) -> String {
    if met { "met" } else { "NOT met" }.to_string()
}

/// The table of every row, with its rates, its ratios to the baselines of the same run, and
/// the CPU it used.
pub fn results_table(rows: &[Row], cores: usize, seal_ceiling: f64) -> Table {
    let mut table = Table::new(
        &[
            "data set",
            "tool",
            "op",
            "fsync",
            "seconds",
            "MB/s",
            "files/s",
            "daemon VmHWM",
            "vs openssl",
            "vs python",
            "of cores x seal",
            "daemon CPU s (shards / io+other)",
            "client CPU s",
            "cores busy %",
            "runs max/min",
            "page cache +MiB",
        ],
        4,
    );
    for row in rows {
        let set = row.shape.set;
        let base = |tool| baseline(rows, set, row.op, tool).map(Row::mb_s);
        let mb_s = row.mb_s();
        table.row(vec![
            row.shape.label(),
            tool_name(row.tool, set, cores),
            row.op.as_str().to_string(),
            match row.tool {
                Tool::Ringcrypt(fsync) => fsync.as_str().to_string(),
                Tool::RingcryptOneShard => Fsync::Never.as_str().to_string(),
                Tool::PyClient(_) => Fsync::Never.as_str().to_string(),
                Tool::Python(_) | Tool::Openssl => "-".to_string(),
            },
            format!("{:.3}", row.time.as_secs_f64()),
            // Small rates keep a decimal so the slow baselines do not read as zero.
            if mb_s < 10.0 {
                format!("{mb_s:.1}")
            } else {
                format!("{mb_s:.0}")
            },
            // A single file's files/s only restates its time.
            match set {
                Set::Big => "-".to_string(),
                _ => format!("{:.0}", row.shape.files as f64 / row.time.as_secs_f64()),
            },
            row.rss
                .map_or("-".to_string(), |mib| format!("{mib:.0} MiB")),
            ratio(mb_s, base(Tool::Openssl)),
            ratio(mb_s, base(Tool::Python(Chunksize::Default))),
            format!("{:.0}%", floor_to(100.0 * mb_s / seal_ceiling, 0)),
            row.cpu.daemon.map_or("-".to_string(), |d| {
                format!("{:.2} ({:.2} / {:.2})", d.total, d.shards(), d.io_other())
            }),
            format!("{:.2}", row.cpu.client),
            format!("{:.0}%", floor_to(row.busy_percent(cores), 0)),
            format!("{:.2}", row.spread),
            format!("{:.0}", row.cache_growth_mib),
        ]);
    }
    table
}

/// The rows of several rounds of the same measurements (each round's rows in the same
/// order) as one row each: the median run by time, with the spread of all of them. An even
/// count takes the slower of the two middle runs.
pub fn median_rows(mut rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    let count = first.len();
    assert!(
        rounds.iter().all(|round| round.len() == count),
        "every round measures the same rows"
    );
    let mut merged = Vec::with_capacity(count);
    let mut columns: Vec<Vec<Row>> = (0..count).map(|_| Vec::new()).collect();
    for round in rounds.drain(..) {
        for (column, row) in columns.iter_mut().zip(round) {
            column.push(row);
        }
    }
    for mut runs in columns {
        runs.sort_by_key(|run| run.time);
        let fastest = runs[0].time.as_secs_f64();
        let slowest = runs[runs.len() - 1].time.as_secs_f64();
        let mut median = runs.swap_remove(runs.len() / 2);
        median.spread = if fastest > 0.0 {
            slowest / fastest
        } else {
            1.0
        };
        merged.push(median);
    }
    merged
}

/// The targets for the client through the daemon at `--fsync never`, each marked
/// met or NOT met with the numbers behind it, and the rows that missed one (each once, in
/// table order).
pub fn targets_table(rows: &[Row], cores: usize, seal_ceiling: f64) -> (Table, Vec<&Row>) {
    let mut targets = Table::new(
        &[
            "target (fsync never)",
            "needed",
            "measured",
            "verdict",
            "vs python chunksize tuned",
        ],
        1,
    );
    let mut missed: Vec<&Row> = Vec::new();
    for op in [Op::Encrypt, Op::Decrypt] {
        let ours = |set| baseline(rows, set, op, Tool::Ringcrypt(Fsync::Never));
        // Each target: the row held to it (`mine`'s on `set`), whether it was met (`None`
        // when there is nothing to compare with), and the table's cells.
        let versus_of = |mine: Tool, set: Set, tool: Tool, needed: f64| {
            let row = baseline(rows, set, op, mine)?;
            let name = match mine {
                Tool::Ringcrypt(_) => format!(
                    "{} {}: vs {}",
                    row.shape.label(),
                    op.as_str(),
                    tool_name(tool, set, cores)
                ),
                _ => format!(
                    "{} {}: {} vs {}",
                    row.shape.label(),
                    op.as_str(),
                    tool_name(mine, set, cores),
                    tool_name(tool, set, cores)
                ),
            };
            // The Python target is set against the pool as people call it; the tuned pool's
            // ratio stands next to it so the comparison hides nothing.
            let tuned = match tool {
                Tool::Python(Chunksize::Default) => {
                    let base = baseline(rows, set, op, Tool::Python(Chunksize::Tuned));
                    ratio(row.mb_s(), base.map(Row::mb_s))
                }
                _ => "-".to_string(),
            };
            Some(match baseline(rows, set, op, tool) {
                Some(base) => {
                    let measured = row.mb_s() / base.mb_s();
                    let met = measured >= needed;
                    let cells = vec![
                        name,
                        format!(">= {needed}x"),
                        format!("{:.2}x", floor_to(measured, 2)),
                        verdict(met),
                        tuned,
                    ];
                    (row, Some(met), cells)
                }
                None => {
                    let cells = vec![
                        name,
                        format!(">= {needed}x"),
                        "-".to_string(),
                        "skipped: no baseline in this run".to_string(),
                        tuned,
                    ];
                    (row, None, cells)
                }
            })
        };
        let versus = |set: Set, tool: Tool, needed: f64| {
            versus_of(Tool::Ringcrypt(Fsync::Never), set, tool, needed)
        };
        let client = Tool::PyClient(Send::Descriptors);
        let by_path = Tool::PyClient(Send::Paths);
        let (pool, tuned) = (
            Tool::Python(Chunksize::Default),
            Tool::Python(Chunksize::Tuned),
        );
        let of_seal = |set: Set| {
            let row = ours(set)?;
            let needed = TARGET_MANY_OF_SEAL * seal_ceiling;
            let met = row.mb_s() >= needed;
            let cells = vec![
                format!(
                    "{} {}: of {cores} x seal ({seal_ceiling:.0} MB/s)",
                    row.shape.label(),
                    op.as_str()
                ),
                format!(">= {:.0}% = {needed:.0} MB/s", 100.0 * TARGET_MANY_OF_SEAL),
                format!(
                    "{:.0}% = {:.0} MB/s",
                    floor_to(100.0 * row.mb_s() / seal_ceiling, 0),
                    row.mb_s()
                ),
                verdict(met),
                "-".to_string(),
            ];
            Some((row, Some(met), cells))
        };
        let lines = [
            versus(Set::Many, Tool::Openssl, TARGET_MANY_VS_OPENSSL),
            of_seal(Set::Many),
            versus(Set::Small, Tool::Openssl, TARGET_SMALL_VS_OPENSSL),
            versus(
                Set::Small,
                Tool::Python(Chunksize::Default),
                TARGET_SMALL_VS_PYTHON,
            ),
            versus(
                Set::Big,
                Tool::Openssl,
                match op {
                    Op::Encrypt => TARGET_BIG_VS_OPENSSL,
                    Op::Decrypt => TARGET_BIG_DECRYPT_VS_OPENSSL,
                },
            ),
            versus(Set::Big, Tool::RingcryptOneShard, TARGET_BIG_VS_ONE_SHARD),
            versus_of(client, Set::Many, pool, TARGET_PYCLIENT_VS_POOL),
            versus_of(client, Set::Many, tuned, TARGET_PYCLIENT_VS_TUNED),
            versus_of(client, Set::Small, pool, TARGET_PYCLIENT_VS_POOL),
            versus_of(client, Set::Small, tuned, TARGET_PYCLIENT_VS_TUNED),
            versus_of(by_path, Set::Many, pool, TARGET_PYCLIENT_VS_POOL),
            versus_of(by_path, Set::Many, tuned, TARGET_PYCLIENT_VS_TUNED),
            versus_of(by_path, Set::Small, pool, TARGET_PYCLIENT_VS_POOL),
            versus_of(by_path, Set::Small, tuned, TARGET_PYCLIENT_VS_TUNED),
        ];
        for (row, met, cells) in lines.into_iter().flatten() {
            targets.row(cells);
            if met == Some(false) && !missed.iter().any(|seen| std::ptr::eq(*seen, row)) {
                missed.push(row);
            }
        }
    }
    (targets, missed)
}

/// The targets that are not ratios of rates: the daemon's CPU per MiB and per file, the
/// tuned Python pool, the spread of the big file's runs, and (with a disk table) what
/// `--fsync always` costs over `--fsync never` on a disk. A target whose rows are not in
/// this run is left out.
pub fn cost_targets(rows: &[Row], disk: &[Row]) -> Table {
    fn row_of(rows: &[Row], set: Set, tool: Tool) -> Option<&Row> {
        baseline(rows, set, Op::Encrypt, tool)
    }
    let mut table = Table::new(&["target", "needed", "measured", "verdict"], 1);
    let never = Tool::Ringcrypt(Fsync::Never);
    if let Some(row) = row_of(rows, Set::Many, never)
        && let Some(d) = row.cpu.daemon
    {
        let mib = row.shape.total_bytes() as f64 / (1u64 << 20) as f64;
        let ms = 1000.0 * d.total / mib;
        table.row(vec![
            format!("{} encrypt: daemon CPU per MiB", row.shape.label()),
            format!("<= {TARGET_MANY_CPU_MS_PER_MIB} ms"),
            format!("{ms:.3} ms"),
            verdict(ms <= TARGET_MANY_CPU_MS_PER_MIB),
        ]);
    }
    if let Some(row) = row_of(rows, Set::Small, never)
        && let Some(d) = row.cpu.daemon
    {
        let us = 1e6 * d.total / row.shape.files as f64;
        table.row(vec![
            format!("{} encrypt: daemon CPU per file", row.shape.label()),
            format!("<= {TARGET_SMALL_CPU_US_PER_FILE} us"),
            format!("{us:.1} us"),
            verdict(us <= TARGET_SMALL_CPU_US_PER_FILE),
        ]);
    }
    if let (Some(row), Some(base)) = (
        row_of(rows, Set::Small, never),
        row_of(rows, Set::Small, Tool::Python(Chunksize::Tuned)),
    ) {
        let measured = row.mb_s() / base.mb_s();
        table.row(vec![
            format!(
                "{} encrypt: vs python pool, chunksize tuned",
                row.shape.label()
            ),
            format!(">= {TARGET_SMALL_VS_TUNED}x"),
            format!("{:.2}x", floor_to(measured, 2)),
            verdict(measured >= TARGET_SMALL_VS_TUNED),
        ]);
    }
    if let Some(row) = row_of(rows, Set::Big, never) {
        table.row(vec![
            format!(
                "{} encrypt, fsync never: slowest / fastest run",
                row.shape.label()
            ),
            format!("<= {TARGET_BIG_SPREAD}"),
            format!("{:.2}", row.spread),
            verdict(row.spread <= TARGET_BIG_SPREAD),
        ]);
    }
    for (set, needed) in [
        (Set::Many, TARGET_DISK_MANY_ALWAYS_OVER_NEVER),
        (Set::Small, TARGET_DISK_SMALL_ALWAYS_OVER_NEVER),
    ] {
        if let (Some(always), Some(never)) = (
            row_of(disk, set, Tool::Ringcrypt(Fsync::Always)),
            row_of(disk, set, never),
        ) {
            let measured = always.time.as_secs_f64() / never.time.as_secs_f64();
            table.row(vec![
                format!(
                    "disk, {} encrypt: fsync always / never",
                    always.shape.label()
                ),
                format!("<= {needed}x"),
                format!("{measured:.2}x"),
                verdict(measured <= needed),
            ]);
        }
    }
    table
}
