//! Multi-buffer HMAC-SHA256: the tags of several independent messages computed at once by
//! interleaving their SHA-256 chains on the SHA extensions (SHA-NI).
//!
//! Why: one SHA-256 chain is a serial dependency, each `sha256rnds2` waits for the previous
//! one, so a single chain runs at the instruction's latency and leaves much of its throughput
//! unused. RCRYPT tags every chunk separately, so the chunks of a batch are independent
//! chains; here the same round sequence runs for [`CHAINS`] states in one loop body and the
//! core overlaps them.
//!
//! Figures (`cargo bench --bench crypto`, one thread, 64 KiB chunks, on the development
//! machine: an AMD EPYC with SHA-NI, shared and noisy, so read them as ratios): the `sha2`
//! crate's single chain tags at ~2.0 GB/s; this module at ~2.0, 2.9, 3.3 and 3.6 GB/s with
//! one, two, three and four chains, 1.8x with four; `Sealer::seal_full` went from ~1.4 to
//! ~2.1 GB/s and `Opener::open_full` from ~1.6 to ~2.5 GB/s. Five to eight chains measured
//! slower than four: the SHA instructions have only the legacy SSE encoding, so sixteen
//! registers, and past four lanes the spills cost more than the overlap gains.
//!
//! What it computes: for each message `prefix || body`, HMAC-SHA256(key, prefix || body).
//! Messages whose prefixes have one length and whose bodies have one length (RCRYPT's full
//! chunks: a 41-byte prefix and C bytes of ciphertext) go through the chains together; a
//! message of another shape than its neighbours takes a chain alone, still on SHA-NI.
//!
//! Backends: [`HmacKey::new`] takes SHA-NI when the CPU has it (`is_x86_feature_detected!`,
//! whose answer the standard library caches after the first query) and the portable path
//! otherwise, which is the `hmac` + `sha2` crates exactly as `format` used them before. Other
//! targets than x86_64 compile the portable path only. [`HmacKey::portable`] forces the
//! portable path, so tests and the bench check and measure both on one machine.
//!
//! Where `unsafe` is: the module denies it, and allows it in two places only, each with its
//! SAFETY comment: `ShaNi::compress`, the one call from ordinary code into the
//! `#[target_feature]` round function (sound because a `ShaNi` value exists only after the
//! features were detected), and `load`, the unaligned 16-byte load of message words (sound
//! because it reads a `&[u8; 16]`). Everything else, the intrinsics included, is safe code
//! inside `#[target_feature]` functions.

#![deny(unsafe_code)]

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes in a tag.
pub const TAG_BYTES: usize = 32;

/// Chains interleaved per call into the rounds: four measured fastest (module docs). A batch
/// of eight chunks goes through as 4 + 4.
pub const CHAINS: usize = 4;

/// The most chains [`HmacKey::tags_with_chains`] interleaves.
pub const MAX_CHAINS: usize = 4;

type HmacSha256 = Hmac<Sha256>;

/// One message to tag: `prefix || body`, as two slices so that neither is copied.
#[derive(Clone, Copy, Default)]
pub struct Message<'a> {
    pub prefix: &'a [u8],
    pub body: &'a [u8],
}

/// An HMAC-SHA256 key, ready for tagging: the SHA-256 states after the ipad block and after
/// the opad block, so a tag costs no key processing. A clone is another owner of the same
/// key, zeroized on its own drop.
#[derive(Clone)]
pub struct HmacKey {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    /// SHA-NI, with the inner and outer states in our own representation; zeroized on drop.
    #[cfg(target_arch = "x86_64")]
    ShaNi {
        cpu: ShaNi,
        inner: [u32; 8],
        outer: [u32; 8],
    },
    /// The `hmac` crate's keyed state, cloned per tag. It holds the same two states; the crate
    /// gives no way to zeroize them (as before this module existed).
    Portable(HmacSha256),
}

impl Drop for HmacKey {
    fn drop(&mut self) {
        match &mut self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi { inner, outer, .. } => {
                zeroize::Zeroize::zeroize(inner);
                zeroize::Zeroize::zeroize(outer);
            }
            Backend::Portable(_) => {}
        }
    }
}

/// True when this CPU runs the SHA-NI path.
pub fn sha_ni_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        ShaNi::detect().is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl HmacKey {
    /// A key of any length (HMAC hashes keys longer than a block), on SHA-NI when the CPU has
    /// it.
    pub fn new(key: &[u8]) -> HmacKey {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = ShaNi::detect() {
            let (inner, outer) = shani::key_states(cpu, key);
            return HmacKey {
                backend: Backend::ShaNi { cpu, inner, outer },
            };
        }
        HmacKey::portable(key)
    }

    /// A key on the portable path whatever the CPU: for tests and for the bench's comparison.
    pub fn portable(key: &[u8]) -> HmacKey {
        let mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        HmacKey {
            backend: Backend::Portable(mac),
        }
    }

    /// True when this key computes on SHA-NI.
    pub fn is_accelerated(&self) -> bool {
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi { .. } => true,
            Backend::Portable(_) => false,
        }
    }

    /// HMAC-SHA256(key, prefix || body).
    pub fn tag(&self, prefix: &[u8], body: &[u8]) -> [u8; TAG_BYTES] {
        let mut out = [[0u8; TAG_BYTES]; 1];
        self.tags_with_chains(1, &[Message { prefix, body }], &mut out);
        out[0]
    }

    /// `out[i]` = HMAC-SHA256(key, `messages[i]`), [`CHAINS`] messages at a time.
    ///
    /// Panics if `out` and `messages` differ in length.
    pub fn tags(&self, messages: &[Message<'_>], out: &mut [[u8; TAG_BYTES]]) {
        self.tags_with_chains(CHAINS, messages, out);
    }

    /// [`HmacKey::tags`] with a chosen number of interleaved chains (1..=[`MAX_CHAINS`]), so
    /// the bench can show what each count gives on the machine it runs on. The portable path
    /// ignores `chains`.
    pub fn tags_with_chains(
        &self,
        chains: usize,
        messages: &[Message<'_>],
        out: &mut [[u8; TAG_BYTES]],
    ) {
        assert!((1..=MAX_CHAINS).contains(&chains), "{chains} chains");
        assert_eq!(messages.len(), out.len(), "one tag per message");
        match &self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi { cpu, inner, outer } => {
                shani::tags(*cpu, inner, outer, chains, messages, out);
            }
            Backend::Portable(keyed) => {
                for (message, tag) in messages.iter().zip(out) {
                    let mut mac = keyed.clone();
                    mac.update(message.prefix);
                    mac.update(message.body);
                    tag.copy_from_slice(&mac.finalize().into_bytes());
                }
            }
        }
    }
}

/// Proof that this CPU has SHA-NI and the SSE levels its code uses: the private field means
/// a value exists only after [`ShaNi::detect`] said yes, which is what makes calling the
/// `#[target_feature]` code sound.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct ShaNi(());

#[cfg(target_arch = "x86_64")]
impl ShaNi {
    fn detect() -> Option<ShaNi> {
        let present = std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse2")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1");
        present.then_some(ShaNi(()))
    }

    /// Runs the compression function over `blocks[l]` for each state `states[l]`, the `N`
    /// chains interleaved. Every lane has the same number of blocks.
    #[allow(unsafe_code)]
    fn compress<const N: usize>(self, states: &mut [[u32; 8]; N], blocks: [&[[u8; 64]]; N]) {
        assert!(
            blocks.iter().all(|lane| lane.len() == blocks[0].len()),
            "lanes of unequal length"
        );
        // SAFETY: `self` is a `ShaNi`, which `detect` makes only when the CPU reports the
        // sha, sse2, ssse3 and sse4.1 features, exactly those the function enables.
        unsafe { shani::compress_lanes(states, blocks) }
    }
}

#[cfg(target_arch = "x86_64")]
mod shani {
    use core::arch::x86_64::{
        __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_extract_epi32, _mm_loadu_si128, _mm_set_epi32,
        _mm_set_epi64x, _mm_setzero_si128, _mm_sha256msg1_epu32, _mm_sha256msg2_epu32,
        _mm_sha256rnds2_epu32, _mm_shuffle_epi8, _mm_shuffle_epi32,
    };

    use sha2::{Digest, Sha256};
    use zeroize::Zeroizing;

    use super::{MAX_CHAINS, Message, ShaNi, TAG_BYTES};

    /// SHA-256 initial state (FIPS 180-4 §5.3.3).
    const IV: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];

    /// SHA-256 round constants (FIPS 180-4 §4.2.2).
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// The inner and outer states of HMAC-SHA256 under `key` (RFC 2104): the compression of
    /// one block of key XOR ipad, and of key XOR opad.
    pub(super) fn key_states(cpu: ShaNi, key: &[u8]) -> ([u32; 8], [u32; 8]) {
        let mut block = Zeroizing::new([0u8; 64]);
        if key.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut pads = Zeroizing::new([[0u8; 64]; 2]);
        let [ipad, opad] = &mut *pads;
        for ((inner, outer), byte) in ipad.iter_mut().zip(opad.iter_mut()).zip(&*block) {
            *inner = byte ^ 0x36;
            *outer = byte ^ 0x5c;
        }
        let mut states = [IV; 2];
        let [inner, outer] = &*pads;
        cpu.compress(
            &mut states,
            [std::slice::from_ref(inner), std::slice::from_ref(outer)],
        );
        let [inner, outer] = states;
        (inner, outer)
    }

    /// Tags `messages` into `out`: runs of up to `chains` messages with one prefix length and
    /// one body length go through the rounds together; a run ends before the first message
    /// whose shape differs from the run's first.
    pub(super) fn tags(
        cpu: ShaNi,
        inner: &[u32; 8],
        outer: &[u32; 8],
        chains: usize,
        messages: &[Message<'_>],
        out: &mut [[u8; TAG_BYTES]],
    ) {
        let mut at = 0;
        while at < messages.len() {
            let first = &messages[at];
            let run = messages[at..]
                .iter()
                .take(chains.min(MAX_CHAINS))
                .take_while(|m| {
                    m.prefix.len() == first.prefix.len() && m.body.len() == first.body.len()
                })
                .count();
            let (group, tags) = (&messages[at..at + run], &mut out[at..at + run]);
            match run {
                1 => hmac_lanes::<1>(cpu, inner, outer, group, tags),
                2 => hmac_lanes::<2>(cpu, inner, outer, group, tags),
                3 => hmac_lanes::<3>(cpu, inner, outer, group, tags),
                _ => hmac_lanes::<4>(cpu, inner, outer, group, tags),
            }
            at += run;
        }
    }

    /// One message cut where the compression function needs it: whole blocks of the prefix
    /// and of the body are read where they lie, and only the block that straddles the two and
    /// the padded end are copied.
    struct Split<'a> {
        prefix_blocks: &'a [[u8; 64]],
        /// The prefix's last partial block completed with the body's first bytes, if the body
        /// is long enough to complete it.
        head: Option<[u8; 64]>,
        body_blocks: &'a [[u8; 64]],
        /// What is left (under a block), then 0x80, zeros and the bit length: one or two
        /// blocks.
        tail: [[u8; 64]; 2],
        tail_blocks: usize,
    }

    impl<'a> Split<'a> {
        fn new(message: &Message<'a>) -> Split<'a> {
            let (prefix_blocks, prefix_rest) = message.prefix.as_chunks::<64>();
            let mut body = message.body;
            let mut head = None;
            let mut rest = [0u8; 128];
            let mut rest_len = 0;
            if !prefix_rest.is_empty() {
                let need = 64 - prefix_rest.len();
                if body.len() >= need {
                    let mut block = [0u8; 64];
                    block[..prefix_rest.len()].copy_from_slice(prefix_rest);
                    block[prefix_rest.len()..].copy_from_slice(&body[..need]);
                    head = Some(block);
                    body = &body[need..];
                } else {
                    rest[..prefix_rest.len()].copy_from_slice(prefix_rest);
                    rest_len = prefix_rest.len();
                }
            }
            let (body_blocks, body_rest) = body.as_chunks::<64>();
            // Under 64 bytes in all: either the body's partial block alone, or a partial prefix
            // block with a body too short to complete it.
            rest[rest_len..rest_len + body_rest.len()].copy_from_slice(body_rest);
            rest_len += body_rest.len();
            rest[rest_len] = 0x80;
            let tail_blocks = if rest_len + 1 + 8 <= 64 { 1 } else { 2 };
            // The key block comes first in the inner hash, so it counts in the length.
            let bits = ((64 + message.prefix.len() + message.body.len()) as u64) * 8;
            rest[tail_blocks * 64 - 8..tail_blocks * 64].copy_from_slice(&bits.to_be_bytes());
            let (tail, _) = rest.as_chunks::<64>();
            Split {
                prefix_blocks,
                head,
                body_blocks,
                tail: [tail[0], tail[1]],
                tail_blocks,
            }
        }
    }

    /// HMAC of `N` messages of one shape, their chains interleaved.
    fn hmac_lanes<const N: usize>(
        cpu: ShaNi,
        inner: &[u32; 8],
        outer: &[u32; 8],
        messages: &[Message<'_>],
        out: &mut [[u8; TAG_BYTES]],
    ) {
        let splits: [Split<'_>; N] = std::array::from_fn(|l| Split::new(&messages[l]));
        let mut states = [*inner; N];
        if !splits[0].prefix_blocks.is_empty() {
            cpu.compress(
                &mut states,
                std::array::from_fn(|l| splits[l].prefix_blocks),
            );
        }
        // Equal shapes give every lane a head or none.
        if splits[0].head.is_some() {
            cpu.compress(
                &mut states,
                std::array::from_fn(|l| splits[l].head.as_slice()),
            );
        }
        if !splits[0].body_blocks.is_empty() {
            cpu.compress(&mut states, std::array::from_fn(|l| splits[l].body_blocks));
        }
        cpu.compress(
            &mut states,
            std::array::from_fn(|l| &splits[l].tail[..splits[l].tail_blocks]),
        );

        // Outer hash: one block, the inner digest then padding for 64 + 32 bytes.
        let mut blocks = [[0u8; 64]; N];
        for (block, state) in blocks.iter_mut().zip(&states) {
            for (bytes, word) in block.chunks_exact_mut(4).zip(state) {
                bytes.copy_from_slice(&word.to_be_bytes());
            }
            block[32] = 0x80;
            block[56..].copy_from_slice(&((64u64 + 32) * 8).to_be_bytes());
        }
        let mut states = [*outer; N];
        cpu.compress(
            &mut states,
            std::array::from_fn(|l| std::slice::from_ref(&blocks[l])),
        );
        for (tag, state) in out.iter_mut().zip(&states) {
            for (bytes, word) in tag.chunks_exact_mut(4).zip(state) {
                bytes.copy_from_slice(&word.to_be_bytes());
            }
        }
    }

    /// Four message words, big-endian, from 16 bytes.
    #[target_feature(enable = "sse2,ssse3")]
    #[allow(unsafe_code)]
    fn load(bytes: &[u8; 16]) -> __m128i {
        let swap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        // SAFETY: `bytes` is a reference to 16 readable bytes, exactly what the load reads,
        // and `loadu` has no alignment requirement.
        let raw = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
        _mm_shuffle_epi8(raw, swap)
    }

    /// Words 4 to 7 of the next message schedule from the four before (Intel's SHA
    /// extensions paper, message scheduling).
    #[target_feature(enable = "sha,sse2,ssse3")]
    fn schedule(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
        let t = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8::<4>(w3, w2));
        _mm_sha256msg2_epu32(t, w3)
    }

    /// Four rounds `4i..4i+4` for every lane, message words in slot `i % 4` of each lane's
    /// ring of four schedule registers. Each step issues one instruction kind for all lanes
    /// before the next kind, so the lanes' dependency chains sit side by side in the
    /// instruction stream. `schedule` first computes the step's words from the four before.
    macro_rules! step {
        ($n:ident, $abef:ident, $cdgh:ident, $w:ident, $i:literal, schedule) => {
            for l in 0..$n {
                $w[l][$i % 4] = schedule(
                    $w[l][$i % 4],
                    $w[l][($i + 1) % 4],
                    $w[l][($i + 2) % 4],
                    $w[l][($i + 3) % 4],
                );
            }
            step!($n, $abef, $cdgh, $w, $i, rounds);
        };
        ($n:ident, $abef:ident, $cdgh:ident, $w:ident, $i:literal, rounds) => {
            let k = _mm_set_epi32(
                K[4 * $i + 3] as i32,
                K[4 * $i + 2] as i32,
                K[4 * $i + 1] as i32,
                K[4 * $i] as i32,
            );
            let mut t = [_mm_setzero_si128(); $n];
            for l in 0..$n {
                t[l] = _mm_add_epi32($w[l][$i % 4], k);
            }
            for l in 0..$n {
                $cdgh[l] = _mm_sha256rnds2_epu32($cdgh[l], $abef[l], t[l]);
            }
            for l in 0..$n {
                $abef[l] =
                    _mm_sha256rnds2_epu32($abef[l], $cdgh[l], _mm_shuffle_epi32::<0x0e>(t[l]));
            }
        };
    }

    /// The SHA-256 compression function over `blocks[l]` for each `states[l]`, the `N`
    /// chains advanced in lockstep. The round structure is the single-chain one of Intel's
    /// paper; the state registers hold ABEF and CDGH as `sha256rnds2` wants them.
    ///
    /// With four lanes the working set is larger than the sixteen registers and some of it
    /// spills to the stack. Two ways to spill less both measured slower on the development
    /// machine (four lanes over cached data: ~3.8 GB/s as written): computing each block's
    /// whole message schedule before its rounds (~3.2 GB/s), and enabling AVX for its
    /// three-operand forms (~3.4 GB/s).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn compress_lanes<const N: usize>(
        states: &mut [[u32; 8]; N],
        blocks: [&[[u8; 64]]; N],
    ) {
        let mut abef = [_mm_setzero_si128(); N];
        let mut cdgh = [_mm_setzero_si128(); N];
        for (l, s) in states.iter().enumerate() {
            // Lanes are listed high to low: ABEF holds a in its top lane, f in its bottom.
            abef[l] = _mm_set_epi32(s[0] as i32, s[1] as i32, s[4] as i32, s[5] as i32);
            cdgh[l] = _mm_set_epi32(s[2] as i32, s[3] as i32, s[6] as i32, s[7] as i32);
        }
        // `j` indexes every lane's blocks, so there is no one slice to iterate instead.
        #[allow(clippy::needless_range_loop)]
        for j in 0..blocks[0].len() {
            let (abef_in, cdgh_in) = (abef, cdgh);
            let mut w = [[_mm_setzero_si128(); 4]; N];
            for l in 0..N {
                let (words, _) = blocks[l][j].as_chunks::<16>();
                for (slot, bytes) in w[l].iter_mut().zip(words) {
                    *slot = load(bytes);
                }
            }
            step!(N, abef, cdgh, w, 0, rounds);
            step!(N, abef, cdgh, w, 1, rounds);
            step!(N, abef, cdgh, w, 2, rounds);
            step!(N, abef, cdgh, w, 3, rounds);
            step!(N, abef, cdgh, w, 4, schedule);
            step!(N, abef, cdgh, w, 5, schedule);
            step!(N, abef, cdgh, w, 6, schedule);
            step!(N, abef, cdgh, w, 7, schedule);
            step!(N, abef, cdgh, w, 8, schedule);
            step!(N, abef, cdgh, w, 9, schedule);
            step!(N, abef, cdgh, w, 10, schedule);
            step!(N, abef, cdgh, w, 11, schedule);
            step!(N, abef, cdgh, w, 12, schedule);
            step!(N, abef, cdgh, w, 13, schedule);
            step!(N, abef, cdgh, w, 14, schedule);
            step!(N, abef, cdgh, w, 15, schedule);
            for l in 0..N {
                abef[l] = _mm_add_epi32(abef[l], abef_in[l]);
                cdgh[l] = _mm_add_epi32(cdgh[l], cdgh_in[l]);
            }
        }
        for (l, s) in states.iter_mut().enumerate() {
            *s = [
                _mm_extract_epi32::<3>(abef[l]) as u32,
                _mm_extract_epi32::<2>(abef[l]) as u32,
                _mm_extract_epi32::<3>(cdgh[l]) as u32,
                _mm_extract_epi32::<2>(cdgh[l]) as u32,
                _mm_extract_epi32::<1>(abef[l]) as u32,
                _mm_extract_epi32::<0>(abef[l]) as u32,
                _mm_extract_epi32::<1>(cdgh[l]) as u32,
                _mm_extract_epi32::<0>(cdgh[l]) as u32,
            ];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The oracle: the `hmac` and `sha2` crates over the concatenated message.
    fn reference(key: &[u8], message: &Message<'_>) -> [u8; TAG_BYTES] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap();
        mac.update(message.prefix);
        mac.update(message.body);
        mac.finalize().into_bytes().into()
    }

    /// Deterministic filler bytes, different for every `seed`.
    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Every key the tests run on this machine: the portable one always, SHA-NI when the CPU
    /// has it.
    fn keys(key: &[u8]) -> Vec<HmacKey> {
        let mut keys = vec![HmacKey::portable(key)];
        if sha_ni_detected() {
            keys.push(HmacKey::new(key));
        }
        keys
    }

    /// Checks every group size 1..=8 and every chain count against the oracle.
    fn check_groups(key: &[u8], prefixes: &[Vec<u8>], bodies: &[Vec<u8>]) {
        let messages: Vec<Message<'_>> = prefixes
            .iter()
            .zip(bodies)
            .map(|(prefix, body)| Message { prefix, body })
            .collect();
        let want: Vec<_> = messages.iter().map(|m| reference(key, m)).collect();
        for hmac in keys(key) {
            for group in 1..=messages.len() {
                for chains in 1..=MAX_CHAINS {
                    let mut got = vec![[0u8; TAG_BYTES]; group];
                    hmac.tags_with_chains(chains, &messages[..group], &mut got);
                    assert_eq!(
                        got,
                        want[..group],
                        "accelerated {}, group {group}, chains {chains}, prefix {}, body {}",
                        hmac.is_accelerated(),
                        messages[0].prefix.len(),
                        messages[0].body.len()
                    );
                }
            }
            let mut got = vec![[0u8; TAG_BYTES]; messages.len()];
            hmac.tags(&messages, &mut got);
            assert_eq!(got, want);
            assert_eq!(hmac.tag(messages[0].prefix, messages[0].body), want[0]);
        }
    }

    /// Lengths around every padding and block boundary: 55/56 decide whether the length fits
    /// the last block, 64 is a block, and 4096 + 23 completes the block a 41-byte RCRYPT
    /// prefix starts.
    const BODY_LENGTHS: &[usize] = &[
        0,
        1,
        22,
        23,
        24,
        55,
        56,
        63,
        64,
        65,
        119,
        120,
        4095,
        4096,
        4097,
        4096 + 22,
        4096 + 23,
        4096 + 24,
        4096 + 41,
        4096 + 64,
        1234,
        3001,
    ];

    const PREFIX_LENGTHS: &[usize] = &[0, 1, 41, 55, 56, 63, 64, 65, 105, 128];

    #[test]
    fn equal_shapes_match_the_hmac_crate() {
        let key = bytes(32, 1);
        for &prefix_len in PREFIX_LENGTHS {
            for &body_len in BODY_LENGTHS {
                let prefixes: Vec<_> = (0..8).map(|l| bytes(prefix_len, 100 + l)).collect();
                let bodies: Vec<_> = (0..8).map(|l| bytes(body_len, 200 + l)).collect();
                check_groups(&key, &prefixes, &bodies);
            }
        }
    }

    #[test]
    fn unequal_shapes_match_the_hmac_crate() {
        let key = bytes(32, 2);
        // Runs of equal shape between shape changes, and a change at every position.
        let body_lens = [4096, 4096, 4096, 100, 100, 0, 4096, 4096];
        let prefix_lens = [41, 41, 41, 41, 41, 41, 41, 40];
        let prefixes: Vec<_> = prefix_lens.iter().map(|&n| bytes(n, n as u64)).collect();
        let bodies: Vec<_> = (0..8)
            .map(|l| bytes(body_lens[l], 300 + l as u64))
            .collect();
        check_groups(&key, &prefixes, &bodies);
    }

    #[test]
    fn keys_of_every_length_match_the_hmac_crate() {
        for key_len in [0, 1, 31, 32, 63, 64, 65, 100, 200] {
            let key = bytes(key_len, 3 + key_len as u64);
            let prefixes: Vec<_> = (0..3).map(|l| bytes(41, 400 + l)).collect();
            let bodies: Vec<_> = (0..3).map(|l| bytes(200, 500 + l)).collect();
            check_groups(&key, &prefixes, &bodies);
        }
    }

    /// RFC 4231 test case 2, so the oracle itself is pinned to a published value.
    #[test]
    fn rfc_4231_case_2() {
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        for hmac in keys(b"Jefe") {
            let tag = hmac.tag(b"what do ya want ", b"for nothing?");
            let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, want, "accelerated {}", hmac.is_accelerated());
        }
    }

    #[test]
    fn portable_path_is_forced() {
        let hmac = HmacKey::portable(&[9; 32]);
        assert!(!hmac.is_accelerated());
        let message = Message {
            prefix: &[1; 41],
            body: &[2; 4096],
        };
        assert_eq!(
            hmac.tag(message.prefix, message.body),
            reference(&[9; 32], &message)
        );
    }

    #[test]
    fn sha_ni_path_is_taken_when_detected() {
        let hmac = HmacKey::new(&[9; 32]);
        assert_eq!(hmac.is_accelerated(), sha_ni_detected());
        if !sha_ni_detected() {
            eprintln!("this CPU has no SHA-NI: only the portable path was checked");
            return;
        }
        let message = Message {
            prefix: &[1; 41],
            body: &[2; 4096],
        };
        let mut tags = [[0u8; TAG_BYTES]; 8];
        hmac.tags(&[message; 8], &mut tags);
        assert_eq!(tags, [reference(&[9; 32], &message); 8]);
    }

    /// A key, the prefixes and bodies of a group, and a chain count.
    type Group = (Vec<u8>, Vec<Vec<u8>>, Vec<Vec<u8>>, usize);

    fn group() -> impl Strategy<Value = Group> {
        (
            prop::collection::vec(any::<u8>(), 0..=130),
            1usize..=8,
            0usize..=100,
            0usize..=700,
            any::<bool>(),
            1usize..=MAX_CHAINS,
        )
            .prop_flat_map(|(key, count, prefix_len, body_len, equal, chains)| {
                let body_lens = if equal {
                    Just(vec![body_len; count]).boxed()
                } else {
                    prop::collection::vec(0usize..=700, count).boxed()
                };
                (
                    Just(key),
                    prop::collection::vec(prop::collection::vec(any::<u8>(), prefix_len), count),
                    body_lens,
                    Just(chains),
                )
            })
            .prop_flat_map(|(key, prefixes, body_lens, chains)| {
                let bodies: Vec<_> = body_lens
                    .into_iter()
                    .map(|len| prop::collection::vec(any::<u8>(), len))
                    .collect();
                (Just(key), Just(prefixes), bodies, Just(chains))
            })
    }

    proptest! {
        #[test]
        fn random_groups_match_the_hmac_crate((key, prefixes, bodies, chains) in group()) {
            let messages: Vec<Message<'_>> = prefixes
                .iter()
                .zip(&bodies)
                .map(|(prefix, body)| Message { prefix, body })
                .collect();
            let want: Vec<_> = messages.iter().map(|m| reference(&key, m)).collect();
            for hmac in keys(&key) {
                let mut got = vec![[0u8; TAG_BYTES]; messages.len()];
                hmac.tags_with_chains(chains, &messages, &mut got);
                prop_assert_eq!(&got, &want);
            }
        }
    }
}
