//! What a scrape of `/metrics` returns, read as Prometheus reads the text format, and which
//! TCP ports a process listens on.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

/// A TCP port nothing listens on right now (bound to 127.0.0.1:0, then released).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `GET /metrics` over HTTP/1.0 on a plain TcpStream; returns the body (status must be 200).
pub(crate) fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the metrics port {port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n")
        .unwrap();
    let _ = stream.shutdown(Shutdown::Write);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut body_len: Option<(usize, usize)> = None; // (header end, content length)
    loop {
        if let Some((start, len)) = body_len
            && raw.len() >= start + len
        {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A read with a timeout that a signal interrupts is not restarted: read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!(
                "reading the metrics response: {e} (so far {} bytes)",
                raw.len()
            ),
        }
        if body_len.is_none()
            && let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
            {
                body_len = Some((end + 4, len));
            }
        }
    }
    let text = String::from_utf8(raw).expect("the metrics response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in the metrics response: {text:?}"));
    let status = head.lines().next().unwrap_or("");
    assert!(
        status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200"),
        "GET /metrics: {status:?}\n{text}"
    );
    body.to_string()
}

/// One sample of the text format.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// The samples, and per family its `# TYPE` and whether it has `# HELP`.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    pub(crate) samples: Vec<Sample>,
    pub(crate) types: BTreeMap<String, String>,
    pub(crate) help: BTreeSet<String>,
    pub(crate) text: String,
}

pub(crate) fn parse_value(v: &str) -> f64 {
    match v {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad sample value {v:?}: {e}")),
    }
}

pub(crate) fn parse_scrape(text: &str) -> Scrape {
    let mut s = Scrape {
        text: text.to_string(),
        ..Scrape::default()
    };
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            s.help.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            s.types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            // label="value" pairs, values with \\, \" and \n escapes.
            let chars: Vec<char> = inner.chars().collect();
            let mut i = 0;
            loop {
                while i < chars.len() && (chars[i] == ',' || chars[i] == ' ') {
                    i += 1;
                }
                assert!(i < chars.len(), "unterminated labels: {line:?}");
                if chars[i] == '}' {
                    i += 1;
                    break;
                }
                let key_start = i;
                while chars[i] != '=' {
                    i += 1;
                }
                let key: String = chars[key_start..i].iter().collect();
                assert_eq!(chars[i + 1], '"', "label value not quoted: {line:?}");
                i += 2;
                let mut value = String::new();
                while chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                        value.push(if chars[i] == 'n' { '\n' } else { chars[i] });
                    } else {
                        value.push(chars[i]);
                    }
                    i += 1;
                }
                i += 1;
                labels.insert(key.trim().to_string(), value);
            }
            let consumed: usize = chars[..i].iter().map(|c| c.len_utf8()).sum();
            rest = &inner[consumed..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
        s.samples.push(Sample {
            name,
            labels,
            value: parse_value(value),
        });
    }
    s
}

impl Scrape {
    /// Samples of `name` whose labels include all of `want`.
    pub(crate) fn matching(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// Sum of the matching samples (0 when there are none).
    pub(crate) fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.matching(name, want).iter().map(|s| s.value).sum()
    }

    /// The one matching sample's value; panics if there is not exactly one.
    pub(crate) fn one(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let found = self.matching(name, want);
        assert!(
            found.len() == 1,
            "want exactly one {name}{want:?}, found {found:?}; scrape:\n{}",
            self.text
        );
        found[0].value
    }

    /// The family a sample name belongs to.
    pub(crate) fn family_of<'a>(&self, name: &'a str) -> &'a str {
        if self.types.contains_key(name) {
            return name;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.types.contains_key(base)
            {
                return base;
            }
        }
        name
    }
}

/// The port numbers of listening TCP sockets the process `pid` holds (from /proc).
pub(crate) fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if let Ok(target) = fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort();
    ports
}
