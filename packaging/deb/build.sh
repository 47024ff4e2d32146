#!/bin/sh
# Builds detingest_<version>_<arch>.deb with dpkg-deb from binaries already built:
#   packaging/deb/build.sh TARGET_DIR OUT_DIR     (TARGET_DIR: target/release or target/debug)
# DEB_COMPRESS=gzip makes it faster (the tests); xz, Debian's usual, by default.
# What goes where is in docs/PACKAGING.md.
set -eu
target=$(realpath "$1")
out=$(realpath "$2")
here=$(dirname "$(realpath "$0")")
top=$(realpath "$here/../..")
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$top/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
pkg="$root/detingest"
libdir="$pkg/usr/lib/$multiarch"
doc="$pkg/usr/share/doc/detingest"

install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$libdir/pkgconfig" "$pkg/usr/include" \
  "$pkg/lib/systemd/system" "$pkg/etc/detingest" "$doc/examples"
install -m 755 "$target/detingestd" "$pkg/usr/bin/"
install -m 644 "$target/libdetingest.so" "$libdir/libdetingest.so.$version"
ln -s "libdetingest.so.$version" "$libdir/libdetingest.so.${version%%.*}"
ln -s "libdetingest.so.$version" "$libdir/libdetingest.so"
# Debian ships binaries stripped (debug builds too: the package's size, not the symbols).
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
  "$pkg/usr/bin/detingestd" "$libdir/libdetingest.so.$version"
install -m 644 "$top/include/detingest.h" "$pkg/usr/include/"
sed -e 's|@PREFIX@|/usr|' -e "s|@VERSION@|$version|" -e "s|^libdir=.*|libdir=\${prefix}/lib/$multiarch|" \
  "$top/ffi/detingest.pc.in" > "$libdir/pkgconfig/detingest.pc"
sed -e 's|/usr/local/bin/detingestd|/usr/bin/detingestd|' \
  -e 's|^# detingestd as a systemd service.*|# detingestd as a systemd service, installed by the detingest package (docs/PACKAGING.md).|' \
  -e '/^# \$(PREFIX)/d' -e '/^# Before enabling it/,/^# write \/etc/d' \
  "$top/packaging/detingestd.service" > "$pkg/lib/systemd/system/detingestd.service"
chmod 644 "$pkg/lib/systemd/system/detingestd.service"
sed -e 's|^data_dir = .*|data_dir = "/data/detingest"|' "$top/docs/detingest.example.toml" \
  > "$pkg/etc/detingest/detingestd.toml"
chmod 644 "$pkg/etc/detingest/detingestd.toml"
for f in detingest.example.toml shm.example.toml udp.example.toml kafka.example.toml stream2.example.toml; do
  install -m 644 "$top/docs/$f" "$doc/examples/"
done
install -m 644 "$here/copyright" "$doc/copyright"
gzip -9n < "$here/changelog" > "$doc/changelog.gz"
chmod 644 "$doc/changelog.gz"

for s in postinst postrm; do install -m 755 "$here/$s" "$pkg/DEBIAN/"; done
printf '/etc/detingest/detingestd.toml\n' > "$pkg/DEBIAN/conffiles"
printf 'activate-noawait ldconfig\n' > "$pkg/DEBIAN/triggers"
printf 'libdetingest %s detingest (>= %s)\n' "${version%%.*}" "$version" > "$pkg/DEBIAN/shlibs"
chmod 644 "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/triggers" "$pkg/DEBIAN/shlibs"
# Runtime dependencies: the packages of the libraries the binaries link.
depends=$( (ldd "$pkg/usr/bin/detingestd"; ldd "$libdir/libdetingest.so.$version") \
  | awk '$3 ~ /^\// {print $3}' | sort -u | xargs -r dpkg -S 2>/dev/null | cut -d: -f1 | sort -u \
  | while read -r p; do printf '%s (>= %s), ' "$p" "$(dpkg-query -W -f '${Version}' "$p:$arch" 2>/dev/null \
      || dpkg-query -W -f '${Version}' "$p")"; done)
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@DEPENDS@|${depends}adduser, passwd|" \
  -e "s|@SIZE@|$size|" "$here/control.in" > "$pkg/DEBIAN/control"
(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | xargs -0 md5sum > DEBIAN/md5sums)
chmod 644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/md5sums"
mkdir -p "$out"
dpkg-deb --root-owner-group "-Z${DEB_COMPRESS:-xz}" --build "$pkg" "$out/detingest_${version}_$arch.deb" >/dev/null
echo "$out/detingest_${version}_$arch.deb"
