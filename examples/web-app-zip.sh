#!/bin/sh
# Build a Python web app example's Lambda zip: app.py, its templates, its requirements for
# Lambda's Python 3.11 on x86_64, and the sssrd-callback package built from this repository
# (stdlib only). Each example's build.sh calls this with its own directory.
# Usage: web-app-zip.sh APP_DIR [OUTPUT.zip]   (default: APP_DIR/dist/render.zip); handler app.handler
set -eu
here=$(cd "$1" && pwd)
out=$(realpath -m "${2:-$here/dist/render.zip}")
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip install --quiet --target "$work" --implementation cp --python-version 3.11 \
    --platform manylinux2014_x86_64 --only-binary=:all: -r "$here/requirements.txt"
"$python" "$(dirname "$0")/../python-callback/build.py" "$work/wheel" >/dev/null
"$python" -m pip install --quiet --target "$work" --no-deps "$work"/wheel/*.whl
rm -rf "$work/wheel"
cp -r "$here/app.py" "$here/templates" "$work/"
mkdir -p "$(dirname "$out")"
rm -f "$out"
"$python" -c 'import shutil, sys; shutil.make_archive(sys.argv[1], "zip", sys.argv[2])' \
    "${out%.zip}" "$work"
echo "$out"
