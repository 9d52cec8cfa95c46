#!/bin/sh
# Builds the Debian package: target/debian/ringcrypt_VERSION-1_ARCH.deb.
#
#   contrib/build-deb.sh [cargo-deb options, e.g. --fast or -o DIR]
#
# The release binaries first, then their manual pages and shell completions (each binary
# writes its own from its clap definitions, with the hidden --generate-assets), then
# `cargo deb --no-build`, which packs what [package.metadata.deb] in Cargo.toml lists.
# Needs cargo-deb (`cargo install cargo-deb --locked`).
set -eu
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

cargo build --release --locked
rm -rf "$target/release/assets"
"$target/release/ringcryptd" --generate-assets "$target/release/assets" >/dev/null
"$target/release/ringcrypt" --generate-assets "$target/release/assets" >/dev/null
cargo deb --no-build --locked "$@"
