#!/usr/bin/env bash
# Builds the release packages: target/debian/drover_<version>-1_<arch>.deb and
# target/rpm/drover-<version>-1.<arch>.rpm.
#
#   packaging/build.sh            both
#   packaging/build.sh deb        only the .deb (or: rpm)
#
# Needs cargo-deb (scripts/testbed-setup.sh builds a pinned version into .testbed/cargo/bin;
# `cargo install cargo-deb` works too), rpmbuild (Debian's package rpm, the RPM
# distributions' rpm-build) and `strip`. The binary links against glibc: build on the oldest distribution you deploy to
# (Debian 12 gives glibc 2.34+: Amazon Linux 2023, Ubuntu 22.04+, RHEL 9+).
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
case $what in all | deb | rpm) ;; *) echo "usage: $0 [deb|rpm]" >&2; exit 2 ;; esac

export PATH="$PWD/.testbed/cargo/bin:$PATH"
# The packages' versions, from Cargo's workspace version (CHANGELOG.md, Versions); an
# unusable version stops here, before the build. cargo-deb makes the same .deb version by
# itself (0.2.0-rc.1 becomes 0.2.0~rc.1-1; tests/e2e/versions.rs checks they agree);
# packaging/rpm/build sets the rpm's from packaging/package-version (no '-' in an rpm Version).
packaging/package-version deb >/dev/null
packaging/package-version rpm >/dev/null
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

cargo build --release --locked -p drover
# The release profile strips already; strip again in case a profile override kept symbols.
strip -s "$target/release/drover"
# Man pages and completions from the same clap definitions as the binary.
cargo run --release --locked -q -p drover-assets -- "$target/release/dist"

if [ "$what" != rpm ]; then
    cargo deb -p drover --no-build --locked
fi
if [ "$what" != deb ]; then
    packaging/rpm/build "$target" "$target/rpm" >/dev/null
fi
ls -l "$target"/debian/*.deb "$target"/rpm/*.rpm 2>/dev/null || true
