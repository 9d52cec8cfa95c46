//! Crypto-core throughput, single thread: how close the RCRYPT v1 seal and open come to what
//! their parts (multi-lane AES-256-CBC and HMAC-SHA256) allow, how much the eight lanes buy
//! over one CBC chain (docs/architecture.md, "Crypto loop"; docs/format.md), and how much the multi-buffer HMAC
//! (`sha_mb`, interleaved SHA-NI chains) buys over one SHA-256 chain, for the HMAC alone and
//! for the whole seal and open against the previous single-chain path run here too.
//!
//! A plain bench binary (`harness = false`): `cargo bench --bench crypto` prints a table and
//! asserts nothing about speed. Every figure is the best of a few repetitions after one
//! untimed warm-up, in GB/s of plaintext (10^9 bytes per second). `--quick` (or
//! `RINGCRYPT_BENCH_QUICK=1`) shrinks the run for a smoke test; other arguments, such as the
//! `--bench` that `cargo bench` passes, are ignored.
//!
//! No IO: buffers are laid out as the format's records (C plaintext bytes, then 32 tag bytes)
//! and processed in batches of eight records, as the daemon does per batch.

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes::Aes256;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockEncryptMut, KeyInit, KeyIvInit};
use hmac::{Hmac, Mac};
use ringcrypt::format::{Opener, Sealer};
use ringcrypt::lanes::{self, Block};
use ringcrypt::limits::{CHUNK_LOG2_DEFAULT, LANES, TAG_BYTES};
use ringcrypt::sha_mb::{self, HmacKey, Message};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Plaintext bytes per measurement in a full run (64 MiB): larger than the caches, so the
/// figures include memory traffic, as a daemon streaming files sees it.
const FULL_BYTES: usize = 64 << 20;
/// Timed repetitions per measurement in a full run; the best one is reported, because noise
/// on a shared machine only ever makes a run slower.
const FULL_REPS: usize = 5;
/// Plaintext bytes per measurement with `--quick` (8 MiB): still whole batches at 1 MiB chunks.
const QUICK_BYTES: usize = 8 << 20;
/// Timed repetitions with `--quick`.
const QUICK_REPS: usize = 2;

/// 8 lanes over one chain; docs/architecture.md gives ~4.5 vs ~1.0 GB/s/core as reachable.
const LANES_SPEEDUP_TARGET: f64 = 4.0;
/// Seal (and open) over the ideal composition of its parts.
const COMPOSITION_TARGET: f64 = 0.90;

/// Fixed test keys: the figures do not depend on key or data values.
const MASTER: [u8; 32] = [0x42; 32];
const SALT: [u8; 32] = [0x17; 32];
const AES_KEY: [u8; 32] = [0x24; 32];
const MAC_KEY: [u8; 32] = [0x35; 32];

struct Config {
    total_bytes: usize,
    reps: usize,
    quick: bool,
}

impl Config {
    fn from_env() -> Config {
        let quick_env = std::env::var("RINGCRYPT_BENCH_QUICK").is_ok_and(|v| v == "1");
        let quick = quick_env || std::env::args().skip(1).any(|arg| arg == "--quick");
        if quick {
            Config {
                total_bytes: QUICK_BYTES,
                reps: QUICK_REPS,
                quick,
            }
        } else {
            Config {
                total_bytes: FULL_BYTES,
                reps: FULL_REPS,
                quick,
            }
        }
    }
}

/// Runs `rep` once untimed (warm-up: page faults, CPU feature detection, frequency ramp), then
/// `reps` times, and returns the shortest time. Each `rep` times only its own hot part, so
/// per-repetition setup (copying a sealed buffer back) stays out of the figure.
fn best_of(reps: usize, mut rep: impl FnMut() -> Duration) -> Duration {
    rep();
    (0..reps)
        .map(|_| rep())
        .min()
        .expect("at least one repetition")
}

fn timed(work: impl FnOnce()) -> Duration {
    let start = Instant::now();
    work();
    start.elapsed()
}

fn gbps(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e9
}

/// `total_bytes` of plaintext as records of C + 32 bytes: each record's first C bytes hold a
/// chunk of plaintext, the last 32 are room for the tag.
fn records_buffer(total_bytes: usize, chunk_log2: u8) -> Vec<u8> {
    let chunk = 1usize << chunk_log2;
    assert_eq!(total_bytes % (chunk * LANES), 0, "whole batches only");
    let stride = chunk + TAG_BYTES;
    let mut records = vec![0u8; total_bytes / chunk * stride];
    for (i, byte) in records.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    records
}

/// Figure 1: one CBC chain over the whole buffer with the `cbc` crate; latency-bound, the
/// baseline.
fn single_chain(cfg: &Config) -> Duration {
    let mut buf = vec![0x5au8; cfg.total_bytes];
    let len = buf.len();
    best_of(cfg.reps, || {
        let encryptor = cbc::Encryptor::<Aes256>::new(&AES_KEY.into(), &[0u8; 16].into());
        let time = timed(|| {
            let out = encryptor
                .encrypt_padded_mut::<NoPadding>(&mut buf, len)
                .expect("whole blocks, no padding");
            black_box(out);
        });
        black_box(&buf);
        time
    })
}

/// Figure 2: the 8-lane engine, 64 KiB chains, eight per call, records laid out as in the
/// format.
fn eight_lanes(cfg: &Config) -> Duration {
    let cipher = Aes256::new(&AES_KEY.into());
    let chunk = 1usize << CHUNK_LOG2_DEFAULT;
    let stride = chunk + TAG_BYTES;
    let mut records = records_buffer(cfg.total_bytes, CHUNK_LOG2_DEFAULT);
    best_of(cfg.reps, || {
        let time = timed(|| {
            for (batch, group) in records.chunks_mut(stride * LANES).enumerate() {
                let mut ivs = [Block::default(); LANES];
                lanes::chunk_ivs(&cipher, (batch * LANES) as u64, &mut ivs);
                lanes::encrypt_lanes(&cipher, &ivs, group, stride, chunk);
            }
        });
        black_box(&records);
        time
    })
}

/// Figure 3: HMAC-SHA256, one tag per 64 KiB chunk over exactly what RCRYPT v1 tags
/// (header_tag || u64(i) || u8(last) || CT_i), from a keyed state cloned per tag.
fn hmac_chunks(cfg: &Config) -> Duration {
    let keyed = <HmacSha256 as Mac>::new_from_slice(&MAC_KEY).expect("any key length");
    let header_tag = [0x66u8; 32];
    let chunk = 1usize << CHUNK_LOG2_DEFAULT;
    let stride = chunk + TAG_BYTES;
    let mut records = records_buffer(cfg.total_bytes, CHUNK_LOG2_DEFAULT);
    best_of(cfg.reps, || {
        let time = timed(|| {
            for (index, record) in records.chunks_exact_mut(stride).enumerate() {
                let (ct, tag) = record.split_at_mut(chunk);
                let mut mac = keyed.clone();
                mac.update(&header_tag);
                mac.update(&(index as u64).to_be_bytes());
                mac.update(&[0]);
                mac.update(ct);
                tag.copy_from_slice(&mac.finalize().into_bytes());
            }
        });
        black_box(&records);
        time
    })
}

/// The 41-byte prefix RCRYPT v1 tags in front of a non-final chunk.
fn chunk_prefix(header_tag: &[u8; 32], index: u64) -> [u8; 41] {
    let mut prefix = [0u8; 41];
    prefix[..32].copy_from_slice(header_tag);
    prefix[32..40].copy_from_slice(&index.to_be_bytes());
    prefix
}

/// Figures 3a-3d: the same tags as figure 3 with `sha_mb`, a batch of eight records per call
/// and `chains` hash chains interleaved.
fn hmac_mb(cfg: &Config, chains: usize) -> Duration {
    let keyed = HmacKey::new(&MAC_KEY);
    let header_tag = [0x66u8; 32];
    let chunk = 1usize << CHUNK_LOG2_DEFAULT;
    let stride = chunk + TAG_BYTES;
    let mut records = records_buffer(cfg.total_bytes, CHUNK_LOG2_DEFAULT);
    best_of(cfg.reps, || {
        let time = timed(|| {
            for (batch, group) in records.chunks_mut(stride * LANES).enumerate() {
                let prefixes: [[u8; 41]; LANES] = std::array::from_fn(|lane| {
                    chunk_prefix(&header_tag, (batch * LANES + lane) as u64)
                });
                let mut tags = [[0u8; TAG_BYTES]; LANES];
                let mut messages = [Message::default(); LANES];
                for ((message, prefix), record) in messages
                    .iter_mut()
                    .zip(&prefixes)
                    .zip(group.chunks_exact(stride))
                {
                    *message = Message {
                        prefix,
                        body: &record[..chunk],
                    };
                }
                keyed.tags_with_chains(chains, &messages, &mut tags);
                for (record, tag) in group.chunks_exact_mut(stride).zip(&tags) {
                    record[chunk..].copy_from_slice(tag);
                }
            }
        });
        black_box(&records);
        time
    })
}

/// The seal as `Sealer::seal_full` did it before `sha_mb`: eight CBC lanes, then one HMAC
/// chain per record from a keyed `hmac` state cloned per tag, in place over `records` (which
/// [`open_previous`] then opens).
fn seal_previous_pass(records: &mut [u8]) {
    let cipher = Aes256::new(&AES_KEY.into());
    let keyed = <HmacSha256 as Mac>::new_from_slice(&MAC_KEY).expect("any key length");
    let header_tag = [0x66u8; 32];
    let chunk = 1usize << CHUNK_LOG2_DEFAULT;
    let stride = chunk + TAG_BYTES;
    for (batch, group) in records.chunks_mut(stride * LANES).enumerate() {
        let mut ivs = [Block::default(); LANES];
        lanes::chunk_ivs(&cipher, (batch * LANES) as u64, &mut ivs);
        lanes::encrypt_lanes(&cipher, &ivs, group, stride, chunk);
        for (lane, record) in group.chunks_exact_mut(stride).enumerate() {
            let (ct, tag) = record.split_at_mut(chunk);
            let mut mac = keyed.clone();
            mac.update(&chunk_prefix(&header_tag, (batch * LANES + lane) as u64));
            mac.update(ct);
            tag.copy_from_slice(&mac.finalize().into_bytes());
        }
    }
}

/// Figure 4p: the previous seal ([`seal_previous_pass`]) on the same 64 KiB batches as figure 4.
fn seal_previous(cfg: &Config) -> Duration {
    let mut records = records_buffer(cfg.total_bytes, CHUNK_LOG2_DEFAULT);
    best_of(cfg.reps, || {
        let time = timed(|| seal_previous_pass(&mut records));
        black_box(&records);
        time
    })
}

/// Figure 5p: the open as `Opener::open_full` did it before `sha_mb`: verify every record's
/// tag with one HMAC chain each, then decrypt each chunk.
fn open_previous(cfg: &Config) -> Duration {
    let cipher = Aes256::new(&AES_KEY.into());
    let keyed = <HmacSha256 as Mac>::new_from_slice(&MAC_KEY).expect("any key length");
    let header_tag = [0x66u8; 32];
    let chunk = 1usize << CHUNK_LOG2_DEFAULT;
    let stride = chunk + TAG_BYTES;
    let mut sealed = records_buffer(cfg.total_bytes, CHUNK_LOG2_DEFAULT);
    seal_previous_pass(&mut sealed);
    let mut records = sealed.clone();
    best_of(cfg.reps, || {
        records.copy_from_slice(&sealed);
        let time = timed(|| {
            for (batch, group) in records.chunks_mut(stride * LANES).enumerate() {
                for (lane, record) in group.chunks_exact(stride).enumerate() {
                    let (ct, tag) = record.split_at(chunk);
                    let mut mac = keyed.clone();
                    mac.update(&chunk_prefix(&header_tag, (batch * LANES + lane) as u64));
                    mac.update(ct);
                    mac.verify_slice(tag).expect("authentic records");
                }
                let mut ivs = [Block::default(); LANES];
                lanes::chunk_ivs(&cipher, (batch * LANES) as u64, &mut ivs);
                for (record, iv) in group.chunks_exact_mut(stride).zip(&ivs) {
                    lanes::decrypt_chain(&cipher, iv, &mut record[..chunk]);
                }
            }
        });
        black_box(&records);
        time
    })
}

/// Figure 4: the whole seal, `Sealer::seal_full` on batches of eight records. A fresh sealer
/// per repetition (its HKDF is a few microseconds and outside the timing), so chunk indices
/// start at 0 as in a real file.
fn seal(cfg: &Config, chunk_log2: u8) -> Duration {
    let stride = (1usize << chunk_log2) + TAG_BYTES;
    let mut records = records_buffer(cfg.total_bytes, chunk_log2);
    best_of(cfg.reps, || {
        let mut sealer = Sealer::new(&MASTER, chunk_log2, SALT);
        let time = timed(|| {
            for batch in records.chunks_mut(stride * LANES) {
                sealer.seal_full(batch).expect("whole records");
            }
        });
        black_box(&records);
        time
    })
}

/// Sealed 64 KiB records and the header they were sealed under, for the open figures.
fn sealed_records(cfg: &Config) -> (Vec<u8>, ringcrypt::format::Header) {
    let mut sealer = Sealer::new(&MASTER, CHUNK_LOG2_DEFAULT, SALT);
    let mut records = records_buffer(cfg.total_bytes, CHUNK_LOG2_DEFAULT);
    sealer.seal_full(&mut records).expect("whole records");
    (records, *sealer.header())
}

/// Figure 5: the whole open, `Opener::open_full` on batches of eight sealed records. Opening is
/// in place, so each repetition first copies the sealed records back (untimed).
fn open(cfg: &Config) -> Duration {
    let chunk = 1usize << CHUNK_LOG2_DEFAULT;
    let stride = chunk + TAG_BYTES;
    let (sealed, header) = sealed_records(cfg);
    let mut records = sealed.clone();
    let expected = records_buffer(cfg.total_bytes, CHUNK_LOG2_DEFAULT);
    let best = best_of(cfg.reps, || {
        records.copy_from_slice(&sealed);
        let mut opener = Opener::new(&header, &MASTER).expect("header made by the sealer");
        let time = timed(|| {
            for batch in records.chunks_mut(stride * LANES) {
                opener.open_full(batch).expect("authentic records");
            }
        });
        black_box(&records);
        time
    });
    // Not a timing assertion: a check that the figure is for a real round trip.
    let round_trips = records
        .chunks_exact(stride)
        .zip(expected.chunks_exact(stride))
        .all(|(got, want)| got[..chunk] == want[..chunk]);
    assert!(round_trips, "open_full did not give back the plaintext");
    best
}

/// Figure 6: CBC decryption with `lanes::decrypt_chain`, one 64 KiB chain at a time.
fn decrypt_chains(cfg: &Config) -> Duration {
    let cipher = Aes256::new(&AES_KEY.into());
    let chunk = 1usize << CHUNK_LOG2_DEFAULT;
    let stride = chunk + TAG_BYTES;
    let mut records = records_buffer(cfg.total_bytes, CHUNK_LOG2_DEFAULT);
    best_of(cfg.reps, || {
        let time = timed(|| {
            for (batch, group) in records.chunks_mut(stride * LANES).enumerate() {
                let mut ivs = [Block::default(); LANES];
                lanes::chunk_ivs(&cipher, (batch * LANES) as u64, &mut ivs);
                for (record, iv) in group.chunks_exact_mut(stride).zip(&ivs) {
                    lanes::decrypt_chain(&cipher, iv, &mut record[..chunk]);
                }
            }
        });
        black_box(&records);
        time
    })
}

/// 1 / (1/a + 1/b): the throughput of doing a then b over the same bytes with no overhead.
fn serial(a: f64, b: f64) -> f64 {
    1.0 / (1.0 / a + 1.0 / b)
}

fn verdict(ratio: f64, target: f64) -> &'static str {
    if ratio >= target { "met" } else { "not met" }
}

fn row(name: &str, bytes: usize, time: Duration) -> f64 {
    let rate = gbps(bytes, time);
    println!(
        "{name:<50} {rate:>7.3} GB/s  {ms:>9.2} ms",
        ms = time.as_secs_f64() * 1e3
    );
    rate
}

fn main() {
    let cfg = Config::from_env();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bytes = cfg.total_bytes;
    println!(
        "ringcrypt crypto bench: {} MiB of plaintext per figure, best of {} after a warm-up{}",
        bytes >> 20,
        cfg.reps,
        if cfg.quick { " (quick)" } else { "" }
    );
    println!(
        "single-thread figures, GB/s = 10^9 plaintext bytes/s, {cores} cores on this machine\n"
    );

    let single = row(
        "1. CBC encrypt, one chain (cbc crate)",
        bytes,
        single_chain(&cfg),
    );
    let aes8 = row(
        "2. CBC encrypt, 8 lanes x 64 KiB (encrypt_lanes)",
        bytes,
        eight_lanes(&cfg),
    );
    let mac = row(
        "3. HMAC-SHA256, one tag per 64 KiB (sha2, 1 chain)",
        bytes,
        hmac_chunks(&cfg),
    );
    let accelerated = HmacKey::new(&MAC_KEY).is_accelerated();
    let mut mac_mb = 0.0;
    for (chains, label) in (1..=sha_mb::MAX_CHAINS).zip(["3a", "3b", "3c", "3d"]) {
        let mark = if chains == sha_mb::CHAINS {
            ", used"
        } else {
            ""
        };
        let rate = row(
            &format!("{label}. HMAC-SHA256, sha_mb, {chains} chain(s){mark}"),
            bytes,
            hmac_mb(&cfg, chains),
        );
        if chains == sha_mb::CHAINS {
            mac_mb = rate;
        }
    }
    let sealed = row(
        "4. seal_full, batches of 8 x 64 KiB",
        bytes,
        seal(&cfg, CHUNK_LOG2_DEFAULT),
    );
    let sealed_before = row(
        "4p. seal, previous path (8 lanes + 1 HMAC chain)",
        bytes,
        seal_previous(&cfg),
    );
    let opened = row("5. open_full, batches of 8 x 64 KiB", bytes, open(&cfg));
    let opened_before = row(
        "5p. open, previous path (1 HMAC chain + decrypt)",
        bytes,
        open_previous(&cfg),
    );
    let dec = row(
        "6. CBC decrypt, 64 KiB chains (decrypt_chain)",
        bytes,
        decrypt_chains(&cfg),
    );
    row(
        "   seal_full, chunk_log2 12 (8 x 4 KiB)",
        bytes,
        seal(&cfg, 12),
    );
    row(
        "   seal_full, chunk_log2 20 (8 x 1 MiB)",
        bytes,
        seal(&cfg, 20),
    );

    let ideal_seal = serial(aes8, mac_mb);
    let ideal_open = serial(dec, mac_mb);
    let speedup = aes8 / single;
    let seal_share = sealed / ideal_seal;
    let open_share = opened / ideal_open;
    println!();
    if !accelerated {
        println!("no SHA-NI on this CPU: the sha_mb rows are its portable path (the sha2 crate)");
    }
    println!(
        "8 lanes / one chain        {speedup:>6.2}x   (target >= {LANES_SPEEDUP_TARGET:.0}x)   {}",
        verdict(speedup, LANES_SPEEDUP_TARGET)
    );
    println!(
        "HMAC sha_mb / one chain    {:>6.2}x   ({} chains)",
        mac_mb / mac,
        sha_mb::CHAINS
    );
    println!(
        "seal / previous seal       {:>6.2}x   ({sealed_before:.3} -> {sealed:.3} GB/s; ideal was \
         {:.3}, now {ideal_seal:.3})",
        sealed / sealed_before,
        serial(aes8, mac)
    );
    println!(
        "open / previous open       {:>6.2}x   ({opened_before:.3} -> {opened:.3} GB/s; ideal was \
         {:.3}, now {ideal_open:.3})",
        opened / opened_before,
        serial(dec, mac)
    );
    println!(
        "seal / ideal ({ideal_seal:.3} GB/s)  {:>6.1}%   (target >= {:.0}%)  {}",
        seal_share * 100.0,
        COMPOSITION_TARGET * 100.0,
        verdict(seal_share, COMPOSITION_TARGET)
    );
    println!(
        "open / ideal ({ideal_open:.3} GB/s)  {:>6.1}%   (target >= {:.0}%)  {}",
        open_share * 100.0,
        COMPOSITION_TARGET * 100.0,
        verdict(open_share, COMPOSITION_TARGET)
    );
    println!(
        "\nideal = 1 / (1/aes + 1/hmac) from this run (aes = 8-lane encrypt for seal, decrypt \
         for open; hmac = sha_mb at {} chains, 'was' uses the one-chain figure 3).\nper core: \
         these are one thread on one core; with one shard per core the daemon's ceiling is \
         about {cores}x the seal figure ({:.3} GB/s), before IO.",
        sha_mb::CHAINS,
        sealed * cores as f64
    );
}
