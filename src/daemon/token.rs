//! What an op's completion is for. Every op a shard pushes carries a [`Token`]; the reactor
//! hands it back with the completion as the 64-bit `user_data` the kernel keeps, and the
//! shard's `on_completion` decodes it to know whose op ended: a step of a file job, a
//! connection's receive or send, the listener's accept, or the wake-up read.
//!
//! The packing into 64 bits is done here and nowhere else: the top byte says the kind, a job
//! token carries its slot and its step, a connection token its key.
//!
//! What this room does not do: push ops (the reactor does) or act on a completion.

/// Whose op it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// A step of the file job in job-table slot `slot`.
    Job { slot: u32, step: Step },
    /// A receive on connection `key` of this shard.
    ConnRecv(u64),
    /// A send on connection `key` of this shard.
    ConnSend(u64),
    /// An accept on the listener (shard 0).
    Accept,
    /// The read of the shard's wake-up eventfd.
    Wake,
    /// An fsync of an output directory for a batch of jobs that linked into it (`batch`:
    /// the shard's number for it).
    DirSync(u64),
}

/// A step of a file job (see `job`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    OpenInput,
    OpenDir,
    CreateTemp,
    CreateNamed,
    HeaderRead,
    HeaderWrite,
    EofProbe,
    Fsync,
    Link,
    Rename,
    Unlink,
    /// `skip_existing`: open the existing output, read its header, read its final record.
    CheckOpen,
    CheckHead,
    CheckTail,
    /// A read into lane `n`'s buffer.
    LaneRead(u8),
    /// A write from lane `n`'s buffer.
    LaneWrite(u8),
}

const KIND_JOB: u64 = 1;
const KIND_CONN_RECV: u64 = 2;
const KIND_CONN_SEND: u64 = 3;
const KIND_ACCEPT: u64 = 4;
const KIND_WAKE: u64 = 5;
const KIND_DIR_SYNC: u64 = 6;
const KIND_SHIFT: u32 = 56;
/// Connection keys and job slots fit below the kind byte.
const PAYLOAD_MASK: u64 = (1 << KIND_SHIFT) - 1;

/// Step codes (a job token's low byte); lanes take 16 codes each from their base.
const LANE_READ_BASE: u64 = 16;
const LANE_WRITE_BASE: u64 = 32;
const LANES_MAX: u8 = 16;

impl Step {
    fn code(self) -> u64 {
        match self {
            Step::OpenInput => 1,
            Step::OpenDir => 2,
            Step::CreateTemp => 3,
            Step::CreateNamed => 4,
            Step::HeaderRead => 5,
            Step::HeaderWrite => 6,
            Step::EofProbe => 7,
            Step::Fsync => 8,
            Step::Link => 9,
            Step::Rename => 10,
            Step::Unlink => 12,
            Step::CheckOpen => 13,
            Step::CheckHead => 14,
            Step::CheckTail => 15,
            Step::LaneRead(lane) => LANE_READ_BASE + u64::from(lane),
            Step::LaneWrite(lane) => LANE_WRITE_BASE + u64::from(lane),
        }
    }

    fn from_code(code: u64) -> Option<Step> {
        Some(match code {
            1 => Step::OpenInput,
            2 => Step::OpenDir,
            3 => Step::CreateTemp,
            4 => Step::CreateNamed,
            5 => Step::HeaderRead,
            6 => Step::HeaderWrite,
            7 => Step::EofProbe,
            8 => Step::Fsync,
            9 => Step::Link,
            10 => Step::Rename,
            12 => Step::Unlink,
            13 => Step::CheckOpen,
            14 => Step::CheckHead,
            15 => Step::CheckTail,
            c if (LANE_READ_BASE..LANE_READ_BASE + u64::from(LANES_MAX)).contains(&c) => {
                Step::LaneRead((c - LANE_READ_BASE) as u8)
            }
            c if (LANE_WRITE_BASE..LANE_WRITE_BASE + u64::from(LANES_MAX)).contains(&c) => {
                Step::LaneWrite((c - LANE_WRITE_BASE) as u8)
            }
            _ => return None,
        })
    }
}

impl Token {
    /// The `user_data` the kernel keeps for the op.
    pub fn encode(self) -> u64 {
        let (kind, payload) = match self {
            Token::Job { slot, step } => (KIND_JOB, (u64::from(slot) << 8) | step.code()),
            Token::ConnRecv(key) => (KIND_CONN_RECV, key),
            Token::ConnSend(key) => (KIND_CONN_SEND, key),
            Token::Accept => (KIND_ACCEPT, 0),
            Token::Wake => (KIND_WAKE, 0),
            Token::DirSync(batch) => (KIND_DIR_SYNC, batch),
        };
        // Connection keys count up from 1 and slots are bounded by the jobs a shard runs:
        // neither comes near 2^48.
        debug_assert!(payload <= PAYLOAD_MASK, "token payload overflows");
        (kind << KIND_SHIFT) | (payload & PAYLOAD_MASK)
    }

    /// The token an op was pushed with; None for a value no [`Token::encode`] made.
    pub fn decode(raw: u64) -> Option<Token> {
        let payload = raw & PAYLOAD_MASK;
        Some(match raw >> KIND_SHIFT {
            KIND_JOB => Token::Job {
                slot: u32::try_from(payload >> 8).ok()?,
                step: Step::from_code(payload & 0xff)?,
            },
            KIND_CONN_RECV => Token::ConnRecv(payload),
            KIND_CONN_SEND => Token::ConnSend(payload),
            KIND_ACCEPT => Token::Accept,
            KIND_WAKE => Token::Wake,
            KIND_DIR_SYNC => Token::DirSync(payload),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_round_trips() {
        let steps = [
            Step::OpenInput,
            Step::OpenDir,
            Step::CreateTemp,
            Step::CreateNamed,
            Step::HeaderRead,
            Step::HeaderWrite,
            Step::EofProbe,
            Step::Fsync,
            Step::Link,
            Step::Rename,
            Step::Unlink,
            Step::CheckOpen,
            Step::CheckHead,
            Step::CheckTail,
            Step::LaneRead(0),
            Step::LaneRead(LANES_MAX - 1),
            Step::LaneWrite(0),
            Step::LaneWrite(LANES_MAX - 1),
        ];
        let mut seen = std::collections::HashSet::new();
        for slot in [0, 1, 255, 65_535, u32::MAX] {
            for step in steps {
                let token = Token::Job { slot, step };
                assert!(seen.insert(token.encode()), "{token:?} collides");
                assert_eq!(Token::decode(token.encode()), Some(token));
            }
        }
        for token in [
            Token::ConnRecv(1),
            Token::ConnRecv(PAYLOAD_MASK),
            Token::ConnSend(7),
            Token::Accept,
            Token::Wake,
            Token::DirSync(1),
            Token::DirSync(PAYLOAD_MASK),
        ] {
            assert!(seen.insert(token.encode()), "{token:?} collides");
            assert_eq!(Token::decode(token.encode()), Some(token));
        }
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(u64::MAX), None);
        assert_eq!(
            Token::decode(1 << KIND_SHIFT),
            None,
            "a job token with no step"
        );
    }
}
