#!/usr/bin/env bash
# Re-fetch the web app's vendored front-end files (pinned versions) from the npm registry with `npm pack`.
# Writes only src/transferkit/deploy/webapp/static/vendor/; nothing is fetched at run time (no CDN).
set -euo pipefail
cd "$(dirname "$0")/.."
VENDOR=src/transferkit/deploy/webapp/static/vendor
ALPINE=alpinejs@3.17.5
UPLOT=uplot@1.6.32
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$ALPINE" "$UPLOT" >/dev/null && for t in *.tgz; do mkdir "${t%.tgz}" && tar -xzf "$t" -C "${t%.tgz}"; done)
mkdir -p "$VENDOR"
a=$(ls -d "$work"/alpinejs-*/package) u=$(ls -d "$work"/uplot-*/package)
cp "$a/dist/cdn.min.js" "$VENDOR/alpine.min.js"
# The alpinejs npm package ships no LICENSE file (package.json says "license": "MIT"): write
# the MIT text of github.com/alpinejs/alpine/blob/main/LICENSE.md beside it.
grep -q '"license": "MIT"' "$a/package.json"
cat > "$VENDOR/alpine.LICENSE" <<'MIT'
MIT License (alpinejs, https://github.com/alpinejs/alpine; the npm package states "license": "MIT")

Copyright © 2019-2021 Caleb Porzio and contributors

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
MIT
cp "$u/dist/uPlot.iife.min.js" "$VENDOR/uplot.min.js"
cp "$u/dist/uPlot.min.css" "$VENDOR/uplot.min.css"
cp "$u/LICENSE" "$VENDOR/uplot.LICENSE"
printf '%s\n%s\n' "$ALPINE" "$UPLOT" > "$VENDOR/VERSIONS"
echo "vendored $ALPINE and $UPLOT into $VENDOR"
