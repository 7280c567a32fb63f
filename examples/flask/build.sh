#!/bin/sh
# Build the example's Lambda zip: app.py, its template, its requirements for Lambda's Python 3.11
# on x86_64, and the sssrd-callback package built from this repository (stdlib only).
# Usage: build.sh [OUTPUT.zip, ending in .zip]   (default: dist/render.zip next to this script); handler app.handler
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/dist/render.zip}")
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip install --quiet --target "$work" --implementation cp --python-version 3.11 \
    --platform manylinux2014_x86_64 --only-binary=:all: -r "$here/requirements.txt"
"$python" "$here/../../python-callback/build.py" "$work/wheel" >/dev/null
"$python" -m pip install --quiet --target "$work" --no-deps "$work"/wheel/*.whl
rm -rf "$work/wheel"
cp -r "$here/app.py" "$here/templates" "$work/"
mkdir -p "$(dirname "$out")"
rm -f "$out"
"$python" -c 'import shutil, sys; shutil.make_archive(sys.argv[1], "zip", sys.argv[2])' \
    "${out%.zip}" "$work"
echo "$out"
