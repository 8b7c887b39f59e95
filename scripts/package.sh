#!/usr/bin/env bash
# Builds the Debian package target/debian/volley_<version>_<arch>.deb: the volley, volley-bench and
# volley-tune binaries, libvolley_ffi.so with volley.h, the provider profiles, a commented
# /etc/volley/volley.toml, the systemd unit, the logrotate file for the accounting log, and the
# maintainer scripts that make the `volley` user and its spool and log directories
# (packaging/debian/). Files are staged in target/debian/volley_<version>_<arch>/ and packed with
# `dpkg-deb --build --root-owner-group`: dpkg-deb comes with dpkg on every Debian, where cargo-deb
# would be another tool to install from crates.io on every build machine.
#
#   bash scripts/package.sh             # release build, binaries as built (line tables kept), xz
#   bash scripts/package.sh --debug     # the debug build (CI: no release build), debug info
#                                       # stripped, gzip -1: the same files, made in seconds, in
#                                       # target/debian/debug/ so a release package is never replaced
#   bash scripts/package.sh --debug --no-build   # package what target/debug holds (the tests)
# DEB_MAINTAINER overrides the Maintainer field. Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build_first=1
for arg in "$@"; do
  case "$arg" in
    --debug) profile=debug ;;
    --no-build) build_first=0 ;;
    *) echo "usage: $0 [--debug] [--no-build]" >&2; exit 2 ;;
  esac
done

arch="$(dpkg --print-architecture)"
case "$arch" in
  amd64) multiarch=x86_64-linux-gnu ;;
  arm64) multiarch=aarch64-linux-gnu ;;
  *) echo "package.sh: no multiarch path known for $arch" >&2; exit 2 ;;
esac

build=(cargo build -p volley-engine -p volley-bench -p volley-tune -p libvolley)
if [ "$profile" = release ]; then
  build+=(--release)
fi
if [ "$build_first" = 1 ]; then
  "${build[@]}" >&2
fi
bin="target/$profile"
for f in volley volley-bench volley-tune libvolley_ffi.so; do
  [ -f "$bin/$f" ] || { echo "package.sh: $bin/$f is missing (build first)" >&2; exit 2; }
done
version="$("$bin/volley" --version | awk '{print $2}')"
[ -n "$version" ] || { echo "package.sh: no version from $bin/volley --version" >&2; exit 2; }

name="volley_${version}_${arch}"
out=target/debian
if [ "$profile" = debug ]; then
  out=target/debian/debug
fi
stage="$out/$name"
rm -rf "$stage"
install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/$multiarch" \
  "$stage/usr/include" "$stage/usr/share/volley/profiles" "$stage/usr/share/doc/volley" \
  "$stage/usr/lib/systemd/system" "$stage/etc/volley" "$stage/etc/logrotate.d"

for b in volley volley-bench volley-tune; do
  install -m 0755 "$bin/$b" "$stage/usr/bin/$b"
done
install -m 0644 "$bin/libvolley_ffi.so" "$stage/usr/lib/$multiarch/libvolley_ffi.so"
if [ "$profile" = debug ]; then
  strip --strip-debug "$stage"/usr/bin/* "$stage/usr/lib/$multiarch/libvolley_ffi.so"
fi
install -m 0644 ffi/include/volley.h "$stage/usr/include/volley.h"
install -m 0644 tuning/profiles/*.toml "$stage/usr/share/volley/profiles/"
install -m 0644 packaging/debian/volley.service "$stage/usr/lib/systemd/system/volley.service"
install -m 0644 packaging/debian/logrotate "$stage/etc/logrotate.d/volley"
install -m 0644 packaging/debian/copyright "$stage/usr/share/doc/volley/copyright"
install -m 0644 docs/install.md docs/configuration.md docs/api.md docs/accounting.md \
  "$stage/usr/share/doc/volley/"

# The configuration: the embedded default, with the package's spool and accounting log paths.
conf="$stage/etc/volley/volley.toml"
{
  cat packaging/debian/volley.toml.head
  "$bin/volley" default-config \
    | sed -e 's|^spool_dir = "./volley-spool" *|spool_dir = "/var/spool/volley"   |' \
          -e 's|^accounting_log = "" *|accounting_log = "/var/log/volley/accounting.log"   |'
} > "$conf"
for want in 'spool_dir = "/var/spool/volley"' 'accounting_log = "/var/log/volley/accounting.log"'; do
  grep -qF "$want" "$conf" || { echo "package.sh: the default configuration changed: no $want" >&2; exit 2; }
done
chmod 0640 "$conf"
"$bin/volley" check --config "$conf" >&2

for script in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$script" "$stage/DEBIAN/$script"
done
printf '/etc/volley/volley.toml\n/etc/logrotate.d/volley\n' > "$stage/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
  -e "s/@MAINTAINER@/${DEB_MAINTAINER:-Volley maintainers <root@localhost>}/" \
  packaging/debian/control.in > "$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
  | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

if [ "$profile" = release ]; then
  compress=(-Zxz)
else
  compress=(-Zgzip -z1)
fi
deb="$out/$name.deb"
dpkg-deb --root-owner-group "${compress[@]}" --build "$stage" "$deb" >&2
echo "$deb"
