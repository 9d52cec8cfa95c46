//! Direct IO (`--io direct|buffered|auto`), on both backends, against the real daemon on real
//! files in the test's temp directory (on this machine's disk; the checks that need a disk
//! say so, and are skipped with a message where the directory is in memory).
//!
//! What must hold: every size around the alignment edges (empty, 1 byte, 511/512, 4095/4096/
//! 4097, a chunk and a chunk ± 1, one batch ± 1, several batches, a range-split file)
//! encrypts to exactly the RCRYPT v1 size, decrypts and verifies through the daemon and the
//! offline client to the same bytes, and the offline client's files decrypt through it; on a
//! disk, a direct job's output is not left in the page cache while a buffered one's is, and
//! `auto` goes direct only from 1 MiB on; a file system that refuses `O_DIRECT` costs
//! nothing but the fallback, which `ringcrypt_direct_io_fallbacks_total` counts.

#[macro_use]
mod support;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use ringcrypt::format::sealed_len;
use support::*;

const CHUNK: usize = 1 << 16;
const BATCH: usize = 8 * CHUNK;

/// The sizes where alignment can go wrong.
const EDGES: [usize; 15] = [
    0,
    1,
    511,
    512,
    4095,
    4096,
    4097,
    CHUNK - 1,
    CHUNK,
    CHUNK + 1,
    BATCH - 1,
    BATCH,
    BATCH + 1,
    3 * BATCH + 100,
    // With `--split-min-mib 1`: split over both shards, each range several batches.
    5 * BATCH + 4097,
];

/// Whether `dir` is in memory (tmpfs, ramfs), where direct IO leaves pages cached anyway.
fn in_memory(dir: &Path) -> bool {
    let file = fs::File::open(dir).expect("open dir");
    let mut fs_info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fs_info` is a valid statfs buffer and the descriptor is open.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs_info) };
    assert_eq!(rc, 0, "fstatfs {}", dir.display());
    [0x0102_1994, 0x8584_58f6].contains(&{ fs_info.f_type })
}

/// Pages of `path` that are in the page cache, and all its pages (`mincore`).
fn cached_pages(path: &Path) -> (usize, usize) {
    let file = fs::File::open(path).expect("open output");
    let len = file.metadata().unwrap().len() as usize;
    let page = 4096;
    let pages = len.div_ceil(page);
    if len == 0 {
        return (0, 0);
    }
    // SAFETY: a private read-only mapping of an open file, unmapped below; mincore only
    // reports residency and faults nothing in.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED, "mmap {}", path.display());
        let mut vec = vec![0u8; pages];
        let rc = libc::mincore(map, len, vec.as_mut_ptr());
        libc::munmap(map, len);
        assert_eq!(rc, 0, "mincore {}", path.display());
        (vec.iter().filter(|&&b| b & 1 == 1).count(), pages)
    }
}

fn direct_daemon(backend: &'static str, io: &str) -> Daemon {
    Daemon::builder(backend)
        .metrics("off")
        .args(&["--io", io, "--split-min-mib", "1"])
        .start()
}

fn offline(d: &Daemon, args: &[&str]) -> Run {
    let keys = d.keys.to_str().unwrap().to_string();
    let mut all = vec!["--keys", &keys];
    all.extend_from_slice(args);
    ringcrypt_in(&d.root, &d.socket, &all)
}

/// Every edge size through a `--io direct` daemon (CLI, which passes descriptors, and path
/// requests), checked against the format's size and the offline client both ways.
fn direct_round_trips_at_every_edge(backend: &'static str) {
    let d = direct_daemon(backend, "direct");
    for (i, &len) in EDGES.iter().enumerate() {
        let plain = bytes(len, i as u64 + 1);
        let input = d.root.join(format!("f{len}"));
        fs::write(&input, &plain).unwrap();
        let p = |suffix: &str| d.root.join(format!("f{len}.{suffix}"));
        let s = |path: &Path| path.to_str().unwrap().to_string();

        d.cli(&["encrypt", &s(&input), "-o", &s(&p("rcrypt"))]).ok();
        let sealed = fs::read(p("rcrypt")).unwrap();
        assert_eq!(
            sealed.len() as u64,
            sealed_len(len as u64, 16),
            "size of {len}"
        );
        d.cli(&["decrypt", &s(&p("rcrypt")), "-o", &s(&p("out"))])
            .ok();
        assert!(
            fs::read(p("out")).unwrap() == plain,
            "daemon round trip of {len}"
        );
        d.cli(&["verify", &s(&p("rcrypt"))]).ok();
        offline(&d, &["decrypt", &s(&p("rcrypt")), "-o", &s(&p("off"))]).ok();
        assert!(fs::read(p("off")).unwrap() == plain, "offline opens {len}");

        // The other way: the offline client seals, the daemon opens by path.
        offline(&d, &["encrypt", &s(&input), "-o", &s(&p("off.rcrypt"))]).ok();
        let reply = d
            .client()
            .job(&file_req("decrypt", &p("off.rcrypt"), &p("path.out")));
        let done = reply.last().unwrap();
        assert_eq!(done["type"], "done", "{}", brief(&reply));
        // The aligned read windows overlap; what is counted is the file, once.
        assert_eq!(done["bytes_in"], sealed.len() as u64, "bytes in of {len}");
        assert_eq!(done["bytes_out"], len as u64, "bytes out of {len}");
        assert!(
            fs::read(p("path.out")).unwrap() == plain,
            "daemon opens offline {len}"
        );
        // And a path encrypt, whose output the daemon links itself.
        let reply = d
            .client()
            .job(&file_req("encrypt", &input, &p("path.rcrypt")));
        assert_eq!(reply.last().unwrap()["type"], "done", "{}", brief(&reply));
        offline(
            &d,
            &["decrypt", &s(&p("path.rcrypt")), "-o", &s(&p("path.off"))],
        )
        .ok();
        assert!(
            fs::read(p("path.off")).unwrap() == plain,
            "path encrypt of {len}"
        );
    }
}

/// A damaged record is refused by a direct decrypt as by a buffered one, and nothing is
/// written under the output name.
fn direct_decrypt_refuses_a_damaged_record(backend: &'static str) {
    let d = direct_daemon(backend, "direct");
    let input = d.root.join("in");
    fs::write(&input, bytes(3 * BATCH + 100, 7)).unwrap();
    let sealed = d.root.join("in.rcrypt");
    d.cli(&["encrypt", input.to_str().unwrap()]).ok();
    let mut data = fs::read(&sealed).unwrap();
    let at = data.len() / 2;
    data[at] ^= 1;
    fs::write(&sealed, &data).unwrap();
    let out = d.root.join("out");
    d.cli(&[
        "decrypt",
        sealed.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .failed("auth_failed");
    assert!(!out.exists(), "nothing linked after a refused record");
}

/// On a disk: a direct encrypt leaves at most the partial blocks of its batches in the page
/// cache, a buffered one all of its output; `auto` is direct from 1 MiB on only.
fn direct_output_stays_out_of_the_page_cache(backend: &'static str) {
    let probe = tempfile::tempdir().unwrap();
    if in_memory(probe.path()) {
        eprintln!("skipped: the temp directory is in memory, where every page is cached");
        return;
    }
    let len = 4 << 20;
    // One page per batch boundary, and the first and last.
    let edge_pages = len / BATCH + 2;
    for (io, big_direct, small_direct) in [
        ("direct", true, true),
        ("auto", true, false),
        ("buffered", false, false),
    ] {
        let d = direct_daemon(backend, io);
        for (size, direct) in [(len, big_direct), (512 << 10, small_direct)] {
            let input = d.root.join(format!("in{size}"));
            fs::write(&input, bytes(size, 3)).unwrap();
            let output = d.root.join(format!("in{size}.rcrypt"));
            d.cli(&["encrypt", input.to_str().unwrap()]).ok();
            let (cached, pages) = cached_pages(&output);
            if direct {
                assert!(
                    cached <= edge_pages.min(pages),
                    "--io {io}, {size} bytes: {cached} of {pages} pages cached"
                );
            } else {
                assert_eq!(
                    cached, pages,
                    "--io {io}, {size} bytes: buffered, all cached"
                );
            }
        }
    }
}

both_backends!(
    direct_round_trips_at_every_edge,
    direct_decrypt_refuses_a_damaged_record,
    direct_output_stays_out_of_the_page_cache,
);

/// The fallback needs the `test-hooks` feature (the suite's) to play a file system without
/// `O_DIRECT`.
#[cfg(feature = "test-hooks")]
mod hooked {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    fn scrape(port: u16) -> String {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    }

    fn fallbacks(text: &str) -> f64 {
        text.lines()
            .filter(|line| line.starts_with("ringcrypt_direct_io_fallbacks_total{"))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    /// A file system that refuses `O_DIRECT` (the test hook plays one): each file falls back to
    /// buffered IO, its output is right, and the counter counts every file, from 0.
    fn refused_direct_io_falls_back_per_file(backend: &'static str) {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = Daemon::builder(backend)
            .metrics(&format!("127.0.0.1:{port}"))
            .env("RINGCRYPT_TEST_NO_DIRECT_IO", "1")
            .args(&["--io", "direct"])
            .start();
        let first = scrape(port);
        assert!(
            first.contains("ringcrypt_direct_io_fallbacks_total{shard=\"0\"} 0"),
            "the family is there from the first scrape: {first}"
        );
        for (i, len) in [1usize, 4097, 3 * BATCH + 100].into_iter().enumerate() {
            let plain = bytes(len, 40 + i as u64);
            let input = d.root.join(format!("f{i}"));
            fs::write(&input, &plain).unwrap();
            let sealed = d.root.join(format!("f{i}.rcrypt"));
            let out = d.root.join(format!("f{i}.out"));
            d.cli(&["encrypt", input.to_str().unwrap()]).ok();
            d.cli(&[
                "decrypt",
                sealed.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ])
            .ok();
            assert!(
                fs::read(&out).unwrap() == plain,
                "fallback round trip of {len}"
            );
            assert_eq!(
                fallbacks(&scrape(port)),
                2.0 * (i + 1) as f64,
                "one per file"
            );
        }
    }

    both_backends!(refused_direct_io_falls_back_per_file);
}
