#!/bin/bash
# Builds dist/sssrd_<version>_<arch>.deb: a self-contained virtualenv at /opt/sssrd made from
# sssrd's own wheel and its dependency wheels, the systemd units and the default config.
#
# The venv is created by the target's interpreter (Debian 12's /usr/bin/python3, 3.11) in a
# staging directory, and pip's absolute staging paths are then rewritten to /opt/sssrd, so the
# package needs no network, pip or python3-venv at install time (postinst only byte-compiles).
# Dependency versions are pip's newest that fit pyproject.toml; set PIP_CONSTRAINT=file to pin.
# Usage: build.sh [OUTPUT_DIR]   (default: dist/ in the repo; run from anywhere)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out_dir="$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)"
target_python="${TARGET_PYTHON:-/usr/bin/python3}"
prefix=/opt/sssrd

die() { echo "build.sh: $*" >&2; exit 1; }

[ -x "$target_python" ] || die "$target_python not found: the venv must be made by the \
target's interpreter (apt-get install python3 python3-venv)"
py_minor="$("$target_python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
"$target_python" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$target_python lacks venv/ensurepip (apt-get install python3-venv)"
[ -f "$repo/packaging/sssrd.toml" ] || die "packaging/sssrd.toml (the default config) is missing"

version="$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$repo/sssrd/__init__.py")"
[ -n "$version" ] || die "no __version__ in sssrd/__init__.py"
arch="$(dpkg --print-architecture)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage="$work/root"
venv="$stage$prefix"

# Build the wheel from a copy so the work tree gets no build/ or egg-info litter.
mkdir -p "$work/src"
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/sssrd" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +

"$target_python" -m venv "$venv"
"$venv/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "$work/src"
"$venv/bin/python" -m pip install --quiet --no-compile --no-warn-script-location \
    "$work/wheels"/sssrd-*.whl
# pip and setuptools were only needed to build; the daemon runs without them.
"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools

# Point everything pip wrote at the staging path to the installed path.
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
grep -rlI --null -F "$venv" "$venv" | xargs -0 --no-run-if-empty sed -i "s|$venv|$prefix|g"
find "$venv" -name direct_url.json -delete
if grep -rlI -F "$work" "$venv"; then die "staging path left in the files above"; fi
# Bytecode is made by postinst and removed by prerm, as Debian does for its own Python.
find "$venv" -name __pycache__ -prune -exec rm -rf {} +
find "$venv" -name '*.so' -type f -exec strip --strip-unneeded {} +

install -D -m 644 "$repo/packaging/sssrd.service" "$stage/lib/systemd/system/sssrd.service"
for listener in viewer callback admin; do
    install -D -m 644 "$repo/packaging/sssrd-$listener.socket" \
        "$stage/lib/systemd/system/sssrd-$listener.socket"
done
install -D -m 644 "$repo/packaging/sssrd.toml" "$stage/etc/sssrd/sssrd.toml"
mkdir -p "$stage/usr/sbin"
ln -s "$prefix/bin/sssrd" "$stage/usr/sbin/sssrd"
doc="$stage/usr/share/doc/sssrd"
install -D -m 644 "$here/copyright" "$doc/copyright"
install -m 644 "$repo/README.md" "$doc/README.md"
# docs/ keeps its place beside the README, so the README's links work; the units point into it.
install -D -m 644 -t "$doc/docs" "$repo"/docs/*.md
install -D -m 644 "$here/lintian-overrides" "$stage/usr/share/lintian/overrides/sssrd"
install -d "$stage/usr/share/man/man8"
gzip -9n < "$here/sssrd.8" > "$stage/usr/share/man/man8/sssrd.8.gz"
printf 'sssrd (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- %s  %s\n' \
    "$version" "$version" "$(sed -n 's/^Maintainer: //p' "$here/control.in")" \
    "$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")" \
    | gzip -9n > "$doc/changelog.gz"

mkdir -p "$stage/DEBIAN"
install -m 755 "$here/postinst" "$here/prerm" "$here/postrm" "$stage/DEBIAN/"
echo /etc/sssrd/sssrd.toml > "$stage/DEBIAN/conffiles"
installed_size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
next_minor="${py_minor%.*}.$(( ${py_minor#*.} + 1 ))"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
    -e "s/@PYTHON_DEPENDS@/python3 (>= $py_minor), python3 (<< $next_minor)/" \
    "$here/control.in" > "$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' \
    | sort -z | xargs -0 md5sum) > "$work/md5sums"
mv "$work/md5sums" "$stage/DEBIAN/md5sums"

chmod -R u=rwX,go=rX "$stage"
chmod 755 "$stage"/DEBIAN/{postinst,prerm,postrm}
deb="$out_dir/sssrd_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
