//! The crypto: pure functions over byte slices and the key ring, no IO of their own. These
//! rooms use nothing outside themselves but `error` and `limits`.

pub mod format;
pub mod keys;
pub mod lanes;
pub mod openssl;
pub mod sha_mb;
