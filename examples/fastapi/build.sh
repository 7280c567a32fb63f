#!/bin/sh
# Build this example's Lambda zip (handler app.handler): see ../web-app-zip.sh.
# Usage: build.sh [OUTPUT.zip]   (default: dist/render.zip next to this script)
here=$(dirname "$0")
exec "$here/../web-app-zip.sh" "$here" "$@"
