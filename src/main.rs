//! The `clustersync` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    clustersync::cli::main()
}
