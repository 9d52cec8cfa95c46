//! The `ringcrypt` client. Everything lives in `ringcrypt::cli`; this only runs it.
//! `--generate-assets DIR` alone writes the manual pages and completions a package installs
//! (`ringcrypt::assets`).

fn main() -> std::process::ExitCode {
    if let Some(dir) = ringcrypt::assets::requested() {
        return ringcrypt::assets::generate(ringcrypt::cli::command(), &dir);
    }
    ringcrypt::cli::main()
}
