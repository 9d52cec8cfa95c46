//! The data sets of the e2e bench: their shapes at full and `--quick` size, the plaintext
//! files written on disk and warmed into the page cache, and the names every tool's outputs
//! take under a set's directory. Timing the tools on a set is `runners`' work.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use crate::command::{Bench, Timed};
use crate::report::Row;
use crate::runners::{Op, Tool};
use crate::support::{MIB, warm, write_input};

/// One data set's shape.
#[derive(Clone, Copy)]
pub struct Shape {
    pub set: Set,
    pub files: usize,
    dirs: usize,
    file_bytes: u64,
}

impl Shape {
    pub fn total_bytes(&self) -> u64 {
        self.file_bytes * self.files as u64
    }

    pub fn label(&self) -> String {
        let size = if self.file_bytes >= MIB {
            format!("{} MiB", self.file_bytes / MIB)
        } else {
            format!("{} KiB", self.file_bytes / 1024)
        };
        match self.set {
            Set::Big => format!("1 x {size}"),
            _ => format!("{} x {size}", self.files),
        }
    }
}

/// The three data sets; targets name them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Set {
    Big,
    Many,
    Small,
}

pub struct Sizes {
    pub sets: [Shape; 3],
    pub seal_bytes: usize,
}

pub const FULL: Sizes = Sizes {
    sets: [
        Shape {
            set: Set::Big,
            files: 1,
            dirs: 0,
            file_bytes: 1024 * MIB,
        },
        Shape {
            set: Set::Many,
            files: 1000,
            dirs: 10,
            file_bytes: MIB,
        },
        Shape {
            set: Set::Small,
            files: 20_000,
            dirs: 100,
            file_bytes: 4096,
        },
    ],
    seal_bytes: 256 << 20,
};

pub const QUICK: Sizes = Sizes {
    sets: [
        Shape {
            set: Set::Big,
            files: 1,
            dirs: 0,
            file_bytes: 64 * MIB,
        },
        Shape {
            set: Set::Many,
            files: 100,
            dirs: 10,
            file_bytes: MIB,
        },
        Shape {
            set: Set::Small,
            files: 2000,
            dirs: 100,
            file_bytes: 4096,
        },
    ],
    seal_bytes: 64 << 20,
};

/// The disk table's sets (`--disk DIR`): what users keep on disks, where `--fsync always`
/// is what matters.
pub const DISK_FULL: [Shape; 3] = [
    Shape {
        set: Set::Big,
        files: 1,
        dirs: 0,
        file_bytes: 1024 * MIB,
    },
    Shape {
        set: Set::Many,
        files: 300,
        dirs: 3,
        file_bytes: MIB,
    },
    Shape {
        set: Set::Small,
        files: 5000,
        dirs: 25,
        file_bytes: 4096,
    },
];

pub const DISK_QUICK: [Shape; 3] = [
    Shape {
        set: Set::Big,
        files: 1,
        dirs: 0,
        file_bytes: 64 * MIB,
    },
    Shape {
        set: Set::Many,
        files: 30,
        dirs: 3,
        file_bytes: MIB,
    },
    Shape {
        set: Set::Small,
        files: 500,
        dirs: 5,
        file_bytes: 4096,
    },
];

/// One data set on disk, and the names every tool's outputs take under it.
pub struct DataSet<'b> {
    pub bench: &'b Bench,
    pub shape: Shape,
    pub label: String,
    root: PathBuf,
    /// The plaintext tree (for the big file, a directory holding it).
    pub input_dir: PathBuf,
    /// Where encrypted and decrypted sets go, except openssl's, which land next to the inputs.
    pub enc_dir: PathBuf,
    pub dec_dir: PathBuf,
    /// Paths of the plaintext files relative to `input_dir`; every layout mirrors them.
    rels: Vec<PathBuf>,
    pub inputs: Vec<PathBuf>,
}

impl<'b> DataSet<'b> {
    /// Writes the plaintext files and reads each once, so every timing finds them cached.
    pub fn create(bench: &'b Bench, shape: Shape, index: usize) -> DataSet<'b> {
        let label = shape.label();
        let root = bench.dir.join(format!("set-{index}"));
        let input_dir = root.join("in");
        fs::create_dir_all(&input_dir).expect("create the input directory");
        eprintln!("{label}: writing inputs");
        let rels: Vec<PathBuf> = (0..shape.files)
            .map(|i| match shape.set {
                Set::Big => PathBuf::from("big.bin"),
                _ => Path::new(&format!("d{:03}", i % shape.dirs)).join(format!("f{i:06}.bin")),
            })
            .collect();
        let inputs: Vec<PathBuf> = rels.iter().map(|rel| input_dir.join(rel)).collect();
        for (i, (rel, input)) in rels.iter().zip(&inputs).enumerate() {
            if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty())
                && i < shape.dirs
            {
                fs::create_dir_all(input_dir.join(parent)).expect("create an input directory");
            }
            write_input(input, shape.file_bytes, i as u64 + 1);
        }
        warm(&inputs);
        DataSet {
            bench,
            shape,
            label,
            enc_dir: root.join("enc"),
            dec_dir: root.join("dec"),
            root,
            input_dir,
            rels,
            inputs,
        }
    }

    /// Every data set but the big file is a tree of directories.
    pub fn is_tree(&self) -> bool {
        self.shape.set != Set::Big
    }

    /// `dir/<rel><suffix>` for each input.
    pub fn mirrored(&self, dir: &Path, suffix: &str) -> Vec<PathBuf> {
        self.rels
            .iter()
            .map(|rel| with_suffix(&dir.join(rel), suffix))
            .collect()
    }

    /// Each input paired with its output, for `verify`.
    pub fn pairs(&self, outputs: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
        self.inputs
            .iter()
            .cloned()
            .zip(outputs.iter().cloned())
            .collect()
    }

    pub fn row(&self, tool: Tool, op: Op, timed: &Timed, rss: Option<f64>) -> Row {
        Row {
            shape: self.shape,
            tool,
            op,
            time: timed.time,
            cpu: timed.cpu,
            rss,
            cache_growth_mib: timed.cache_growth_mib,
            spread: 1.0,
        }
    }

    pub fn remove(self) {
        fs::remove_dir_all(&self.root).expect("remove the data set");
    }
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}
