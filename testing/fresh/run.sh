#!/usr/bin/env bash
# Runs a README command on a fresh Debian 12 system: a debootstrap chroot
# that has never seen the project's set-up, with only what the README
# assumes (a Rust toolchain by rustup, root) and what any Debian install has
# (gcc is NOT assumed: the scripts install what they need).
#
#   testing/fresh/run.sh ROOT 'scripts/demo.sh'
#   testing/fresh/run.sh ROOT 'scripts/test.sh'
#
# ROOT is created with `debootstrap --variant=minbase bookworm` (plus
# ca-certificates, as every non-minimal install has) when missing; the
# repository's committed HEAD is cloned into ROOT/root/pmem. The host's rustup
# toolchains are bind-mounted (the README's "rustup aside"); cargo's registry
# starts empty inside. Run as root. Nothing here is part of CI: it is the
# check to run whenever the set-up changes (see docs/testing.md).
set -euo pipefail
root=${1:?usage: run.sh ROOT COMMAND}
command=${2:?usage: run.sh ROOT COMMAND}
repo=$(cd "$(dirname "$0")/../.." && pwd)

if [[ ! -x "$root/usr/bin/apt-get" ]]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >&2
    debootstrap --variant=minbase --include=ca-certificates bookworm "$root" >&2
    # The same archive sections as the host (updates and security carry the
    # current kernels).
    rm -f "$root/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/" 2>/dev/null \
        || cp /etc/apt/sources.list "$root/etc/apt/sources.list"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
# debootstrap writes no /etc/hosts; every installed Debian has one (localhost).
[[ -s "$root/etc/hosts" ]] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# The workplace's network may pass through a proxy with a CA of its own:
# the chroot trusts what the host trusts (a fact of the network, not of the
# project's set-up).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
fi
mkdir -p "$root/root/.rustup" "$root/root/.cargo/bin"
cp -a "$HOME/.cargo/bin/." "$root/root/.cargo/bin/"
rm -rf "$root/root/pmem"
git clone -q "$repo" "$root/root/pmem"

mounts=()
bind() { mkdir -p "$root$2"; mount --bind "$1" "$root$2"; mounts=("$root$2" "${mounts[@]}"); }
cleanup() { for m in "${mounts[@]}"; do umount -l "$m" || true; done; }
trap cleanup EXIT
bind /proc /proc
bind /sys /sys
bind /dev /dev
bind /dev/pts /dev/pts
bind "$HOME/.rustup" /root/.rustup
chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb CI="${CI:-}" \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    CURL_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd /root/pmem && $command"
