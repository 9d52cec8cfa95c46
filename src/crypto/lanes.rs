//! Multi-lane CBC: up to [`LANES`] independent AES-256-CBC chains advanced in lockstep, and
//! CBC decryption of one chain (which is parallel by nature).
//!
//! CBC encryption of one chain is a serial dependency: block j needs the ciphertext of block
//! j-1, so a single chain runs at the latency of `aesenc`, not its throughput. RCRYPT gives
//! every chunk its own IV, so the chunks of a batch are independent chains; here block j of
//! every lane is XORed with that lane's previous ciphertext and the eight blocks go through
//! one `encrypt_blocks` call, which the AES-NI backend pipelines. Owns no keys and does no IO.

use aes::Aes256;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncrypt, InnerIvInit, generic_array::GenericArray};

use crate::limits::{BLOCK_BYTES, LANES};

/// One AES block.
pub type Block = aes::Block;

/// Encrypts `ivs.len()` (1..=LANES) CBC chains in place, in lockstep.
///
/// Chain `l` is `buf[l * stride .. l * stride + len]` with IV `ivs[l]`; `len` is a multiple of
/// the block size and the same for every chain (the caller pads a final chunk first).
pub fn encrypt_lanes(cipher: &Aes256, ivs: &[Block], buf: &mut [u8], stride: usize, len: usize) {
    let lanes = ivs.len();
    assert!((1..=LANES).contains(&lanes), "lane count {lanes}");
    assert_eq!(
        len % BLOCK_BYTES,
        0,
        "chain length {len} is not whole blocks"
    );
    assert!(
        len <= stride || lanes == 1,
        "chains overlap: len {len} > stride {stride}"
    );
    assert!(buf.len() >= (lanes - 1) * stride + len, "buffer too short");

    let mut state = [Block::default(); LANES];
    state[..lanes].copy_from_slice(ivs);
    for offset in (0..len).step_by(BLOCK_BYTES) {
        for (lane, block) in state[..lanes].iter_mut().enumerate() {
            let at = lane * stride + offset;
            xor_into(block, &buf[at..at + BLOCK_BYTES]);
        }
        cipher.encrypt_blocks(&mut state[..lanes]);
        for (lane, block) in state[..lanes].iter().enumerate() {
            let at = lane * stride + offset;
            buf[at..at + BLOCK_BYTES].copy_from_slice(block);
        }
    }
}

/// Decrypts one CBC chain from `src` into `dst` (the same length, whole blocks).
pub fn decrypt_chain_to(cipher: &Aes256, iv: &Block, src: &[u8], dst: &mut [u8]) {
    assert_eq!(
        src.len() % BLOCK_BYTES,
        0,
        "chain length is not whole blocks"
    );
    let decryptor = cbc::Decryptor::<Aes256>::inner_iv_init(cipher.clone(), iv);
    let decrypted = decryptor
        .decrypt_padded_b2b_mut::<NoPadding>(src, dst)
        .map(|plain| plain.len());
    assert_eq!(
        decrypted.ok(),
        Some(src.len()),
        "whole blocks always decrypt"
    );
}

/// Decrypts one CBC chain in place (`data` is whole blocks). Decryption has no serial
/// dependency, so the `cbc` crate's decryptor already feeds the AES-NI pipeline eight blocks
/// at a time.
pub fn decrypt_chain(cipher: &Aes256, iv: &Block, data: &mut [u8]) {
    assert_eq!(
        data.len() % BLOCK_BYTES,
        0,
        "chain length is not whole blocks"
    );
    let decryptor = cbc::Decryptor::<Aes256>::inner_iv_init(cipher.clone(), iv);
    // `NoPadding` over whole blocks cannot fail: padding, when there is any, is checked by
    // the caller after the tag, never by the cipher (no padding oracle).
    let decrypted = decryptor
        .decrypt_padded_mut::<NoPadding>(data)
        .map(|plain| plain.len());
    assert_eq!(
        decrypted.ok(),
        Some(data.len()),
        "whole blocks always decrypt"
    );
}

/// Encrypts the counter blocks `u64(i) || u64(0)` for `first..first + out.len()` (the
/// per-chunk IVs of RCRYPT v1) in one parallel call.
pub fn chunk_ivs(cipher: &Aes256, first: u64, out: &mut [Block]) {
    for (offset, block) in out.iter_mut().enumerate() {
        let index = first + offset as u64;
        let mut bytes = [0u8; BLOCK_BYTES];
        bytes[..8].copy_from_slice(&index.to_be_bytes());
        *block = GenericArray::from(bytes);
    }
    cipher.encrypt_blocks(out);
}

fn xor_into(block: &mut Block, data: &[u8]) {
    for (a, b) in block.iter_mut().zip(data) {
        *a ^= b;
    }
}
