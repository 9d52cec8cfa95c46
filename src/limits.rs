//! Every fixed bound of the crypto core, in one place, each with the reason it has the value
//! it has. Daemon limits (connections, queues, timeouts) join this file with the daemon.

/// Bytes in an RCRYPT v1 header: magic, version, suite, chunk_log2, flags, reserved, key id,
/// salt and header tag (docs/format.md). Fixed by the format.
pub const HEADER_BYTES: usize = 96;

/// Bytes in every HMAC-SHA256 tag: the header tag and each chunk's tag.
pub const TAG_BYTES: usize = 32;

/// AES block size; CBC and PKCS#7 work in these units.
pub const BLOCK_BYTES: usize = 16;

/// Smallest chunk the format allows (4 KiB): smaller chunks would spend more on tags and
/// per-chunk setup than on data.
pub const CHUNK_LOG2_MIN: u8 = 12;

/// Largest chunk the format allows (16 MiB): a reader must hold a whole record in memory
/// before it may release any of its plaintext, so this bounds a reader's buffer.
pub const CHUNK_LOG2_MAX: u8 = 24;

/// Default chunk size (64 KiB): eight of them (one batch) fit in a typical L2 cache, so the
/// HMAC pass reads ciphertext the AES pass just wrote while it is still hot.
pub const CHUNK_LOG2_DEFAULT: u8 = 16;

/// Independent CBC chains advanced in lockstep. The AES-NI backend of the `aes` crate
/// processes exactly eight blocks per call, which hides the 4-cycle latency of `aesenc`
/// behind throughput: one chain is latency-bound (~1 GB/s), eight fill the pipeline.
pub const LANES: usize = 8;

/// PBKDF2 iterations for an `openssl`-format key entry that names none. Matches the count
/// most legacy scripts pass to `openssl enc -pbkdf2 -iter`.
pub const OPENSSL_DEFAULT_ITER: u32 = 10_000;

/// Largest key ring file read: a ring holds a few dozen entries of ~150 bytes; anything far
/// larger is not a key ring and is refused instead of parsed.
pub const KEYRING_MAX_BYTES: u64 = 1 << 20;

// ---- daemon ---------------------------------------------------------------------------

/// Messages one shard's inbox holds. Producers that find it full answer `busy` (new work) or
/// wait a moment (replies); shards drain their inbox every loop turn, so it fills only when a
/// shard is stalled.
pub const INBOX_DEPTH: usize = 4096;

/// Jobs waiting for buffers on one shard before new single jobs get `busy`.
pub const MAX_QUEUED_JOBS_PER_SHARD: usize = 1024;

/// Open client connections across the daemon; one more is told `busy` and closed. Each costs
/// a descriptor and a receive buffer (`RECV_BUFFER_BYTES`).
pub const MAX_CONNECTIONS: usize = 1024;

/// Of [`MAX_CONNECTIONS`], slots only root and the daemon's own uid may take: however many
/// connections others open, an administrator can still connect to look, reload or stop.
pub const ADMIN_RESERVED_CONNECTIONS: usize = 32;

/// Connections one uid other than root and the daemon's may hold open. A client pipelines
/// requests on one connection, and a pool of workers needs one each: a few hundred is far
/// more than any real client uses, and four users at this limit still leave room for others.
pub const MAX_CONNECTIONS_PER_UID: usize = 256;

/// The most a connection's receive buffer grows to: one maximal request line plus room to
/// find its newline.
pub const RECV_BUFFER_BYTES: usize = 64 * 1024 + 4096;

/// Passed descriptors a connection may hold that no request has taken yet. A well-behaved
/// client passes two with each request line, which takes them at once; more than this
/// waiting means a peer passing descriptors for nothing, and they are closed.
pub const MAX_PASSED_FDS_PER_CONN: usize = 16;

/// A connection's receive buffer to start with, and again after a long line is consumed:
/// a typical request fits, and a thousand idle connections cost 1 MiB, not 68.
pub const RECV_INITIAL_BYTES: usize = 1024;

/// Replies waiting to be sent on one connection before the daemon stops reading its
/// requests: a client that writes and never reads gets back-pressure, not unbounded memory.
pub const MAX_PENDING_REPLY_BYTES: usize = 1 << 20;

/// A connection with no request and no job in flight for this long is closed, so idle or
/// abandoned clients cannot hold descriptors forever.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// A connection from a caller not on the allow lists gets one answer and is closed; one
/// that sends nothing is closed after this long instead of [`IDLE_TIMEOUT`].
pub const REFUSED_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a shard looks at its timers (idle connections, drain deadline, paused accept)
/// when nothing else wakes it.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Ended jobs each shard remembers for `status` and `jobs`.
pub const FINISHED_JOBS_KEPT: usize = 1024;

/// File jobs one tree keeps out at once: enough to keep every shard's pipeline full, few
/// enough that a million-file tree is never a million queued jobs.
pub const TREE_WINDOW: usize = 256;

/// Tree and batch jobs one shard runs at once (they start on the shard of the connection
/// that asked); one more is refused `busy`. Each holds its walk's directories or its list
/// of paths (up to a 64 KiB line's worth), so this bounds what a client pipelining tree or
/// batch requests can make the daemon hold.
pub const MAX_TREES_PER_SHARD: usize = 64;

/// Spare path buffers each shard keeps for the paths of new jobs: two (input and output) for
/// each of the `TREE_WINDOW` files a tree job hands out at once, so a tree starting on a
/// shard finds its first window's paths waiting. A single-file request takes two at a time.
/// The buffers come back from the records [`FINISHED_JOBS_KEPT`] drops, so in the steady
/// state a job's paths cost no allocation. Each spare holds at most
/// `protocol::SPARE_PATH_MAX_BYTES` (4 KiB), so the pool never holds more than 2 MiB, and
/// holds a few tens of KiB for paths of ordinary length.
pub const SPARE_PATHS_PER_SHARD: usize = 2 * TREE_WINDOW;

/// Concurrent jobs per shard: each holds `job::BUFFERS_PER_JOB` pool buffers.
pub const RUNNING_JOBS_PER_SHARD: u16 = 16;

/// Files at least this large are split into ranges run on every shard at once (one file
/// on every core), unless `--split-min-mib` says otherwise. Below it a file is done by its
/// owner alone: splitting costs a message, two descriptor copies and a job start per
/// range, which a small file does not repay. Each range holds at least half of it.
pub const SPLIT_MIN_BYTES: u64 = 16 << 20;

/// `--io auto` uses direct IO for files of at least this many bytes (on file systems that
/// take it and are not in memory). Smaller files stay buffered: their page-cache footprint
/// is small, and the page cache answers them with the least latency. Not a CPU bound: on
/// this machine's ext4 direct IO cost no more CPU at 256 KiB (docs/performance.md).
pub const DIRECT_IO_MIN_BYTES: u64 = 1 << 20;

/// Range jobs each shard keeps pool buffers for beyond [`RUNNING_JOBS_PER_SHARD`]. A file
/// whose ranges are out waits for them while holding its own buffers, so ranges must never
/// wait for buffers that only such files could free: ordinary jobs leave this many jobs'
/// buffers free, and ranges start before ordinary jobs.
pub const RANGE_JOBS_RESERVED_PER_SHARD: u16 = 1;

/// How long SIGTERM lets running jobs finish before cancelling them.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// After [`DRAIN_TIMEOUT`], how long cancelled jobs get to hand back their ops and clients
/// to read their last replies before each shard exits anyway. A job cancelled at the
/// deadline stops at its next completion (milliseconds); this bounds one stuck in the
/// kernel (a hung network filesystem), so a shutdown always ends.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the main thread waits for the shards after [`DRAIN_TIMEOUT`] and
/// [`SHUTDOWN_GRACE`] before it exits without them (status 1, saying which did not stop).
pub const SHUTDOWN_JOIN_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

/// After a tree's file was refused `busy` (its owner's queue was full), how long the tree
/// waits before handing it out again, so a full queue costs a retry every few
/// milliseconds, not a spinning core.
pub const TREE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// Log records waiting for the logging thread. A shard hands each record over without ever
/// waiting; when this many wait (stderr is slow or stuck), further records are dropped and
/// counted (`ringcrypt_log_dropped_total`). 4096 is several seconds of a busy daemon's
/// records, so a journald hiccup loses nothing while memory stays bounded.
pub const LOG_QUEUE_RECORDS: usize = 4096;

/// A record buffer larger than this (a record naming two paths near the 4,095-byte limit)
/// is freed after use instead of kept for the next record, so the kept buffers stay under
/// `LOG_QUEUE_RECORDS` x 4 KiB.
pub const LOG_RECORD_KEEP_BYTES: usize = 4096;

/// A new record buffer's capacity: an audit record with two ordinary paths fits, so a
/// buffer is allocated once, not grown while its record is formatted.
pub const LOG_RECORD_INITIAL_BYTES: usize = 1024;

/// After writing a batch of fewer than [`LOG_BATCH_RECORDS`] records, the logging thread
/// waits this long for more, so a busy daemon's audit records go out in one write a
/// millisecond instead of one per record (and the shards seldom need to wake it).
pub const LOG_BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(1);
pub const LOG_BATCH_RECORDS: usize = 256;

/// Record buffers made at start (256 KiB): records written while the logging thread lags
/// behind a burst take these rather than allocate on the shard that logs them.
pub const LOG_SPARE_RECORDS: usize = 256;

/// How long the daemon waits at exit for the logging thread to write what is queued; past
/// it (stderr is stuck) the rest is lost rather than the exit delayed.
pub const LOG_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
