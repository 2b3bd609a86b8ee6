#!/usr/bin/env bash
# Build the Debian package: the release binary, its man page (dist/clustersync.1, printed with
# the release filled in by `clustersync man`) and shell completions (generated from the clap
# definitions) into target/dist/, then `cargo deb` with the metadata in Cargo.toml
# ([package.metadata.deb]: also README, CHANGELOG and docs/ into /usr/share/doc/clustersync).
# Installs cargo-deb first if it is missing. CLUSTERSYNC_COMMIT names the commit in
# `clustersync --version` when the tree is not a git checkout.
#
#   scripts/package-deb.sh [extra cargo-deb arguments]
#
# The package (and clustersync-dbgsym_*.ddeb) land in $CARGO_TARGET_DIR/debian/ (default
# target/debian/); check it with
#   dpkg -c target/debian/clustersync_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "== installing cargo-deb (once; takes a few minutes)"
    cargo install cargo-deb --locked
fi

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
echo "== building the release binary"
cargo build --release --locked
bin="$target_dir/release/clustersync"

# Generated assets always go to ./target/dist: cargo-deb maps only "target/release/" to the
# real target dir, other asset paths are taken relative to the project.
dist=target/dist
rm -rf "$dist"
mkdir -p "$dist/completions"
echo "== man page and completions into $dist"
"$bin" man > "$dist/clustersync.1"
"$bin" completions bash > "$dist/completions/clustersync.bash"
"$bin" completions zsh > "$dist/completions/_clustersync"
"$bin" completions fish > "$dist/completions/clustersync.fish"

# --dbgsym: the binary in the package is stripped; its debug info (line tables, for
# backtraces) goes into a separate clustersync-dbgsym .ddeb beside it.
echo "== cargo deb"
cargo deb --no-build --locked --dbgsym "$@"
