//! The `clustersync` binary: everything lives in the library; see `cli`.

/// mimalloc rather than the C library's allocator: the daemon makes and drops many small
/// values (names, member sets, items), and with it a bulk of 5,000 users costs each node
/// noticeably less CPU (bench/accounts.py; figures in bench/README.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    clustersync::cli::main()
}
