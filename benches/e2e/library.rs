//! The library's own rate on one core, measured in-process before any data set is made:
//! `Sealer::seal_full` and `Opener::open_full` over fixed keys in 1 MiB batches, best of a
//! few repetitions. Cores x the seal rate is the ceiling the report holds the daemon to.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ringcrypt::format::{Opener, Sealer};
use ringcrypt::limits::{CHUNK_LOG2_DEFAULT, TAG_BYTES};

use crate::support::MIB;

/// The seal figure: fixed keys, since the rate does not depend on key or data values.
const MASTER: [u8; 32] = [0x42; 32];
const SALT: [u8; 32] = [0x17; 32];
/// Plaintext per `seal_full` call: 1 MiB, sixteen 64 KiB records.
const SEAL_BATCH_BYTES: usize = MIB as usize;
/// Timed repetitions of the seal figure; the best is kept, since noise on a shared machine
/// only ever makes a repetition slower.
pub const SEAL_REPS: usize = 3;

/// One core's rate through the library, in MB/s of plaintext: `Sealer::seal_full` (and
/// `Opener::open_full`) over `bytes` in 1 MiB batches of default-size records, best of
/// `SEAL_REPS` after one untimed warm-up (page faults, CPU feature detection, clock ramp).
pub fn library_rates(bytes: usize) -> (f64, f64) {
    let chunk = 1usize << CHUNK_LOG2_DEFAULT;
    let stride = chunk + TAG_BYTES;
    let batch = SEAL_BATCH_BYTES / chunk * stride;
    let mut records = vec![0u8; bytes / chunk * stride];
    for (i, byte) in records.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31);
    }
    let mut best_seal = Duration::MAX;
    let mut header = None;
    for rep in 0..=SEAL_REPS {
        // A fresh sealer per repetition, so chunk indices start at 0 as in a real file; its
        // key derivation takes microseconds and stays outside the timing.
        let mut sealer = Sealer::new(&MASTER, CHUNK_LOG2_DEFAULT, SALT);
        let start = Instant::now();
        for group in records.chunks_mut(batch) {
            sealer.seal_full(group).expect("whole records");
        }
        let time = start.elapsed();
        black_box(&records);
        if rep > 0 {
            best_seal = best_seal.min(time);
        }
        header = Some(*sealer.header());
    }
    // Open what one fresh seal wrote: the repetitions above sealed the buffer repeatedly.
    let header = header.expect("at least one repetition");
    let mut sealed = records;
    for (i, byte) in sealed.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31);
    }
    let mut sealer = Sealer::new(&MASTER, CHUNK_LOG2_DEFAULT, SALT);
    sealer.seal_full(&mut sealed).expect("whole records");
    let mut opened = sealed.clone();
    let mut best_open = Duration::MAX;
    for rep in 0..=SEAL_REPS {
        opened.copy_from_slice(&sealed);
        let mut opener = Opener::new(&header, &MASTER).expect("header made by the sealer");
        let start = Instant::now();
        for group in opened.chunks_mut(batch) {
            opener.open_full(group).expect("records the sealer wrote");
        }
        let time = start.elapsed();
        black_box(&opened);
        if rep > 0 {
            best_open = best_open.min(time);
        }
    }
    let rate = |time: Duration| bytes as f64 / time.as_secs_f64() / 1e6;
    (rate(best_seal), rate(best_open))
}
