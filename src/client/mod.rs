//! The client's side: the connection to `ringcryptd` (`conn`) and the `ringcrypt` command
//! line (`cli`). The daemon never imports from here.

pub mod cli;
pub mod conn;

pub use conn::*;
