//! The `nixgate` binary: everything lives in the library; see `nixgate::cli`.

fn main() -> std::process::ExitCode {
    nixgate::cli::main()
}
