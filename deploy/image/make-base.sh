#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3.11 from the Debian mirror alone and import it into
# podman, for machines that reach no container registry. Usage (as root):
#   deploy/image/make-base.sh [IMAGE_NAME] [MIRROR]
# then: podman build --build-arg BASE_IMAGE=IMAGE_NAME ...
set -euo pipefail

image="${1:-localhost/slimformer-base:bookworm}"
mirror="${2:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}"
mirror="${mirror:-http://deb.debian.org/debian}"

if podman image exists "$image"; then
    echo "$image exists; nothing to do (podman rmi $image to rebuild it)"
    exit 0
fi
rootfs="$(mktemp -d /var/tmp/slimformer-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
# minbase: essential packages and apt only. python3 is 3.11 on bookworm; python3-venv brings ensurepip,
# ca-certificates lets pip inside the build reach PyPI over TLS.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror"
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$image"
echo "imported $image"
