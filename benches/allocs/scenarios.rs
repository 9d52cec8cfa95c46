//! The measuring child of the allocs bench: it makes the inputs in the scratch directory,
//! starts the in-process daemon, measures the idle daemon, then runs each scenario (a warm-up
//! to the steady state, then the measured round), the tree, and the sampled round, and
//! prints the header, the table and the call sites before it ends the process.

use std::cell::Cell;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use ringcrypt::limits::FINISHED_JOBS_KEPT;
use ringcrypt::limits::TREE_WINDOW;
use ringcrypt::protocol::FileOp;

use crate::Options;
use crate::counting::{Counts, SAMPLE_EVERY, SAMPLE_TICKET, SAMPLES};
use crate::daemon::{REPLY_TIMEOUT, make_key_ring, pong_field, start_daemon};
use crate::measure::{Form, Jobs, Row, SETTLE, measure, per, print_table, request_line};
use crate::quiet_client::Conn;
use crate::sites::print_sites;
use crate::support::{KIB, MIB, write_input};

/// 1 MiB inputs, used in turn: distinct enough to spread over the shards.
const BIG_INPUTS: usize = 64;

fn make_dir(path: &Path) -> PathBuf {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    path.to_path_buf()
}

/// Removes a round's outputs (files or a tree), so the next round writes fresh names.
fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        let result = if path.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        result.unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

pub fn child(opts: Options, scratch: PathBuf) {
    let Options {
        warmup,
        jobs,
        samples,
        sites,
        quick,
        metrics,
        sample_tree,
        ..
    } = opts;
    // A warm-up tree of a whole window of files leaves that window's paths behind as spares.
    let tree_warm = warmup.max(TREE_WINDOW);
    let tree_files = jobs;
    println!("preparing inputs in {}", scratch.display());
    let keys = make_key_ring(&scratch);
    let small_dir = make_dir(&scratch.join("small"));
    let small: Vec<PathBuf> = (0..jobs)
        .map(|i| {
            let path = small_dir.join(format!("f{i:05}.bin"));
            write_input(&path, 4 * KIB, i as u64);
            path
        })
        .collect();
    let big_dir = make_dir(&scratch.join("big"));
    let big: Vec<PathBuf> = (0..BIG_INPUTS)
        .map(|i| {
            let path = big_dir.join(format!("b{i:02}.bin"));
            write_input(&path, MIB, 1_000_000 + i as u64);
            path
        })
        .collect();
    let tree_dirs = [("tree-warm", tree_warm), ("tree", tree_files)].map(|(name, n)| {
        let dir = make_dir(&scratch.join(name));
        for i in 0..n {
            write_input(
                &dir.join(format!("t{i:05}.bin")),
                4 * KIB,
                2_000_000 + i as u64,
            );
        }
        dir
    });
    let out_dir = make_dir(&scratch.join("out"));

    let socket = scratch.join("s.sock");
    let pong = start_daemon(&scratch, &keys, &socket, &opts);
    let shards: usize = pong_field(&pong, "shards")
        .parse()
        .expect("the pong gives the shard count");
    let base_warmup = warmup;
    let warmup = FINISHED_JOBS_KEPT * shards * 5 / 4 + base_warmup;
    println!(
        "warm-up: {warmup} jobs per scenario ({FINISHED_JOBS_KEPT} finished jobs kept per shard \
         x {shards} shards x 5/4 + {base_warmup}), so every window measures the steady state"
    );
    let mut conn = Conn::connect(&socket, REPLY_TIMEOUT).expect("connect to the daemon");

    // Ids go up across the whole run, as a client's do on one connection.
    let next_id = Cell::new(1u64);
    let id = || {
        next_id.set(next_id.get() + 1);
        next_id.get()
    };
    // `n` jobs of `op` on `inputs` in turn, outputs named `{tag}{i}{ext}` in `out`.
    let round = |op: FileOp, form: Form, inputs: &[PathBuf], n: usize, tag: &str, ext: &str| {
        let pairs: Vec<(PathBuf, PathBuf)> = (0..n)
            .map(|i| {
                let input = inputs[i % inputs.len()].clone();
                (input, out_dir.join(format!("{tag}{i:05}{ext}")))
            })
            .collect();
        let lines = pairs
            .iter()
            .map(|(input, output)| request_line(id(), op, input, output, form))
            .collect();
        let passed = (form == Form::Passed).then(|| {
            let inputs = pairs.iter().map(|(input, _)| input.clone()).collect();
            (inputs, out_dir.as_path())
        });
        let jobs = Jobs {
            lines,
            expect: b"\"files_ok\":1,",
            passed,
        };
        // Jobs on passed descriptors leave no output behind (the bench does not link it).
        let outputs = if form == Form::Passed {
            Vec::new()
        } else {
            pairs.into_iter().map(|(_, output)| output).collect()
        };
        (jobs, outputs)
    };

    // The idle daemon: nothing should allocate in the background.
    thread::sleep(Duration::from_millis(500));
    let before = Counts::now();
    thread::sleep(Duration::from_secs(1));
    let idle = Counts::now().since(before);

    let mut rows = Vec::new();
    // A scenario of single-file jobs: warm up, remove, measure; returns the measured outputs.
    let mut single = |name: &str, op: FileOp, form: Form, inputs: &[PathBuf], tag: &str, ext| {
        println!("{name}: {warmup} warm-up jobs, {jobs} measured");
        let (warm, warm_outputs) = round(op, form, inputs, warmup, &format!("w-{tag}"), ext);
        warm.run(&mut conn);
        remove_all(&warm_outputs);
        let (measured, outputs) = round(op, form, inputs, jobs, tag, ext);
        let window = measure(&mut conn, &measured, jobs);
        rows.push(Row {
            name: name.to_string(),
            per: "job",
            window,
        });
        outputs
    };

    // 1. encrypt 4 KiB; its ciphertexts are the inputs of 3. and the existing outputs of 4.
    let sealed = single(
        "encrypt 4 KiB",
        FileOp::Encrypt,
        Form::Path,
        &small,
        "enc4k-",
        ".rcrypt",
    );
    // 2. encrypt 1 MiB.
    let outputs = single(
        "encrypt 1 MiB",
        FileOp::Encrypt,
        Form::Path,
        &big,
        "enc1m-",
        ".rcrypt",
    );
    remove_all(&outputs);
    // 3. decrypt 4 KiB.
    let outputs = single(
        "decrypt 4 KiB",
        FileOp::Decrypt,
        Form::Path,
        &sealed,
        "dec4k-",
        ".bin",
    );
    remove_all(&outputs);
    // 4. encrypt 4 KiB with overwrite onto the outputs of 1. (the same names); the warm-up's
    // outputs are new names, written by the same temp-name-and-rename path.
    let overwritten = single(
        "encrypt 4 KiB, overwrite existing",
        FileOp::Encrypt,
        Form::Overwrite,
        &small,
        "enc4k-",
        ".rcrypt",
    );
    remove_all(&overwritten);
    // 5. encrypt 4 KiB with the files passed as descriptors.
    single(
        "encrypt 4 KiB, fds passed",
        FileOp::Encrypt,
        Form::Passed,
        &small,
        "fds-",
        ".rcrypt",
    );
    let enc4k_row = &rows[0].window;
    let enc4k_events = enc4k_row.counts.allocs + enc4k_row.counts.reallocs;

    // 6. a tree of 4 KiB files.
    println!("tree: a warm-up tree of {tree_warm} files, a measured tree of {tree_files}");
    let [tree_warm_dir, tree_dir] = &tree_dirs;
    for (dir, out, files, measured) in [
        (tree_warm_dir, "tree-warm-out", tree_warm, false),
        (tree_dir, "tree-out", tree_files, true),
    ] {
        let out = scratch.join(out);
        let expect = format!("\"files_ok\":{files},\"files_failed\":0,");
        let tree = Jobs {
            lines: vec![request_line(id(), FileOp::Encrypt, dir, &out, Form::Tree)],
            expect: expect.as_bytes(),
            passed: None,
        };
        if measured {
            rows.push(Row {
                name: format!("tree encrypt, {files} x 4 KiB (1 job)"),
                per: "file",
                window: measure(&mut conn, &tree, files),
            });
        } else {
            tree.run(&mut conn);
        }
        remove_all(std::slice::from_ref(&out));
    }

    // Call sites: the encrypt 4 KiB round again (same names, removed above), or the measured
    // tree again (its output removed above), sampled.
    let tree_row = &rows.last().expect("the tree row").window;
    let tree_expect = format!("\"files_ok\":{tree_files},\"files_failed\":0,");
    let (sampled_round, sampled_unit, events, (sampled_jobs, outputs)) = if sample_tree {
        let out = scratch.join("tree-out");
        let tree = Jobs {
            lines: vec![request_line(
                id(),
                FileOp::Encrypt,
                &tree_dirs[1],
                &out,
                Form::Tree,
            )],
            expect: tree_expect.as_bytes(),
            passed: None,
        };
        let events = tree_row.counts.allocs + tree_row.counts.reallocs;
        ("tree encrypt", "file", events, (tree, vec![out]))
    } else {
        let round = round(
            FileOp::Encrypt,
            Form::Path,
            &small,
            jobs,
            "enc4k-",
            ".rcrypt",
        );
        ("encrypt 4 KiB", "job", enc4k_events, round)
    };
    println!("{sampled_round} again, {jobs} {sampled_unit}s, sampling allocation call sites");
    let every = (events / samples).max(1);
    SAMPLES
        .lock()
        .expect("the sampler is not poisoned")
        .reserve(4 * samples as usize);
    thread::sleep(SETTLE);
    SAMPLE_TICKET.store(0, Ordering::SeqCst);
    SAMPLE_EVERY.store(every, Ordering::SeqCst);
    let sampled = measure(&mut conn, &sampled_jobs, jobs);
    SAMPLE_EVERY.store(0, Ordering::SeqCst);
    thread::sleep(SETTLE);
    let traces = std::mem::take(&mut *SAMPLES.lock().expect("the sampler is not poisoned"));
    remove_all(&outputs);

    println!(
        "\nringcrypt allocation bench{}: ringcryptd {} in-process, {} shards, {} backend, \
         --fsync never, {}; scratch on {}",
        if quick { " (quick)" } else { "" },
        pong_field(&pong, "version"),
        pong_field(&pong, "shards"),
        pong_field(&pong, "backend"),
        if metrics {
            "metrics on (Prometheus recorder, not scraped)"
        } else {
            "--metrics off"
        },
        scratch
            .parent()
            .map_or("?".into(), |p| p.display().to_string()),
    );
    println!(
        "idle daemon, 1 s: {} allocations, {} reallocations, {} bytes",
        idle.allocs, idle.reallocs, idle.bytes
    );
    println!(
        "counts are process-wide deltas over each measured window (warm-up of {warmup} jobs \
         excluded: every shard's record of finished jobs is full, the steady state); \
         \"client allocs\" is the bench's own thread inside the window\n"
    );
    print_table(&rows);
    println!(
        "\nbytes = bytes requested by allocations plus growth by reallocations; a realloc is not \
         counted as an allocation. us/unit is wall time with the sampler off, for orientation."
    );
    println!(
        "sampling round ({sampled_round}): {:.2} allocs/{sampled_unit}, {:.2} \
         reallocs/{sampled_unit} (client {}), a backtrace for about 1 in {every}",
        per(sampled.counts.allocs, jobs),
        per(sampled.counts.reallocs, jobs),
        sampled.client
    );
    let events = sampled.counts.allocs + sampled.counts.reallocs;
    print_sites(&traces, events, (sampled_round, sampled_unit), jobs, sites);
    std::io::stdout().flush().expect("flush stdout");
    // The daemon thread runs until SIGTERM; the figures are out, so end here.
    std::process::exit(0);
}
