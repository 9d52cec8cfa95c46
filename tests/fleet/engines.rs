//! Both engines take the same partitions: the daemon's walk and the offline one
//! (`--keys`), on one tree, partition by partition.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::support::*;
use crate::{MARKER, Tree, final_line, marker_text, outputs_of};

const FILES: usize = 600;
const PARTS: u64 = 3;

/// What must hold: after partition 0 alone, either engine's output has every directory of
/// the tree (empty ones too), exactly partition 0's files and the marker, and its counts are
/// partition 0's; after all three, both outputs hold the whole tree, the same files; another
/// N is refused offline as through the daemon, and a partition with the wrong I, without
/// -r or over several inputs is a usage error that creates nothing.
pub fn both_engines_take_the_same_partitions(backend: &'static str) {
    let d = Daemon::start(backend);
    let tree = Tree::make(&d.root.join("src"), FILES);
    let by_daemon = d.root.join("by-daemon");
    let offline = d.root.join("offline");
    for i in 0..PARTS {
        let partition = format!("{i}/{PARTS}");
        let run = d
            .cli(&[
                "--json",
                "encrypt",
                "-r",
                p(&tree.root),
                "-o",
                p(&by_daemon),
                "--partition",
                &partition,
            ])
            .ok();
        let done = final_line(&run);
        assert_eq!(done["files_ok"], tree.files_of(i, PARTS), "{done}");
        assert_eq!(done["files_skipped"], tree.specials_of(i, PARTS), "{done}");
        let run = offline_run(
            &d,
            &[
                "encrypt",
                "-r",
                "--quiet",
                p(&tree.root),
                "-o",
                p(&offline),
                "--partition",
                &partition,
            ],
        )
        .ok();
        let summary = format!(
            "(partition {partition}): {} ok, 0 failed, {} skipped",
            tree.files_of(i, PARTS),
            tree.specials_of(i, PARTS)
        );
        assert!(run.stdout.contains(&summary), "want {summary:?}: {run:?}");
        if i == 0 {
            for out in [&by_daemon, &offline] {
                let got = outputs_of(out);
                assert_eq!(got.dirs, tree.dirs, "{}: every directory", out.display());
                let mut want = tree.outputs(0, PARTS);
                want.insert(PathBuf::from(MARKER));
                assert_eq!(got.files.keys().cloned().collect::<BTreeSet<_>>(), want);
            }
        }
    }
    let daemon_files = names(&by_daemon);
    assert_eq!(daemon_files, names(&offline), "the engines split alike");
    assert_eq!(
        daemon_files.len(),
        FILES + 1,
        "the whole tree and the marker"
    );
    assert_eq!(
        std::fs::read_to_string(offline.join(MARKER)).unwrap(),
        marker_text(PARTS)
    );

    // Another N, offline: refused, nothing written.
    let before = outputs_of(&offline);
    let run = offline_run(
        &d,
        &[
            "encrypt",
            "-r",
            p(&tree.root),
            "-o",
            p(&offline),
            "--partition",
            "1/2",
        ],
    )
    .failed("partition_mismatch");
    assert!(run.stderr.contains(MARKER), "{run:?}");
    assert_eq!(outputs_of(&offline), before);

    // Usage errors: exit 2, with the reason, and no output directory made.
    let fresh = d.root.join("fresh");
    for (args, says) in [
        (vec!["-r", "--partition", "3/3"], "0 to 2"),
        (vec!["-r", "--partition", "1-3"], "write I/N"),
        (vec!["--partition", "0/3"], "--recursive"),
    ] {
        let mut all = vec!["encrypt", p(&tree.root), "-o", p(&fresh)];
        all.extend(args);
        let run = offline_run(&d, &all).usage();
        assert!(run.stderr.contains(says), "{all:?}: want {says:?}: {run:?}");
    }
    let run = d
        .cli(&[
            "encrypt",
            "-r",
            p(&tree.root),
            p(&d.root.join("src/d1")),
            "-o",
            p(&d.root),
            "--partition",
            "0/2",
        ])
        .usage();
    assert!(run.stderr.contains("splits one tree"), "{run:?}");
    assert!(!fresh.exists(), "a refused command made its output");
}

/// `ringcrypt --keys KEYS ARGS` with the daemon's key ring, in its root.
fn offline_run(d: &Daemon, args: &[&str]) -> Run {
    Run::of(
        ringcrypt_command()
            .arg("--keys")
            .arg(&d.keys)
            .args(args)
            .current_dir(&d.root)
            .output()
            .unwrap(),
    )
}

fn names(root: &Path) -> BTreeSet<PathBuf> {
    outputs_of(root).files.into_keys().collect()
}
