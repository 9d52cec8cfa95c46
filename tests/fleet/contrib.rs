//! `contrib/kubernetes/` and `contrib/slurm/`: the manifests pass `kubernetes-validate
//! --strict` and agree with each other and with the daemon's flags; the Indexed Job's and
//! the Slurm array's commands, run as each of their tasks against a real daemon, complete a
//! tree exactly once.
//!
//! kubernetes-validate comes from PyPI, installed by `.ci/run` into a virtual environment of
//! the system Python at `TARGET/ci-python` (TARGET: the cargo target directory); it ships
//! the schemas, so nothing is fetched when the tests run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;
use crate::{MARKER, Tree, marker_text, outputs_of, sealed_name};

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/kubernetes");
const SBATCH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/slurm/encrypt-array.sbatch"
);
/// The Kubernetes version the manifests are checked against: the first in which every
/// field they use is generally available (`backoffLimitPerIndex`, 1.33).
const KUBERNETES: &str = "1.33.0";

/// The interpreter of the test's virtual environment, with kubernetes-validate.
fn ci_python() -> PathBuf {
    let target = Path::new(CLI).parent().unwrap().parent().unwrap();
    let python = target.join("ci-python/bin/python");
    assert!(
        python.exists(),
        "{} is missing: these tests need kubernetes-validate from PyPI, which .ci/run \
         installs; here run `/usr/bin/python3 -m venv {0} && {0}/bin/pip install \
         kubernetes-validate==1.37.0`",
        target.join("ci-python").display()
    );
    python
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(MANIFESTS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `kubernetes-validate --strict` on `files`: (passed, its output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = output_within(
        Command::new(ci_python())
            .args(["-m", "kubernetes_validate", "--strict", "-k", KUBERNETES])
            .args(files),
        Duration::from_secs(120),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn kubernetes_manifests_pass_strict_validation() {
    let files = manifests();
    let (ok, text) = validate(&files);
    assert!(ok, "kubernetes-validate --strict failed:\n{text}");
    for resource in [
        "namespace/ringcrypt",
        "daemonset/ringcryptd",
        "persistentvolumeclaim/ringcrypt-data",
        "job/ringcrypt-encrypt",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource}")),
            "{text}"
        );
    }
    // The check can fail: a misspelt field is refused.
    let dir = tempfile::tempdir().unwrap();
    let job = std::fs::read_to_string(Path::new(MANIFESTS).join("encrypt-job.yaml")).unwrap();
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, job.replace("parallelism:", "paralelism:")).unwrap();
    let (ok, text) = validate(&[typo]);
    assert!(!ok && text.contains("paralelism"), "{text}");
}

/// Every document of the manifests, as JSON (read by PyYAML, kubernetes-validate's own).
fn documents() -> Vec<Value> {
    let out = output_within(
        Command::new(ci_python())
            .args([
                "-c",
                "import json, sys, yaml\n\
                 docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))]\n\
                 json.dump(docs, sys.stdout)",
            ])
            .args(manifests()),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in contrib/kubernetes"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The value of `--flag=VALUE` in `args`.
#[track_caller]
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {args:?}"))
}

/// The volume named `name` of a pod spec.
fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn mount_path<'a>(container: &'a Value, name: &str) -> &'a str {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("no mount of {name}"))
}

/// What the issue asks of the DaemonSet, and what the Job must share with it: the socket
/// on one hostPath, the key ring from a Secret mounted 0400 (the file itself, not the
/// Secret's symlink, which the daemon refuses), a read-only root, every capability dropped
/// but SETUID/SETGID/IPC_LOCK, the metrics port in the scrape annotations; the Job's
/// partition count equal to its completions, its group the socket's, its data at the same
/// path. Then the daemon's own flags pass `ringcryptd --check-config`.
#[test]
fn kubernetes_manifests_agree_with_each_other_and_the_daemon() {
    let docs = documents();
    let ds = &kind(&docs, "DaemonSet")["spec"]["template"];
    let pod = &ds["spec"];
    let daemon = &pod["containers"][0];
    let args = strings(&daemon["args"]);
    let keys = volume(pod, "keys");
    assert_eq!(keys["secret"]["defaultMode"], 0o400, "{keys}");
    let key_mount = daemon["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "keys")
        .unwrap();
    assert_eq!(key_mount["mountPath"], flag(&args, "--keys"));
    assert!(key_mount["subPath"].is_string(), "{key_mount}");
    let security = &daemon["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    for cap in strings(&security["capabilities"]["add"]) {
        assert!(
            ["SETUID", "SETGID", "IPC_LOCK"].contains(&cap.as_str()),
            "{cap}"
        );
    }
    let port = daemon["ports"][0]["containerPort"].as_u64().unwrap();
    let annotations = &ds["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(flag(&args, "--metrics"), format!("0.0.0.0:{port}"));
    let socket = flag(&args, "--socket");
    let socket_dir = volume(pod, "socket")["hostPath"]["path"].as_str().unwrap();
    assert_eq!(Path::new(socket).parent().unwrap(), Path::new(socket_dir));
    assert_eq!(mount_path(daemon, "socket"), socket_dir);
    let data = mount_path(daemon, "data");
    assert_eq!(flag(&args, "--allow-root"), data);

    let job = kind(&docs, "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let jpod = &spec["template"]["spec"];
    let client = &jpod["containers"][0];
    let jargs = strings(&client["args"]);
    let n = spec["completions"].as_u64().unwrap();
    assert!(
        jargs.contains(&format!("$(JOB_COMPLETION_INDEX)/{n}")),
        "{jargs:?}"
    );
    assert!(jargs.contains(&"--skip-existing".to_string()), "{jargs:?}");
    assert_eq!(flag(&jargs, "--socket"), socket);
    assert_eq!(volume(jpod, "socket")["hostPath"]["path"], socket_dir);
    assert_eq!(mount_path(client, "data"), data);
    assert_eq!(
        volume(jpod, "data")["persistentVolumeClaim"]["claimName"],
        volume(pod, "data")["persistentVolumeClaim"]["claimName"]
    );
    assert_eq!(
        jpod["securityContext"]["runAsGroup"].to_string(),
        flag(&args, "--socket-group"),
        "the clients' group is the socket's"
    );

    // The daemon's flags, with its paths moved into a temp directory, as the daemon checks
    // them before it starts.
    let dir = tempfile::tempdir().unwrap();
    let here = |path: &str| format!("{}{path}", p(dir.path()));
    std::fs::create_dir_all(here(socket_dir)).unwrap();
    std::fs::create_dir_all(here(data)).unwrap();
    let key_path = here(flag(&args, "--keys"));
    std::fs::create_dir_all(Path::new(&key_path).parent().unwrap()).unwrap();
    write_private(Path::new(&key_path), &keygen("fleet"));
    let gid = std::fs::metadata(dir.path()).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.gid()
    });
    let moved: Vec<String> = args
        .iter()
        .map(|a| match a.split_once('=') {
            Some(("--socket" | "--keys" | "--allow-root", path)) => {
                format!("{}={}", a.split('=').next().unwrap(), here(path))
            }
            Some(("--socket-group", _)) => format!("--socket-group={}", gid.as_ref().unwrap()),
            _ => a.clone(),
        })
        .collect();
    let out = output_within(
        Command::new(DAEMON).args(&moved).arg("--check-config"),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "ringcryptd {moved:?} --check-config: {out:?}"
    );
}

/// The Indexed Job's command as Kubernetes runs it for each index (`$(JOB_COMPLETION_INDEX)`
/// expanded, its paths under a real daemon's root): together they complete the tree.
#[test]
fn the_indexed_job_completes_a_tree() {
    let docs = documents();
    let spec = &kind(&docs, "Job")["spec"];
    let n = spec["completions"].as_u64().unwrap();
    let jargs = strings(&spec["template"]["spec"]["containers"][0]["args"]);
    let d = Daemon::start("sync");
    let data = d.root.join("data");
    let input = flag_after(&jargs, "-r");
    let tree = Tree::make(&data.join(input.strip_prefix("/srv/data/").unwrap()), 200);
    let output = data.join(flag_after(&jargs, "-o").strip_prefix("/srv/data/").unwrap());
    let runs: Vec<Child> = (0..n)
        .map(|index| {
            let args: Vec<String> = jargs
                .iter()
                .map(|a| {
                    a.replace("$(JOB_COMPLETION_INDEX)", &index.to_string())
                        .replace("/srv/data", p(&data))
                        .replace("/run/ringcrypt/ringcrypt.sock", p(&d.socket))
                })
                .collect();
            spawn_quiet(ringcrypt_command().args(&args))
        })
        .collect();
    for mut run in runs {
        let status = wait_within(&mut run, Duration::from_secs(120)).expect("the pod's run ends");
        assert!(status.success(), "{status:?}");
    }
    assert_whole(&tree, &output, n);
}

fn flag_after<'a>(args: &'a [String], name: &str) -> &'a str {
    let at = args.iter().position(|a| a == name).unwrap();
    &args[at + 1]
}

fn spawn_quiet(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The output holds exactly the tree's files, sealed, and the marker for `count`.
#[track_caller]
fn assert_whole(tree: &Tree, output: &Path, count: u64) {
    let got = outputs_of(output);
    let mut want: BTreeSet<PathBuf> = tree.files.keys().map(|rel| sealed_name(rel)).collect();
    want.insert(PathBuf::from(MARKER));
    assert_eq!(got.files.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(got.dirs, tree.dirs);
    assert_eq!(
        std::fs::read_to_string(output.join(MARKER)).unwrap(),
        marker_text(count)
    );
}

/// `bash encrypt-array.sbatch IN OUT` as array task `index` of `count` would run it.
fn sbatch(d: &Daemon, index: &str, count: &str, min: &str, args: &[&Path]) -> Command {
    let bin = Path::new(CLI).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(SBATCH)
        .args(args)
        .env("PATH", path)
        .env("RINGCRYPT_SOCKET", &d.socket)
        .env("SLURM_ARRAY_TASK_ID", index)
        .env("SLURM_ARRAY_TASK_COUNT", count)
        .env("SLURM_ARRAY_TASK_MIN", min)
        .env("SLURM_ARRAY_TASK_STEP", "1")
        .env_remove("RINGCRYPT_KEYS");
    cmd
}

/// The Slurm array script as three array tasks at once, then one of them requeued: the
/// tree is complete, and the requeued task rewrites nothing (inodes unchanged). A script
/// run outside an array, or over an array that does not start at 0, refuses to start.
pub fn the_slurm_array_completes_a_tree(backend: &'static str) {
    let d = Daemon::start(backend);
    let tree = Tree::make(&d.root.join("in"), 300);
    let out = d.root.join("in.rcrypt");
    let dirs: [&Path; 2] = [&tree.root, &out];
    let tasks: Vec<Child> = (0..3)
        .map(|i| spawn_quiet(&mut sbatch(&d, &i.to_string(), "3", "0", &dirs)))
        .collect();
    for mut task in tasks {
        let status = wait_within(&mut task, Duration::from_secs(120)).expect("the task ends");
        assert!(status.success(), "{status:?}");
    }
    assert_whole(&tree, &out, 3);
    let before = outputs_of(&out);
    let again = Run::of(output_within(
        &mut sbatch(&d, "1", "3", "0", &dirs),
        Duration::from_secs(120),
    ))
    .ok();
    assert!(again.stdout.contains("task 1 of 3"), "{again:?}");
    assert_eq!(outputs_of(&out), before, "a requeued task rewrote files");

    let elsewhere = d.root.join("never");
    let never: [&Path; 2] = [&tree.root, &elsewhere];
    let mut outside = sbatch(&d, "0", "3", "0", &never);
    outside.env_remove("SLURM_ARRAY_TASK_ID");
    let run = Run::of(output_within(&mut outside, Duration::from_secs(30)));
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("not an array task"), "{run:?}");
    let run = Run::of(output_within(
        &mut sbatch(&d, "1", "3", "1", &never),
        Duration::from_secs(30),
    ));
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--array=0-2"), "{run:?}");
    assert!(!elsewhere.exists());
}
