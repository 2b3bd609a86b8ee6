//! The `clustersync` binary: everything lives in the library; see `cli`.

/// mimalloc rather than the C library's allocator: the daemon makes and drops many small
/// values (names, member sets, items), and with it a bulk of 5,000 users costs each node
/// noticeably less CPU and memory (bench/accounts.py; figures in bench/README.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process: with mimalloc they made the initial sync
    // of 266 MiB a quarter slower (the buffers of file data fault in 2 MiB pages that are
    // zeroed and given back over and over); databases advise the same. Programs started by
    // `[actions]` inherit it (`PR_SET_THP_DISABLE`), which changes nothing but their speed.
    let _ = nix::sys::prctl::set_thp_disable(true);
    clustersync::cli::main()
}
