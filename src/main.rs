//! The `smtptap` binary: everything lives in the library; see `smtptap::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    smtptap::cli::main()
}
