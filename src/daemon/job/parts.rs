//! The pieces a file job is made of: its lanes (one pool buffer each, reading, sealed,
//! writing), its codec (sealer, opener, or both for a rewrap), temp file names, and the spans
//! of one batch's reads or writes.
//!
//! What this room does not do: decide the next step (the job's state machine does).

use crate::crypto::format::{Opener, Sealer};
use crate::crypto::openssl::BodyDecryptor;
use crate::daemon::reactor::BufId;
use crate::durable::TEMP_PREFIX;
use crate::error::Error;
use crate::limits::{HEADER_BYTES, LANES, TAG_BYTES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LaneState {
    Idle,
    Reading,
    Ready,
    Writing,
}

pub(super) struct Lane {
    pub(super) buf: BufId,
    pub(super) batch: u64,
    pub(super) ops_left: u32,
    /// Bytes the lane's current reads or writes must move, and have moved.
    pub(super) expected: usize,
    pub(super) done: usize,
    pub(super) state: LaneState,
}

/// The crypto of a job, chosen once the header is known. The keys live inline, in the job's
/// slot, so starting a job allocates nothing for them; the variants differ in size by a key
/// schedule, which the job slot holds either way.
#[allow(clippy::large_enum_variant)]
pub(super) enum Codec {
    /// encrypt: plaintext chunks into records.
    Seal {
        sealer: Sealer,
        n_full: u64,
        final_len: usize,
    },
    /// decrypt: records into plaintext chunks.
    Open {
        opener: Opener,
        full_records: u64,
        final_record: usize,
    },
    /// verify: records' tags checked, nothing decrypted or written.
    Check {
        opener: Opener,
        full_records: u64,
        final_record: usize,
    },
    /// decrypt or rewrap of an openssl-format input: its CBC body deciphered in order, one
    /// chain carried from batch to batch, read a chunk into each record slot; for a rewrap
    /// (`sealer`) the plaintext is sealed into records in place. Never split into ranges:
    /// a chain has one order.
    Legacy {
        body: BodyDecryptor,
        sealer: Option<Sealer>,
        chunk_log2: u8,
        /// Whole chunks of the body before its final piece, and that piece's length (16
        /// to one chunk: it holds the padding).
        n_full: u64,
        final_ct: usize,
    },
    /// rewrap: records opened and resealed in place (same chunk size, same layout).
    Reseal {
        opener: Opener,
        sealer: Sealer,
        full_records: u64,
        final_record: usize,
    },
}

impl Codec {
    pub(super) fn chunk_bytes(&self) -> usize {
        match self {
            Codec::Seal { sealer, .. } => sealer.header().chunk_bytes(),
            Codec::Open { opener, .. }
            | Codec::Check { opener, .. }
            | Codec::Reseal { opener, .. } => opener.header().chunk_bytes(),
            Codec::Legacy { chunk_log2, .. } => 1 << chunk_log2,
        }
    }

    pub(super) fn stride(&self) -> usize {
        self.chunk_bytes() + TAG_BYTES
    }

    /// Units (chunks or records) in the file, counting the final one.
    pub(super) fn units(&self) -> u64 {
        match self {
            Codec::Seal { n_full, .. } => n_full + 1,
            Codec::Open { full_records, .. }
            | Codec::Check { full_records, .. }
            | Codec::Reseal { full_records, .. } => full_records + 1,
            Codec::Legacy { n_full, .. } => n_full + 1,
        }
    }

    pub(super) fn batches(&self) -> u64 {
        self.units().div_ceil(LANES as u64)
    }

    /// The same codec for the batches from `batch` on, for a range of the file run apart
    /// from the rest (`Sealer::fork_at`, `Opener::fork_at`); None for an openssl body, whose
    /// chain cannot start mid-way (see [`Codec::splits`]).
    pub(super) fn fork_at(&self, batch: u64) -> Option<Codec> {
        let index = batch * LANES as u64;
        Some(match self {
            Codec::Legacy { .. } => return None,
            Codec::Seal {
                sealer,
                n_full,
                final_len,
            } => Codec::Seal {
                sealer: sealer.fork_at(index),
                n_full: *n_full,
                final_len: *final_len,
            },
            Codec::Open {
                opener,
                full_records,
                final_record,
            } => Codec::Open {
                opener: opener.fork_at(index),
                full_records: *full_records,
                final_record: *final_record,
            },
            Codec::Check {
                opener,
                full_records,
                final_record,
            } => Codec::Check {
                opener: opener.fork_at(index),
                full_records: *full_records,
                final_record: *final_record,
            },
            Codec::Reseal {
                opener,
                sealer,
                full_records,
                final_record,
            } => Codec::Reseal {
                opener: opener.fork_at(index),
                sealer: sealer.fork_at(index),
                full_records: *full_records,
                final_record: *final_record,
            },
        })
    }

    /// Whether the file may be cut into ranges run apart: not an openssl body.
    pub(super) fn splits(&self) -> bool {
        !matches!(self, Codec::Legacy { .. })
    }

    /// (first unit, units) of batch `b`.
    pub(super) fn span(&self, batch: u64) -> (u64, usize) {
        let first = batch * LANES as u64;
        (first, (self.units() - first).min(LANES as u64) as usize)
    }

    /// How many of the `units` units from `first` on are whole (not the file's final one).
    pub(super) fn full_in(&self, first: u64, units: usize) -> usize {
        let full = match self {
            Codec::Seal { n_full, .. } | Codec::Legacy { n_full, .. } => *n_full,
            Codec::Open { full_records, .. }
            | Codec::Check { full_records, .. }
            | Codec::Reseal { full_records, .. } => *full_records,
        };
        full.saturating_sub(first).min(units as u64) as usize
    }

    /// Where batch `batch`'s records lie in a sealed input: (file offset, bytes), the final
    /// record counted at its own length. None for codecs that read plaintext.
    pub(super) fn records_at(&self, batch: u64) -> Option<(u64, usize)> {
        let (Codec::Open {
            full_records,
            final_record,
            ..
        }
        | Codec::Check {
            full_records,
            final_record,
            ..
        }
        | Codec::Reseal {
            full_records,
            final_record,
            ..
        }) = self
        else {
            return None;
        };
        let (first, units) = self.span(batch);
        let stride = self.stride();
        let last = first + units as u64 - 1;
        let tail = if last == *full_records {
            *final_record
        } else {
            stride
        };
        let start = HEADER_BYTES as u64 + first * stride as u64;
        Some((start, (units - 1) * stride + tail))
    }
}

/// Bytes of a temp file's name: the prefix and 16 hex digits (8 random bytes).
pub(super) const TEMP_NAME_BYTES: usize = TEMP_PREFIX.len() + 16;

/// A temp file's name, `.ringcrypt-tmp-<16 hex digits>`, held inline.
#[derive(Clone, Copy)]
pub(super) struct TempName(pub(super) [u8; TEMP_NAME_BYTES]);

impl TempName {
    /// A fresh random name.
    pub(super) fn random() -> Result<TempName, Error> {
        let random: [u8; 8] = crate::crypto::format::random_bytes()?;
        let mut name = [0u8; TEMP_NAME_BYTES];
        let (prefix, hex) = name.split_at_mut(TEMP_PREFIX.len());
        prefix.copy_from_slice(TEMP_PREFIX.as_bytes());
        for (pair, byte) in hex.chunks_exact_mut(2).zip(random) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        Ok(TempName(name))
    }
}

/// Up to [`LANES`] spans of a pool buffer with their file offsets, `(at, len, offset)`: the
/// reads or writes of one batch, kept inline.
pub(super) struct Spans {
    pub(super) items: [(usize, usize, u64); LANES],
    pub(super) len: usize,
}

impl Spans {
    pub(super) fn new() -> Spans {
        Spans {
            items: [(0, 0, 0); LANES],
            len: 0,
        }
    }

    pub(super) fn push(&mut self, span: (usize, usize, u64)) {
        // A batch is at most LANES units, and each unit is at most one span.
        assert!(self.len < LANES, "more than LANES spans in a batch");
        self.items[self.len] = span;
        self.len += 1;
    }

    pub(super) fn as_slice(&self) -> &[(usize, usize, u64)] {
        &self.items[..self.len]
    }
}
