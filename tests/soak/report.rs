//! The summary table printed at the end of a backend's soak (`--nocapture` shows it).

use std::process::ExitStatus;
use std::time::Duration;

use crate::checks::{Tally, describe_status};
use crate::state::{Soak, get};

/// What the summary shows besides the soak's counters.
pub(crate) struct Summary {
    pub(crate) backend: &'static str,
    pub(crate) load: Duration,
    /// The whole run, start-up and checks included.
    pub(crate) took: Duration,
    pub(crate) tally: Tally,
    pub(crate) busy: u64,
    /// `key ring reloaded` lines in the first daemon's log.
    pub(crate) logged_reloads: usize,
    /// Trees resumed after the restart, and their files.
    pub(crate) resumed: usize,
    pub(crate) verified: usize,
    /// The SIGTERM's exit status (None: it did not exit) and how long it took.
    pub(crate) term: Option<(Option<ExitStatus>, Duration)>,
    /// Descriptors and RSS (KiB): the baseline, after phase 1, and on the restarted daemon
    /// at its start and after the resume.
    pub(crate) base: (usize, u64),
    pub(crate) after_load: Option<(usize, u64)>,
    pub(crate) restarted: Option<((usize, u64), (usize, u64))>,
    pub(crate) violations: usize,
}

impl Summary {
    pub(crate) fn print(&self, s: &Soak) {
        let Summary {
            backend,
            load,
            took,
            tally,
            busy,
            logged_reloads,
            resumed,
            verified,
            term,
            base,
            after_load,
            restarted,
            violations,
        } = self;
        let c = &s.c;
        println!(
            "\nsoak {backend}: {load:?} of load, {:.1?} in all{}",
            took,
            if s.named_temps {
                " (named temp files)"
            } else {
                ""
            }
        );
        println!("| {:<46} | {:>14} |", "final replies, by type", "count");
        println!("|{:-<48}|{:-<16}|", "", "");
        for (kind, n) in &tally.finals {
            println!("| {kind:<46} | {n:>14} |");
        }
        let row = |what: &str, value: String| println!("| {what:<46} | {value:>14} |");
        row(
            "requests written (connections)",
            format!("{} ({})", tally.requests, tally.connections),
        );
        row("connections reset by the daemon", tally.resets.to_string());
        row(
            "id-less lines written / their errors",
            format!("{} / {}", tally.idless_sent, tally.idless_errors),
        );
        row(
            "written after SIGTERM / unanswered (all)",
            format!("{} / {}", tally.requests_after_sigterm, tally.unanswered),
        );
        row("busy", busy.to_string());
        row(
            "cancels sent / cancelled / already ended",
            format!(
                "{} / {} / {}",
                get(&c.cancels_sent),
                get(&c.cancels_cancelled),
                get(&c.cancels_too_late)
            ),
        );
        row(
            "SIGHUPs sent / seen in keys / logged",
            format!(
                "{} / {} / {logged_reloads}",
                get(&c.reloads_sent),
                get(&c.reloads_seen)
            ),
        );
        row(
            "tree runs done / cancelled and resumed",
            format!(
                "{} / {}",
                get(&c.tree_runs_done),
                get(&c.tree_runs_cancelled)
            ),
        );
        row(
            "tree files verified / decrypted in full",
            format!(
                "{} / {}",
                get(&c.tree_files_checked),
                get(&c.tree_files_decrypted)
            ),
        );
        row(
            "trees resumed after restart (files)",
            format!("{resumed} ({verified})"),
        );
        row(
            "pipelined outputs verified / decrypted",
            format!(
                "{} / {}",
                get(&c.pipe_outputs_checked),
                get(&c.pipe_outputs_decrypted)
            ),
        );
        row(
            "pipelined errors that left nothing",
            get(&c.pipe_errors_clean).to_string(),
        );
        row(
            "descriptor outputs linked and decrypted",
            get(&c.fd_outputs_decrypted).to_string(),
        );
        row("flood lines", get(&c.flood_lines).to_string());
        match term {
            Some((Some(status), took)) => row(
                "SIGTERM: exit, time",
                format!("{}, {:.1?}", describe_status(*status), took),
            ),
            Some((None, took)) => row("SIGTERM: exit, time", format!("none, {took:.1?}")),
            None => row("SIGTERM: exit, time", "not sent".into()),
        }
        row(
            "fds: baseline / after phase 1",
            format!(
                "{} / {}",
                base.0,
                after_load.map_or("-".into(), |a| a.0.to_string())
            ),
        );
        row(
            "RSS KiB: baseline / after phase 1",
            format!(
                "{} / {}",
                base.1,
                after_load.map_or("-".into(), |a| a.1.to_string())
            ),
        );
        if let Some((base2, after)) = restarted {
            row(
                "fds: restart / after the resume",
                format!("{} / {}", base2.0, after.0),
            );
            row(
                "RSS KiB: restart / after the resume",
                format!("{} / {}", base2.1, after.1),
            );
        }
        row("invariants broken", violations.to_string());
    }
}
