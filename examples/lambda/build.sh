#!/bin/sh
# Build the example Lambda's deployment zip: handler.py plus the stdlib-only callback helper.
# Usage: examples/lambda/build.sh [OUTPUT.zip]   (default: examples/lambda/dist/render.zip)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/dist/render.zip}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/handler.py" "$work/handler.py"
cp "$here/../../sssrd/callback/__init__.py" "$work/sssrd_callback.py"
mkdir -p "$(dirname "$out")"
rm -f "$out"
(cd "$work" && python3 -m zipfile -c "$out" handler.py sssrd_callback.py)
echo "$out"
