//! Per-file variants: their list (with each io_uring variant's ring), the plain-syscall
//! passes, and the extra pass that times every step of them on its own.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use io_uring::IoUring;

use crate::data::SmallSet;
use crate::small_uring::UringPass;
use crate::syscalls::{
    create_output, link, mtime_of, open_input, read_full, salt, small_input, stamp, write_full,
};
use crate::{FIXED_SLOTS, RING_ENTRIES, SMALL_IN_BYTES};

#[derive(Clone, Copy)]
pub enum SmallVariant {
    SyncSyscalls,
    SyncOneWrite,
    Uring { linked: bool, defer: bool },
}

impl SmallVariant {
    pub const ALL: [SmallVariant; 6] = [
        SmallVariant::SyncSyscalls,
        SmallVariant::SyncOneWrite,
        SmallVariant::Uring {
            linked: false,
            defer: false,
        },
        SmallVariant::Uring {
            linked: true,
            defer: false,
        },
        SmallVariant::Uring {
            linked: false,
            defer: true,
        },
        SmallVariant::Uring {
            linked: true,
            defer: true,
        },
    ];

    pub fn name(&self) -> &'static str {
        match self {
            SmallVariant::SyncSyscalls => "sync-syscalls",
            SmallVariant::SyncOneWrite => "sync-one-write",
            SmallVariant::Uring {
                linked: false,
                defer: false,
            } => "uring-unlinked",
            SmallVariant::Uring {
                linked: true,
                defer: false,
            } => "uring-linked",
            SmallVariant::Uring {
                linked: false,
                defer: true,
            } => "uring-unlinked-defer",
            SmallVariant::Uring {
                linked: true,
                defer: true,
            } => "uring-linked-defer",
        }
    }

    /// The variant's ring, made once and kept across its passes, as a shard keeps its own.
    pub fn ring(&self) -> io::Result<Option<IoUring>> {
        let SmallVariant::Uring { linked, defer } = *self else {
            return Ok(None);
        };
        let mut builder = IoUring::builder();
        if defer {
            builder.setup_single_issuer().setup_defer_taskrun();
        }
        let ring = builder.build(RING_ENTRIES)?;
        if linked {
            ring.submitter().register_files_sparse(FIXED_SLOTS)?;
        }
        Ok(Some(ring))
    }

    pub fn pass(
        &self,
        set: &SmallSet,
        out: &[OwnedFd],
        ring: Option<&mut IoUring>,
    ) -> io::Result<()> {
        match (*self, ring) {
            (SmallVariant::SyncSyscalls, _) => sync_pass(set, out, false),
            (SmallVariant::SyncOneWrite, _) => sync_pass(set, out, true),
            (SmallVariant::Uring { linked, .. }, Some(ring)) => {
                UringPass::new(set, out, ring, linked).run()
            }
            (SmallVariant::Uring { .. }, None) => {
                unreachable!("an io_uring variant is given its ring")
            }
        }
    }
}

fn sync_pass(set: &SmallSet, out: &[OwnedFd], one_write: bool) -> io::Result<()> {
    let mut buf = [0u8; SMALL_IN_BYTES];
    for i in 0..set.files() {
        let (in_dir, out_dir, name) = set.file(out, i);
        let mtime = small_input(in_dir, name, &mut buf)?;
        let fd = create_output(out_dir, false)?;
        if one_write {
            write_full(fd.as_fd(), &set.sealed[..])?;
        } else {
            write_full(fd.as_fd(), set.header())?;
            write_full(fd.as_fd(), set.body())?;
        }
        stamp(fd.as_fd(), mtime)?;
        link(fd.as_fd(), out_dir, name)?;
    }
    Ok(())
}

/// The steps of `sync-syscalls`, in order, for the per-step table.
const STEPS: [&str; 12] = [
    "openat2 of the input",
    "fstat",
    "read 4 KiB",
    "close of the input",
    "getrandom 16 bytes",
    "open O_TMPFILE",
    "write header (64 bytes)",
    "write body (4208 bytes)",
    "write header and body in one (4272 bytes)",
    "futimens",
    "linkat AT_EMPTY_PATH",
    "close of the output",
];

/// `sync-syscalls` and `sync-one-write` once more, alternated file by file (even files write
/// twice, odd files once) so both see the same machine, with the wall time of each step
/// taken apart: per step, the nanoseconds of every file that took it. Pinned and
/// single-threaded, a step's wall time is its CPU time unless the thread was preempted,
/// which the median leaves out.
pub fn sync_steps_pass(set: &SmallSet, out: &[OwnedFd]) -> io::Result<Vec<Vec<u64>>> {
    let mut steps: Vec<Vec<u64>> = STEPS
        .iter()
        .map(|_| Vec::with_capacity(set.files()))
        .collect();
    let mut buf = [0u8; SMALL_IN_BYTES];
    for i in 0..set.files() {
        let one_write = i % 2 == 1;
        let (in_dir, out_dir, name) = set.file(out, i);
        let mut at = Instant::now();
        let mut lap = |step: usize| {
            let now = Instant::now();
            steps[step].push((now - at).as_nanos() as u64);
            at = now;
        };
        let input = open_input(in_dir, name)?;
        lap(0);
        let (mtime, len) = mtime_of(input.as_fd())?;
        lap(1);
        read_full(input.as_fd(), &mut buf[..len])?;
        lap(2);
        drop(input);
        lap(3);
        std::hint::black_box(salt()?);
        lap(4);
        let fd = create_output(out_dir, false)?;
        lap(5);
        if one_write {
            write_full(fd.as_fd(), &set.sealed[..])?;
            lap(8);
        } else {
            write_full(fd.as_fd(), set.header())?;
            lap(6);
            write_full(fd.as_fd(), set.body())?;
            lap(7);
        }
        stamp(fd.as_fd(), mtime)?;
        lap(9);
        link(fd.as_fd(), out_dir, name)?;
        lap(10);
        drop(fd);
        lap(11);
    }
    Ok(steps)
}

/// The median and mean of each step, in µs, or `None` for a step the pass did not take.
fn step_stats(times: &[u64]) -> Option<(f64, f64)> {
    if times.is_empty() {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let median = sorted[(sorted.len() - 1) / 2] as f64 / 1e3;
    let mean = sorted.iter().sum::<u64>() as f64 / sorted.len() as f64 / 1e3;
    Some((median, mean))
}

pub fn print_steps(steps: &[Vec<u64>]) {
    println!();
    println!(
        "sync-syscalls and sync-one-write taken apart: wall time per step, one extra pass over every file, the two alternated file by file"
    );
    println!();
    println!("| step | median µs | mean µs |");
    println!("| --- | --- | --- |");
    // Sums of medians and means of the steps every file takes, then of each way to write.
    let (mut common, mut two, mut one) = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0));
    for (i, (name, times)) in STEPS.iter().zip(steps).enumerate() {
        let Some((median, mean)) = step_stats(times) else {
            continue;
        };
        let sum = match i {
            6 | 7 => &mut two,
            8 => &mut one,
            _ => &mut common,
        };
        sum.0 += median;
        sum.1 += mean;
        println!("| {name} | {median:.2} | {mean:.2} |");
    }
    println!(
        "| all steps, two writes | {:.2} | {:.2} |",
        common.0 + two.0,
        common.1 + two.1
    );
    println!(
        "| all steps, one write | {:.2} | {:.2} |",
        common.0 + one.0,
        common.1 + one.1
    );
}
