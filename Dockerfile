# syntax=docker/dockerfile:1
# The hotplug-watchdog node agent image: one static-ish binary, libudev, nothing else.
#
#   docker build -t ghcr.io/hotplug-watchdog/hotplug-watchdog:v0.1.0 .
#
# tests/deploy_manifests.rs checks that every shared library the binary links (ldd) is
# either part of distroless/cc or copied into the runtime stage below; the build stage
# checks the same thing on the binary it builds, and fails otherwise.

# --- build --------------------------------------------------------------------------
# The official Rust image, pinned to a release (Cargo.toml's rust-version is 1.89, the
# toolchain the tests run on is 1.95.0), on Debian 12 "bookworm": the same Debian release
# as gcr.io/distroless/cc-debian12 below, so the binary is linked against the glibc
# (2.36) and the libudev (systemd 252) the runtime image has.
FROM docker.io/library/rust:1.95.0-bookworm AS build

# The udev crate links libudev (libudev-dev: headers and the .so link; pkg-config finds it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libudev-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what `cargo build` reads: the manifest, the lock file (--locked: exactly the
# versions the tests ran with) and the sources. Tests, docs and tools stay out, so that
# editing them does not rebuild the image.
COPY Cargo.toml Cargo.lock ./
COPY src ./src

# Cache mounts (BuildKit) keep the crates.io downloads and the compiled dependencies
# between builds; the binary is copied out of the cached target dir in the same step.
# Then: refuse to go on if the binary links a shared library the runtime stage does not
# provide (distroless/cc has glibc and libgcc; this stage adds libudev only), and stage
# libudev under an architecture-independent path.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    cargo build --release --locked --bin hotplug-watchdog; \
    mkdir -p /out; \
    cp target/release/hotplug-watchdog /out/hotplug-watchdog; \
    ldd /out/hotplug-watchdog; \
    extra="$(ldd /out/hotplug-watchdog | awk '{print $1}' \
      | grep -Ev '^(linux-vdso\.so\.1|linux-gate\.so\.1|/lib[^ ]*/ld-linux[^ ]*|ld-linux[^ ]*|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libudev\.so\.1)$' || true)"; \
    if [ -n "$extra" ]; then echo "links libraries the runtime image lacks: $extra" >&2; exit 1; fi; \
    cp -L "$(ldd /out/hotplug-watchdog | awk '$1 == "libudev.so.1" {print $3}')" /out/libudev.so.1

# --- runtime ------------------------------------------------------------------------
# distroless "cc": glibc, libgcc_s, CA certificates, tzdata, /etc/passwd; no shell, no
# package manager. Not the :nonroot variant: the image's default user is root, for
# `scan`/`run` on a host through a container runtime (the kubelet pods directory and
# /dev/kmsg are root's). The DaemonSet does not rely on it: it sets its own uid (65530,
# group 0) and drops every capability (deploy/daemonset.yaml). For a release, pin this by
# digest (gcr.io/distroless/cc-debian12@sha256:...).
FROM gcr.io/distroless/cc-debian12

# The only shared library beyond distroless/cc. /usr/lib is in the dynamic linker's
# built-in search path on every architecture, so no ld.so.cache entry or
# LD_LIBRARY_PATH is needed.
COPY --from=build /out/libudev.so.1 /usr/lib/libudev.so.1
COPY --from=build /out/hotplug-watchdog /hotplug-watchdog

# The agent serves /metrics, /healthz, /readyz and /scan here (--listen 0.0.0.0:9746).
EXPOSE 9746
ENTRYPOINT ["/hotplug-watchdog"]
CMD ["run"]
