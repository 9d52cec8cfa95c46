//! Three hosts on this machine: three daemons, each with its own socket, shards, key ring
//! file (the same keys: one ring for the fleet) and roots, over one shared tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::*;
use crate::{MARKER, Tree, final_line, marker_text, outputs_of, sealed_name};

const FILES: usize = 3_000;
const HOSTS: u64 = 3;
/// The host whose daemon is killed mid-run.
const KILLED: u64 = 1;
/// It dies (SIGKILL) when its K-th file has been linked into place.
const KILL_AT_LINK: u64 = 150;
/// Bound on any one client run.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// `ringcrypt --socket S --json encrypt -r SRC -o OUT --partition I/3 [EXTRA...]`, started.
fn start_run(host: &Daemon, tree: &Tree, out: &Path, index: u64, extra: &[&str]) -> Child {
    let partition = format!("{index}/{HOSTS}");
    ringcrypt_command()
        .arg("--socket")
        .arg(&host.socket)
        .args(["--json", "encrypt", "-r", "--quiet"])
        .arg(&tree.root)
        .arg("-o")
        .arg(out)
        .args(["--partition", &partition])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ringcrypt starts")
}

fn finish_run(child: Child) -> Run {
    let mut child = child;
    let status = wait_within(&mut child, RUN_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        status.is_some(),
        "a partition's run took over {RUN_TIMEOUT:?}: {out:?}"
    );
    Run::of(out)
}

/// The daemon's job counts: `stats`, summed over its shards.
fn jobs_done(host: &Daemon) -> u64 {
    let reply = host.client().call(&json!({"op": "stats"}));
    reply["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .iter()
        .map(|shard| shard["jobs_done"].as_u64().unwrap())
        .sum()
}

/// The outputs a daemon's audit log says its tree files wrote (`result=ok`) and skipped
/// (`result=skipped`), relative to `out`, in the order logged, repeats kept.
fn audited(log: &Path, out: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let text = std::fs::read_to_string(log).unwrap();
    let (mut ok, mut skipped) = (Vec::new(), Vec::new());
    for line in text.lines() {
        if !line.contains("audit: finished") || !line.contains(" tree=") {
            continue;
        }
        let output = line
            .split_once(" output=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(path, _)| Path::new(path).strip_prefix(out).unwrap().to_path_buf())
            .unwrap_or_else(|| panic!("a finished line without an output: {line}"));
        if line.contains(" result=ok") {
            ok.push(output);
        } else if line.contains(" result=skipped") {
            skipped.push(output);
        } else {
            panic!("a tree file that neither was written nor skipped: {line}");
        }
    }
    (ok, skipped)
}

/// Each path once: the set, and no repeats.
#[track_caller]
fn once(what: &str, paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    let set: BTreeSet<PathBuf> = paths.iter().cloned().collect();
    assert_eq!(set.len(), paths.len(), "{what}: an output appears twice");
    set
}

/// The three partitions of one tree, on three daemons; one killed after its 150th link,
/// restarted, and its partition rerun with `--skip-existing`. What must stay intact: every
/// file of the tree sealed exactly once, by the daemon whose partition owns it; nothing
/// the killed run wrote is written again; the output holds exactly the tree (every
/// directory, every file, the marker), decrypting to the input with the one fleet key ring;
/// a run with another partition count is refused and changes nothing.
pub fn three_hosts_share_one_tree(backend: &'static str) {
    let ring = format!("default = \"fleet\"\n{}", keygen("fleet"));
    let shared = tempfile::tempdir().unwrap();
    let tree = Tree::make(&shared.path().join("src"), FILES);
    let out = shared.path().join("out");
    let mut hosts: Vec<Daemon> = (0..HOSTS)
        .map(|i| {
            let builder = Daemon::builder(backend)
                .ring(ring.clone())
                .metrics("off")
                .args(&["--allow-root", p(shared.path())]);
            match i {
                KILLED => builder.env("RINGCRYPT_FAILPOINT", &format!("linked@{KILL_AT_LINK}")),
                _ => builder,
            }
            .start()
        })
        .collect();

    let runs: Vec<Child> = (0..HOSTS)
        .map(|i| start_run(&hosts[i as usize], &tree, &out, i, &[]))
        .collect();
    let mut first: Vec<Run> = runs.into_iter().map(finish_run).collect();
    // The killed daemon's client lost its daemon: a failure, not a summary.
    let lost = first.remove(KILLED as usize);
    assert_ne!(
        lost.code, 0,
        "the killed host's run cannot succeed: {lost:?}"
    );
    let killed = &mut hosts[KILLED as usize];
    assert!(
        killed.wait_exit(Duration::from_secs(10)).is_some(),
        "the failpoint did not kill host {KILLED}"
    );
    killed.forget();
    for (i, run) in [0, 2].into_iter().zip(&first) {
        assert_eq!(run.code, 0, "host {i}: {run:?}");
        let done = final_line(run);
        assert_eq!(done["type"], "done", "host {i}: {done}");
        assert_eq!(
            done["files_ok"],
            tree.files_of(i, HOSTS),
            "host {i}: {done}"
        );
        assert_eq!(done["files_failed"], 0, "host {i}: {done}");
        assert_eq!(
            done["files_skipped"],
            tree.specials_of(i, HOSTS),
            "host {i}: only its own specials: {done}"
        );
        assert_eq!(
            jobs_done(&hosts[i as usize]),
            tree.files_of(i, HOSTS),
            "host {i}"
        );
    }
    let parts: Vec<BTreeSet<PathBuf>> = (0..HOSTS).map(|i| tree.outputs(i, HOSTS)).collect();
    let mine = |i: u64| &parts[i as usize];
    let before = outputs_of(&out);
    let present: BTreeSet<PathBuf> = before
        .files
        .keys()
        .filter(|rel| mine(KILLED).contains(*rel))
        .cloned()
        .collect();
    assert!(
        present.len() as u64 >= KILL_AT_LINK && present.len() < mine(KILLED).len(),
        "the kill came mid-run: {} of {} files were there",
        present.len(),
        mine(KILLED).len()
    );

    hosts[KILLED as usize].relaunch_with(|b| b.unset_env("RINGCRYPT_FAILPOINT"));
    let rerun = finish_run(start_run(
        &hosts[KILLED as usize],
        &tree,
        &out,
        KILLED,
        &["--skip-existing"],
    ));
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let done = final_line(&rerun);
    let specials = tree.specials_of(KILLED, HOSTS);
    assert_eq!(done["files_failed"], 0, "{done}");
    assert_eq!(
        done["files_ok"],
        mine(KILLED).len() as u64 - present.len() as u64,
        "the rerun writes exactly what was missing: {done}"
    );
    assert_eq!(
        done["files_skipped"],
        present.len() as u64 + specials,
        "{done}"
    );
    assert_eq!(
        jobs_done(&hosts[KILLED as usize]),
        tree.files_of(KILLED, HOSTS)
    );

    // The tree, exactly: every directory, every file once, the marker; nothing rewritten.
    let after = outputs_of(&out);
    let mut want: BTreeSet<PathBuf> = tree.files.keys().map(|rel| sealed_name(rel)).collect();
    want.insert(PathBuf::from(MARKER));
    assert_eq!(after.files.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(
        after.dirs, tree.dirs,
        "every directory, from every partition"
    );
    for (rel, ino) in &before.files {
        assert_eq!(
            after.files[rel],
            *ino,
            "{} was written again",
            rel.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join(MARKER)).unwrap(),
        marker_text(HOSTS)
    );
    assert!(temp_files(shared.path()).is_empty(), "temp files left");

    // Another N into the same output: refused by the client and on the wire, nothing made.
    let run = hosts[0].cli(&[
        "encrypt",
        "-r",
        p(&tree.root),
        "-o",
        p(&out),
        "--partition",
        "0/2",
        "--skip-existing",
    ]);
    let run = run.failed("partition_mismatch");
    assert!(
        run.stderr.contains("split into 3 partitions, not 2"),
        "{run:?}"
    );
    let mut c = hosts[2].client();
    let reply = c.call(&json!({"op": "encrypt", "id": "m", "recursive": true,
        "input": p(&tree.root), "output": p(&out), "partition": "1/4"}));
    assert_eq!(code(&reply), "partition_mismatch", "{reply}");
    assert_eq!(outputs_of(&out), after, "a refused run changed the output");

    // Audit: every output written by exactly one daemon, its partition's.
    for host in &mut hosts {
        let (status, _) = host.stop(STOP_TIMEOUT);
        assert!(status.success(), "{status:?}");
    }
    let mut written_by: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for (i, host) in hosts.iter().enumerate() {
        let i = i as u64;
        let files: Vec<PathBuf> = if i == KILLED {
            vec![host.dir.path().join("d.log"), host.log.clone()]
        } else {
            vec![host.log.clone()]
        };
        for log in &files {
            let (ok, skipped) = audited(log, &out);
            let text = std::fs::read_to_string(log).unwrap();
            let tree_line = format!("recursive input={:?}", p(&tree.root));
            assert!(
                text.lines().any(|l| l.contains("audit: accepted")
                    && l.contains(&tree_line)
                    && l.contains(&format!(" partition=\"{i}/{HOSTS}\""))),
                "no accepted record of partition {i}/{HOSTS} in {}",
                log.display()
            );
            let written = once("the ok lines", &ok);
            for rel in ok {
                assert!(
                    written_by.insert(rel.clone(), i).is_none(),
                    "{} was written twice",
                    rel.display()
                );
                assert!(mine(i).contains(&rel), "host {i} wrote {}", rel.display());
            }
            if i == KILLED && log == &host.log {
                let redone = written;
                let kept = once("the rerun's skipped lines", &skipped);
                assert!(kept.is_disjoint(&redone));
                assert_eq!(kept, present, "the rerun skipped exactly what was there");
                assert_eq!(
                    redone.union(&kept).cloned().collect::<BTreeSet<_>>(),
                    *mine(KILLED)
                );
            } else {
                assert!(skipped.is_empty(), "a first run skipped {skipped:?}");
                // What the killed run logged as written was there when it died.
                assert!(i != KILLED || written.is_subset(&present));
            }
        }
    }
    for i in [0, 2] {
        let written: BTreeSet<PathBuf> = written_by
            .iter()
            .filter(|(_, host)| **host == i)
            .map(|(rel, _)| rel.clone())
            .collect();
        assert_eq!(&written, mine(i), "host {i}'s audit lines");
    }

    // One key ring for the fleet: any host decrypts any file, so one offline run of the
    // whole output gives back the tree (the marker is no data: skipped, with its reason).
    let keys = shared.path().join("fleet-keys.toml");
    write_private(&keys, &ring);
    let back = shared.path().join("back");
    let run = Run::of(
        ringcrypt_command()
            .arg("--keys")
            .arg(&keys)
            .args(["decrypt", "-r", "--quiet", p(&out), "-o", p(&back)])
            .output()
            .unwrap(),
    )
    .ok();
    assert!(run.stdout.contains(&format!("{FILES} ok")), "{run:?}");
    assert!(run.stderr.contains("(partition marker)"), "{run:?}");
    for (rel, data) in &tree.files {
        let got = std::fs::read(back.join(rel)).unwrap();
        assert!(
            got == *data,
            "{} differs after the round trip",
            rel.display()
        );
    }
}
