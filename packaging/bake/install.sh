#!/bin/sh
# Bakes drover into a machine image: run as root in the build VM (Packer's shell
# provisioner, or by hand before snapshotting) with DROVER_DEB naming the package.
#
#   DROVER_DEB=/tmp/drover_0.1.0-1_amd64.deb DROVER_VERSION=0.1.0 \
#   DROVER_AGENT_IMAGE=rancher/agent:v1.2.11@sha256:... sh install.sh
#
# Installs Docker, the AWS CLI and curl (for /usr/libexec/drover/fetch-secret) unless
# DROVER_SKIP_DEPS=1, then the package: drover.service ends up enabled for the instances'
# first boot and not running in the build VM. With DROVER_VERSION, a package of another
# version is refused (the AMI is named and tagged with that version). With
# DROVER_AGENT_IMAGE, that rancher/agent image is pulled into the image's Docker, so that
# the first boot registers without waiting on a registry; pin it by digest and give
# agent.image the same reference. Finally it removes everything of the build VM that must
# not reach the image: drover's state, secrets, cloud-init's record of this boot.
set -eu

deb=${DROVER_DEB:?set DROVER_DEB to the drover .deb}
[ -f "$deb" ] || { echo "install.sh: $deb not found" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

if [ "${DROVER_SKIP_DEPS:-0}" != 1 ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends docker.io awscli curl ca-certificates
fi

dpkg --install "$deb"

installed=$(drover --version | cut -d' ' -f2)
if [ -n "${DROVER_VERSION:-}" ] && [ "$installed" != "$DROVER_VERSION" ]; then
    echo "install.sh: $deb is drover $installed, not $DROVER_VERSION (the version the AMI is tagged with)" >&2
    exit 1
fi

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

# The agent image in the image: the first boot starts the agent without a pull (no wait on
# a registry, no rate limit, the same bytes on every instance).
if [ -n "${DROVER_AGENT_IMAGE:-}" ]; then
    if [ -d /run/systemd/system ]; then
        systemctl start docker.service
    fi
    docker pull "$DROVER_AGENT_IMAGE"
    docker image inspect --format '{{join .RepoDigests " "}}' "$DROVER_AGENT_IMAGE"
fi

# Nothing of the build VM in the image: each instance registers itself, fetches its own
# secrets and runs its own userdata on first boot.
rm -rf /var/lib/drover
rm -f /etc/drover/*.secret /etc/drover/*.key
if command -v cloud-init >/dev/null 2>&1; then
    cloud-init clean --logs
fi
echo "install.sh: drover $installed installed, enabled for first boot${DROVER_AGENT_IMAGE:+, $DROVER_AGENT_IMAGE pulled}"
