//! Several inputs in one invocation, offline: into an `-o` directory or beside each input,
//! files and trees together, one summary; and the mistakes refused before anything is made.

use super::*;

/// Intact: 12 files and a tree encrypted into `out/` in one run give 12 + 3 outputs that
/// decrypt (again in one run, into `back/`) to the inputs byte for byte; one summary line;
/// a missing input is the one failure, listed with its code, and the exit code is 1; the
/// inputs are unchanged.
#[test]
fn files_and_trees_into_one_directory() {
    let (dir, ring, _) = one_key_setup();
    let root = dir.path();
    let mut inputs = Vec::new();
    for i in 0..12 {
        let name = format!("f{i:02}.bin");
        write_input(
            &root.join(&name),
            &random_bytes(i * 3000 + 1, 500 + i as u64),
        );
        inputs.push(name);
    }
    fs::create_dir_all(root.join("tree/sub")).unwrap();
    for (i, name) in ["tree/a", "tree/b", "tree/sub/c"].iter().enumerate() {
        fs::write(root.join(name), random_bytes(5000 + i, 600 + i as u64)).unwrap();
    }
    fs::create_dir(root.join("out")).unwrap();
    let before: Vec<Snapshot> = inputs.iter().map(|n| snapshot(&root.join(n))).collect();

    let mut args: Vec<String> = vec!["encrypt".into(), "-q".into()];
    args.extend(inputs.iter().map(|n| p(&root.join(n)).to_string()));
    args.extend([
        "missing.bin".into(),
        "-r".into(),
        p(&root.join("tree")).into(),
    ]);
    args.extend(["-o".into(), p(&root.join("out")).into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = with_ring(&ring, &args);
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(run.stdout.lines().count(), 1, "one summary: {run:#?}");
    assert!(run.stdout.contains("encrypted 14 inputs -> "), "{run:#?}");
    assert!(
        run.stdout.contains(": 15 ok, 1 failed, 0 skipped"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("failed: missing.bin") && run.stderr.contains("[not_found]"),
        "{run:#?}"
    );
    let mut expected: Vec<String> = inputs.iter().map(|n| format!("{n}.rcrypt")).collect();
    expected.push("tree.rcrypt".into());
    assert_eq!(
        listing(&root.join("out")),
        expected.into_iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(
        listing(&root.join("out/tree.rcrypt")),
        names(&["a.rcrypt", "b.rcrypt", "sub"])
    );

    fs::create_dir(root.join("back")).unwrap();
    let mut args: Vec<String> = vec!["decrypt".into()];
    args.extend(
        inputs
            .iter()
            .map(|n| p(&root.join("out").join(format!("{n}.rcrypt"))).to_string()),
    );
    args.extend(["-o".into(), p(&root.join("back")).into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = with_ring(&ring, &args).ok();
    assert!(run.stdout.contains(": 12 ok, 0 failed"), "{run:#?}");
    for (name, before) in inputs.iter().zip(&before) {
        assert_eq!(&snapshot(&root.join(name)), before, "{name} unchanged");
        assert_eq!(
            fs::read(root.join("back").join(name)).unwrap(),
            before.bytes,
            "{name}"
        );
    }
}

/// Intact: each mistake is a usage error (exit 2) made before any job, so nothing is
/// created: a stream among several inputs, an `-o` that is no directory, a directory without
/// -r, two inputs with one output name, a decrypt input whose output cannot be named.
#[test]
fn mistakes_are_refused_before_anything_is_made() {
    let (dir, ring, _) = one_key_setup();
    let root = dir.path();
    fs::create_dir_all(root.join("a")).unwrap();
    fs::create_dir_all(root.join("b")).unwrap();
    fs::write(root.join("a/same.txt"), b"one").unwrap();
    fs::write(root.join("b/same.txt"), b"two").unwrap();
    fs::write(root.join("plain.txt"), b"three").unwrap();
    fs::create_dir(root.join("out")).unwrap();
    let before = support::snapshot(root);
    let at = |name: &str| p(&root.join(name)).to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "encrypt".into(),
                at("plain.txt"),
                "-".into(),
                "-o".into(),
                at("out"),
            ],
            "a stream can only be the one input",
        ),
        (
            vec![
                "encrypt".into(),
                at("plain.txt"),
                at("a/same.txt"),
                "-o".into(),
                at("plain.txt"),
            ],
            "-o names an existing directory",
        ),
        (
            vec!["encrypt".into(), at("plain.txt"), at("a")],
            "is a directory",
        ),
        (
            vec![
                "encrypt".into(),
                at("a/same.txt"),
                at("b/same.txt"),
                "-o".into(),
                at("out"),
            ],
            "two inputs would be written to",
        ),
        (
            vec![
                "decrypt".into(),
                at("plain.txt"),
                at("a/same.txt"),
                "-o".into(),
                at("out"),
            ],
            "not a .rcrypt file",
        ),
    ];
    for (args, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = with_ring(&ring, &args).usage();
        assert!(run.stderr.contains(says), "{args:?}: {run:#?}");
        assert_eq!(
            support::snapshot(root),
            before,
            "{args:?} changed the directory"
        );
    }
}
