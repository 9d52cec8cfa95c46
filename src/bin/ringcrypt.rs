//! The `ringcrypt` client. Everything lives in `ringcrypt::cli`; this only runs it.

fn main() -> std::process::ExitCode {
    ringcrypt::cli::main()
}
