#!/bin/sh
# Bakes drover into a machine image: run as root in the build VM (Packer's shell
# provisioner, or by hand before snapshotting) with DROVER_DEB naming the package.
#
#   DROVER_DEB=/tmp/drover_0.1.0-1_amd64.deb sh install.sh
#
# Installs Docker, the AWS CLI and curl (for /usr/libexec/drover/fetch-secret) unless
# DROVER_SKIP_DEPS=1, then the package: drover.service ends up enabled for the instances'
# first boot and not running in the build VM. Finally it removes everything of the build VM
# that must not reach the image: drover's state, secrets, cloud-init's record of this boot.
set -eu

deb=${DROVER_DEB:?set DROVER_DEB to the drover .deb}
[ -f "$deb" ] || { echo "install.sh: $deb not found" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

if [ "${DROVER_SKIP_DEPS:-0}" != 1 ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends docker.io awscli curl ca-certificates
fi

dpkg --install "$deb"

# Enabled (the package does it) and not running: a running drover here would register the
# build VM in Rancher.
if [ ! -L /etc/systemd/system/multi-user.target.wants/drover.service ]; then
    echo "install.sh: drover.service is not enabled" >&2
    exit 1
fi
if [ -d /run/systemd/system ] && systemctl is-active --quiet drover.service; then
    echo "install.sh: drover.service is running in the build VM; stop it and check Rancher" >&2
    exit 1
fi
if [ -d /run/systemd/system ] && [ "${DROVER_SKIP_DEPS:-0}" != 1 ]; then
    systemctl enable docker.service
fi

# Nothing of the build VM in the image: each instance registers itself, fetches its own
# secrets and runs its own userdata on first boot.
rm -rf /var/lib/drover
rm -f /etc/drover/*.secret /etc/drover/*.key
if command -v cloud-init >/dev/null 2>&1; then
    cloud-init clean --logs
fi
echo "install.sh: drover $(drover --version | cut -d' ' -f2) installed, enabled for first boot"
