#!/usr/bin/env bash
# Installs what the test bed needs on a fresh Debian machine (as root, with rustup's
# toolchain), and nothing that is already there: what cargo needs to build (a C and C++
# compiler with the C library's headers, pkg-config), Docker's engine (the tests start
# private ones), busybox-static (the stand-in rancher/agent image is built from it),
# python3-venv and moto in a venv (a real SQS), and the real tools the packaging tests run:
# systemd-analyze, cloud-init, rpm, debootstrap, curl, python-hcl2, parliament,
# cargo-deb, the AWS CLI; promtool (Debian's prometheus), which reads
# the metrics textfile; systemd-nspawn to boot a real systemd.
#
#   scripts/testbed-setup.sh            everything
#   scripts/testbed-setup.sh demo       only what scripts/demo.sh and bench.sh need: the
#                                       build tools, the engine, busybox, moto
#   scripts/testbed-setup.sh base       demo's, and the packaging tests' packages and venvs
#   scripts/testbed-setup.sh rootfs     the scratch root (debootstrap: waits on the network,
#                                       so scripts/test.sh runs it beside the build)
#   scripts/testbed-setup.sh tools      cargo-deb (a large build, which
#                                       scripts/test.sh runs after the main one, not beside)
#   scripts/testbed-setup.sh packaging  rootfs and tools
set -euo pipefail
cd "$(dirname "$0")/.."

part=${1:-all}
case $part in all | demo | base | rootfs | tools | packaging) ;; *) echo "usage: $0 [demo|base|rootfs|tools|packaging]" >&2; exit 2 ;; esac

if [ "$part" = all ] || [ "$part" = base ] || [ "$part" = demo ]; then

need=()
# The build: the C parts of the TLS and crypto crates (ring, aws-lc-sys) and their probes.
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v c++ >/dev/null 2>&1 || need+=(g++)
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v make >/dev/null 2>&1 || need+=(make)
# The bed: the engine, the stand-in agent image, moto's venv.
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v tar >/dev/null 2>&1 || need+=(tar)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# Debian's python3 has no venv module (ensurepip) without python3-venv.
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ "$part" != demo ]; then
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# A real systemd booted in a container over the scratch root (tests/e2e/systemd.rs).
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v cloud-init >/dev/null 2>&1 || need+=(cloud-init)
# rpm: rpm and rpmbuild (the .rpm is built from packaging/rpm/drover.spec).
command -v rpmbuild >/dev/null 2>&1 || need+=(rpm)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v man >/dev/null 2>&1 || need+=(man-db)
command -v strip >/dev/null 2>&1 || need+=(binutils)
# promtool: Prometheus's own text parser reads the metrics textfile in the tests.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
fi
# DROVER_SETUP_DRY_RUN=1: say what would be installed, and stop there.
if [ -n "${DROVER_SETUP_DRY_RUN:-}" ]; then
    echo "testbed-setup: would install: ${need[*]}"
    exit 0
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "testbed-setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

venv=.testbed/venv
if [ ! -x "$venv/bin/moto_server" ]; then
    echo "testbed-setup: creating $venv with moto"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5,<6'
fi
fi

if [ "$part" = all ] || [ "$part" = base ]; then
if ! "$venv/bin/python" -c 'import hcl2' 2>/dev/null; then
    echo "testbed-setup: adding python-hcl2 to $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'python-hcl2>=7,<9'
fi
# The IAM policy linter the AWS wiring tests run on every policy, filled.
if [ ! -x "$venv/bin/parliament" ]; then
    echo "testbed-setup: adding parliament to $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'parliament>=1.6,<2'
fi

# The AWS CLI that packaging/fetch-secret calls, in a venv of its own: v1 pins botocore,
# which must not fight moto's.
awscli=.testbed/awscli
if [ ! -x "$awscli/bin/aws" ]; then
    echo "testbed-setup: creating $awscli with the AWS CLI"
    python3 -m venv "$awscli"
    "$awscli/bin/pip" install -q --disable-pip-version-check 'awscli>=1.32,<2'
fi

fi

if [ "$part" = all ] || [ "$part" = packaging ] || [ "$part" = rootfs ]; then
    # A scratch Debian root (minbase plus systemd and ca-certificates, which the .deb
    # depends on, and rpm, so that the booted root can upgrade the .rpm under its own
    # systemd) that the package tests install the .deb into (dpkg --root, rpm --root),
    # run systemd-analyze verify against, and boot (systemd-nspawn); copied per test.
    rootfs=.testbed/rootfs
    if [ ! -x "$rootfs/usr/bin/systemd-analyze" ] || [ ! -e "$rootfs/etc/ssl/certs/ca-certificates.crt" ] \
        || [ ! -x "$rootfs/usr/bin/rpm" ]; then
        echo "testbed-setup: debootstrapping a scratch Debian root into $rootfs"
        rm -rf "$rootfs" "$rootfs.partial"
        suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
        if ! debootstrap --variant=minbase --include=systemd,ca-certificates,rpm "$suite" "$rootfs.partial" \
            http://deb.debian.org/debian >.testbed/debootstrap.log 2>&1; then
            echo "testbed-setup: debootstrap failed:" >&2
            tail -20 .testbed/debootstrap.log >&2
            exit 1
        fi
        mv "$rootfs.partial" "$rootfs"
    fi
fi

if [ "$part" = all ] || [ "$part" = packaging ] || [ "$part" = tools ]; then
    # The .deb's tool, pinned, in the repo's own cargo root so that nothing global changes
    # (the .rpm is rpmbuild's, from Debian's rpm). Built unoptimised but for the digest and
    # checksum crates a package build spends its time in: a third of the CPU time of a
    # release build, and as fast on the test packages.
    tools=.testbed/cargo
    if [ ! -x "$tools/bin/cargo-deb" ]; then
        echo "testbed-setup: building cargo-deb into $tools"
        fast=()
        for crate in keccak sha3 sha2 sha1 md-5 miniz_oxide crc32fast; do
            fast+=(--config "profile.dev.package.$crate.opt-level=3")
        done
        cargo install -q --locked --debug --root "$tools" --config profile.dev.debug=0 \
            "${fast[@]}" cargo-deb@3.8.0
    fi
fi
