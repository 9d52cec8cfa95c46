//! Reliability and caller-safety of the real `ringcryptd` under load, signals and hostile
//! callers: a tree next to a full queue, SIGTERM during a tree and during running jobs,
//! duplicate merging that merges only identical requests, a tree that would walk its own
//! output, callers the daemon refuses (connection limits, one reply then close), the daemon
//! acting for a caller with the caller's rights (confused deputy), empty key rings and an
//! offline full disk.
//!
//! Every daemon here (`harness::rd`) runs on its own temp directory under /tmp (mode 0755 so
//! `nobody` can reach it) with `--fsync never --metrics off` and `--shards 2` unless the test
//! says otherwise; its socket is made 0666 so the daemon, not the file mode, decides who may
//! call.
//! Every test runs under both backends (`both_backends!` at the bottom), is bounded in time
//! (read timeouts, `wait_within`, deadlines) and says in a comment what must stay intact.
//! Tests that act as another uid (`setpriv` to `nobody`, uid 65534) or mount file systems need
//! root and say so when skipped. Raw requests as `nobody` go through a small Python client
//! (`support::NOBODY_CLIENT`), never the `ringcrypt` client, which would pass descriptors.
//!
//! Each test is a defect found in an adversarial pass. Status on the code before the fixes
//! (commit 89f3836), the same on both backends; a failing test stops at its first failed
//! check. (There the whole file took about 4.5 minutes, most of it the 40 s bound of the
//! four SIGTERM-during-tree runs.) With the fixes every test passes on both backends, in
//! about 2.5 minutes on 2 cores.
//!
//! | test | on 89f3836 |
//! | --- | --- |
//! | `tree_beside_a_full_queue_{2_shards,1_shard}` | FAIL: the daemon dies of SIGABRT, "thread 'shard-N' has overflowed its stack"; A sees EOF |
//! | `sigterm_during_tree_{2_shards,1_shard}` | FAIL: the daemon never exits after SIGTERM; killed at the 40 s bound |
//! | `sigterm_answers_every_waiting_client` | FAIL: one client gets EOF with no final line (its connection's shard closed it) |
//! | `merge_only_same_key` | FAIL: the k2 + overwrite request is accepted with the k1 job's id |
//! | `merge_only_same_overwrite` | FAIL: the request without overwrite ends `done` (merged), not `exists` |
//! | `merge_only_known_key` | FAIL: the `nope` request ends `done` (merged into the k1 job), not `unknown_key` |
//! | `merge_only_same_caller` (root) | FAIL: nobody's request is accepted with root's job id |
//! | `tree_output_inside_input` | FAIL: `done`; the walk enters its own output, t/enc/enc/... 256 levels deep |
//! | `tree_output_is_input` | FAIL: `done`; `*.rcrypt` files written into u beside their inputs |
//! | `tree_output_inside_input_through_bind_mount` (root) | FAIL: as the one above, through the bind mount |
//! | `tree_sibling_output_and_rewrap_in_place` | passes (positive control) |
//! | `refused_uid_cannot_lock_out_root` (root) | FAIL: nobody holds 1024 connections; root's ping gets `busy` |
//! | `refused_caller_gets_one_reply_then_eof` (root) | FAIL: after `permission_denied` the connection stays open (no EOF in 5 s) |
//! | `allowed_uid_connection_limit` (root) | FAIL: nobody gets 1024 `pong` (76 `busy`); root's ping gets `busy` |
//! | `deputy_unreadable_input` (root) | FAIL: `done`: a file in root's 0700 directory is encrypted for nobody |
//! | `deputy_unwritable_output_dir` (root) | FAIL: `done`: planted.rc appears in root's 0700 directory |
//! | `deputy_overwrite_of_roots_file` (root) | FAIL: `done`: root's 0600 file is replaced |
//! | `deputy_own_file_is_served` (root) | FAIL: `done`, but the output belongs to uid 0, not 65534 |
//! | `deputy_tree_skips_what_nobody_cannot_read` (root) | FAIL: `done`, 6 ok: priv/x and priv/y encrypted for nobody |
//! | `empty_ring_refuses_start` | FAIL: with an empty keys.toml the daemon starts and serves (killed at 10 s) |
//! | `empty_ring_reload_keeps_old_keys` | FAIL: SIGHUP installs the empty ring; encrypt with k1 gets `unknown_key` |
//! | `refused_reload_is_not_audited_as_accepted` (root) | FAIL: the log says `audit: accepted uid=65534 ... op=reload` |
//! | `offline_full_disk_blames_the_output` (root) | FAIL: stderr says `cannot read <input>: No space left on device` |

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod harness;

mod batches;
mod callers;
mod control;
mod existing;
mod keyrings;
mod legacy;
mod merges;
mod progress;
mod ranges;
mod trees;
mod verify;
