//! The tools the e2e bench compares and how each one runs on a data set: the real client
//! through a fresh `ringcryptd` (`--fsync never` and `always`), openssl one process per file
//! (`find | xargs` over a tree, directly on a single file) and the Python pool at both
//! chunksizes, and the Python pool's script rewritten with the ringcrypt Python client
//! through a fresh `ringcryptd` (by descriptor and by path), each timed in both directions
//! with its outputs checked and then deleted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::check::verify;
use crate::command::Bench;
use crate::report::{Row, median_rows};
use crate::sets::{DataSet, Shape, with_suffix};
use crate::support::{
    CLIENT_EXE, Fsync, OPENSSL_DEC, OPENSSL_ENC, openssl_command, remove, warm, write_private,
};

/// The Python baseline lives in its own file so it can be read and run on its own.
const POOL_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/e2e_pool.py");
/// The same script written with the ringcrypt Python client (clients/python).
const CLIENT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/e2e_client.py");

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Encrypt,
    Decrypt,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Ringcrypt(Fsync),
    /// The daemon with `--shards 1`, at `--fsync never`, on the single big file: what one
    /// core does, against which the default's use of every core is measured.
    RingcryptOneShard,
    Openssl,
    Python(Chunksize),
    /// The Python client's `map_files` through `ringcryptd` at `--fsync never`.
    PyClient(Send),
}

/// How the Python client hands single files to the daemon (benches/e2e_client.py).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// As descriptors, `map_files`' default: no allowed root needed.
    Descriptors,
    /// As paths (`by_path=True`), for files under the daemon's allowed roots.
    Paths,
}

/// How the Python pool hands out files (benches/e2e_pool.py `--chunksize`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Chunksize {
    /// `pool.map(fn, files)` as most scripts call it: the standard library's chunksize of 1.
    /// The targets compare against this one.
    Default,
    /// Batches sized to the number of files and workers, shown next to it.
    Tuned,
}

impl Chunksize {
    pub fn as_str(self) -> &'static str {
        match self {
            Chunksize::Default => "default",
            Chunksize::Tuned => "tuned",
        }
    }
}

impl DataSet<'_> {
    /// The real client through a fresh daemon per row, at both fsync settings. The encrypted
    /// set of the last encrypt row is the input of both decrypt rows, so it goes after them.
    fn ringcrypt(&self, rows: &mut Vec<Row>) {
        let tree = self.is_tree();
        let enc_paths = self.mirrored(&self.enc_dir, ".rcrypt");
        let dec_paths = self.mirrored(&self.dec_dir, "");
        // The one-shard rows run on the big file only, when the daemon would use more.
        let one_shard = !tree && self.bench.cores > 1 && self.bench.shards.is_none();
        for op in [Op::Encrypt, Op::Decrypt] {
            let mut tools = vec![Tool::Ringcrypt(Fsync::Never)];
            if one_shard {
                tools.push(Tool::RingcryptOneShard);
            }
            // Last, so the encrypted set it keeps is what the decrypt rows read.
            tools.push(Tool::Ringcrypt(Fsync::Always));
            for tool in tools {
                let (fsync, shards) = match tool {
                    Tool::Ringcrypt(fsync) => (fsync, self.bench.shards),
                    _ => (Fsync::Never, Some(1)),
                };
                let what = format!(
                    "{}, ringcrypt {} via ringcryptd, fsync {}{}",
                    self.label,
                    op.as_str(),
                    fsync.as_str(),
                    if shards == Some(1) { ", 1 shard" } else { "" }
                );
                eprintln!("{what}");
                let (src, dst, out_dir, outputs) = match (op, tree) {
                    (Op::Encrypt, true) => {
                        (&self.input_dir, &self.enc_dir, &self.enc_dir, &enc_paths)
                    }
                    (Op::Decrypt, true) => {
                        (&self.enc_dir, &self.dec_dir, &self.dec_dir, &dec_paths)
                    }
                    (Op::Encrypt, false) => {
                        (&self.inputs[0], &enc_paths[0], &self.enc_dir, &enc_paths)
                    }
                    (Op::Decrypt, false) => {
                        (&enc_paths[0], &dec_paths[0], &self.dec_dir, &dec_paths)
                    }
                };
                if op == Op::Decrypt && fsync == Fsync::Never {
                    warm(&enc_paths);
                }
                if !tree {
                    // The single-file client writes into an existing directory.
                    fs::create_dir_all(out_dir).expect("create the output directory");
                }
                let (timed, rss) = self.bench.with_daemon(fsync, shards, |daemon| {
                    let mut cmd = Command::new(CLIENT_EXE);
                    cmd.arg("--socket").arg(&daemon.socket).arg(op.as_str());
                    if tree {
                        cmd.arg("-r");
                    }
                    cmd.arg(src).arg("-o").arg(dst).arg("--quiet");
                    self.bench.run(&mut cmd, Some(daemon.pid()))
                });
                verify(
                    &what,
                    op,
                    tool,
                    &self.pairs(outputs),
                    out_dir,
                    self.shape.files,
                );
                let keep = op == Op::Encrypt && tool == Tool::Ringcrypt(Fsync::Always);
                if !keep {
                    fs::remove_dir_all(out_dir).expect("remove an output set");
                }
                rows.push(self.row(tool, op, &timed, rss));
            }
        }
        fs::remove_dir_all(&self.enc_dir).expect("remove the encrypted set");
    }

    /// openssl, one process per file: `find | xargs -P<cores>` over the trees, directly on
    /// the big file. Its outputs land next to the inputs, as that pipeline is written in
    /// practice: `F.enc`, then `F.enc.dec`.
    fn openssl(&self, rows: &mut Vec<Row>) {
        let cores = self.bench.cores;
        let enc_paths: Vec<PathBuf> = self.inputs.iter().map(|p| with_suffix(p, ".enc")).collect();
        let dec_paths: Vec<PathBuf> = enc_paths.iter().map(|p| with_suffix(p, ".dec")).collect();
        for op in [Op::Encrypt, Op::Decrypt] {
            let (command, pattern, suffix, srcs, outputs) = match op {
                Op::Encrypt => (OPENSSL_ENC, "*.bin", "enc", &self.inputs, &enc_paths),
                Op::Decrypt => (OPENSSL_DEC, "*.bin.enc", "dec", &enc_paths, &dec_paths),
            };
            let what = format!("{}, openssl {}", self.label, op.as_str());
            eprintln!("{what}");
            if op == Op::Decrypt {
                warm(&enc_paths);
            }
            // On the disk table the outputs are made durable, as `--fsync always` does.
            let sync = if self.bench.sync_baselines {
                " && sync"
            } else {
                ""
            };
            let mut cmd = if self.is_tree() {
                let script = format!(
                    "find \"$1\" -type f -name '{pattern}' -print0 | xargs -0 -P{cores} -I{{}} \
                     {command} -in {{}} -out {{}}.{suffix}{sync}"
                );
                let mut cmd = Command::new("sh");
                cmd.args(["-c", &script, "sh"]).arg(&self.input_dir);
                cmd
            } else if self.bench.sync_baselines {
                let script = format!("{command} -in \"$1\" -out \"$2\"{sync}");
                let mut cmd = Command::new("sh");
                cmd.args(["-c", &script, "sh"])
                    .arg(&srcs[0])
                    .arg(&outputs[0]);
                cmd
            } else {
                openssl_command(command, &srcs[0], &outputs[0])
            };
            let timed = self.bench.run(&mut cmd, None);
            // The plaintexts, their .enc files, and after decryption the .dec files.
            let expected = match op {
                Op::Encrypt => 2 * self.shape.files,
                Op::Decrypt => 3 * self.shape.files,
            };
            verify(
                &what,
                op,
                Tool::Openssl,
                &self.pairs(outputs),
                &self.input_dir,
                expected,
            );
            rows.push(self.row(Tool::Openssl, op, &timed, None));
        }
        for path in enc_paths.iter().chain(&dec_paths) {
            remove(path);
        }
    }

    /// The Python pool (benches/e2e_pool.py), mirroring the tree under enc/ and dec/: first
    /// with `pool.map`'s default chunksize, then with the tuned one.
    fn python(&self, rows: &mut Vec<Row>) {
        for chunksize in [Chunksize::Default, Chunksize::Tuned] {
            self.python_with(chunksize, rows);
        }
    }

    fn python_with(&self, chunksize: Chunksize, rows: &mut Vec<Row>) {
        let n = self.shape.files;
        let tool = Tool::Python(chunksize);
        let enc_paths = self.mirrored(&self.enc_dir, ".enc");
        let dec_paths = self.mirrored(&self.dec_dir, "");
        for op in [Op::Encrypt, Op::Decrypt] {
            let what = format!(
                "{}, python pool {}, chunksize {}",
                self.label,
                op.as_str(),
                chunksize.as_str()
            );
            eprintln!("{what}");
            // The script takes a directory, or a single file whose output goes into OUT.
            let (src, dst, outputs) = match (op, self.is_tree()) {
                (Op::Encrypt, true) => (&self.input_dir, &self.enc_dir, &enc_paths),
                (Op::Encrypt, false) => (&self.inputs[0], &self.enc_dir, &enc_paths),
                (Op::Decrypt, true) => (&self.enc_dir, &self.dec_dir, &dec_paths),
                (Op::Decrypt, false) => (&enc_paths[0], &self.dec_dir, &dec_paths),
            };
            if op == Op::Decrypt {
                warm(&enc_paths);
            }
            let timed = self.bench.run(
                Command::new("python3")
                    .arg(POOL_SCRIPT)
                    .arg(op.as_str())
                    .arg(src)
                    .arg(dst)
                    .arg(&self.bench.python_keys)
                    .arg(self.bench.cores.to_string())
                    .args(["--chunksize", chunksize.as_str()]),
                None,
            );
            assert_eq!(
                timed.stdout.trim(),
                format!("{n} {}", self.shape.total_bytes()),
                "{what}: the pool's count of files and bytes"
            );
            verify(&what, op, tool, &self.pairs(outputs), dst, n);
            if op == Op::Decrypt {
                fs::remove_dir_all(&self.dec_dir).expect("remove an output set");
            }
            rows.push(self.row(tool, op, &timed, None));
        }
        fs::remove_dir_all(&self.enc_dir).expect("remove the encrypted set");
    }
}

impl DataSet<'_> {
    /// The Python client's rows, on the trees only: `map_files` through a fresh daemon at
    /// `--fsync never`, by descriptor and then by path, in both directions. Its ringcrypt
    /// outputs are checked as the ringcrypt rows' are.
    fn python_client(&self, rows: &mut Vec<Row>) {
        let n = self.shape.files;
        let enc_paths = self.mirrored(&self.enc_dir, ".rcrypt");
        let dec_paths = self.mirrored(&self.dec_dir, "");
        for send in [Send::Descriptors, Send::Paths] {
            let tool = Tool::PyClient(send);
            for op in [Op::Encrypt, Op::Decrypt] {
                let what = format!(
                    "{}, python -> ringcryptd map_files {}{}",
                    self.label,
                    op.as_str(),
                    if send == Send::Paths { ", by path" } else { "" }
                );
                eprintln!("{what}");
                let (src, dst, outputs) = match op {
                    Op::Encrypt => (&self.input_dir, &self.enc_dir, &enc_paths),
                    Op::Decrypt => (&self.enc_dir, &self.dec_dir, &dec_paths),
                };
                if op == Op::Decrypt {
                    warm(&enc_paths);
                }
                let (timed, rss) =
                    self.bench
                        .with_daemon(Fsync::Never, self.bench.shards, |daemon| {
                            let mut cmd = Command::new("python3");
                            cmd.arg(CLIENT_SCRIPT)
                                .arg(op.as_str())
                                .arg(src)
                                .arg(dst)
                                .arg(&daemon.socket);
                            if send == Send::Paths {
                                cmd.arg("--by-path");
                            }
                            self.bench.run(&mut cmd, Some(daemon.pid()))
                        });
                assert_eq!(
                    timed.stdout.trim(),
                    format!("{n} {}", self.shape.total_bytes()),
                    "{what}: the client's count of files and bytes"
                );
                verify(&what, op, tool, &self.pairs(outputs), dst, n);
                if op == Op::Decrypt {
                    fs::remove_dir_all(&self.dec_dir).expect("remove an output set");
                }
                rows.push(self.row(tool, op, &timed, rss));
            }
            fs::remove_dir_all(&self.enc_dir).expect("remove the encrypted set");
        }
    }
}

/// One data set: make it, run the daemon rows once untimed (a warm-up: the first pass over a
/// fresh data set pays for new pages and for the kernel's io workers coming up), then time
/// every tool in both directions `bench.runs` times, round after round so a drift of the
/// machine touches every tool alike, checking and deleting each output; each row is the
/// median of its runs.
pub fn measure_set(bench: &Bench, shape: Shape, index: usize, rows: &mut Vec<Row>) {
    let set = DataSet::create(bench, shape, index);
    eprintln!("{}: warm-up pass (not timed in the table)", set.label);
    set.ringcrypt(&mut Vec::new());
    let mut rounds = Vec::with_capacity(bench.runs);
    for run in 1..=bench.runs {
        if bench.runs > 1 {
            eprintln!("{}: run {run} of {}", set.label, bench.runs);
        }
        let mut round = Vec::new();
        set.ringcrypt(&mut round);
        if bench.baselines {
            set.openssl(&mut round);
            if bench.python && !bench.sync_baselines {
                set.python(&mut round);
            }
            if set.is_tree() && !bench.sync_baselines {
                set.python_client(&mut round);
            }
        }
        rounds.push(round);
    }
    rows.extend(median_rows(rounds));
    set.remove();
}

/// Fresh AES and HMAC keys for the Python baseline, 64 random bytes in hex.
pub fn make_python_keys(dir: &Path) -> PathBuf {
    let mut hex = String::new();
    for _ in 0..2 {
        let key = ringcrypt::format::random_salt().expect("32 bytes from the OS CSPRNG");
        hex.extend(key.iter().map(|b| format!("{b:02x}")));
    }
    let path = dir.join("python-keys.hex");
    write_private(&path, hex.as_bytes());
    path
}
