#!/usr/bin/env bash
# Fetch the JavaScript the site serves itself (so it renders with no network) into _vendor/.
# Sphinx copies _vendor/ to the site root (html_extra_path).
set -euo pipefail
cd "$(dirname "$0")/.."
MATHJAX=mathjax@3.2.2
WIDGETS=@jupyter-widgets/html-manager@1.0.6
REQUIREJS=requirejs@2.3.7
stamp="_vendor/.stamp-$(echo "$MATHJAX $WIDGETS+fonts $REQUIREJS" | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0
command -v npm >/dev/null || { echo "[setup] npm is needed to fetch MathJax and the widget manager: install nodejs + npm" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$MATHJAX" "$WIDGETS" "$REQUIREJS" >/dev/null)
rm -rf _vendor.partial && mkdir -p _vendor.partial/mathjax _vendor.partial/widgets
tar -xzf "$work"/mathjax-*.tgz -C "$work" && mv "$work/package/es5" _vendor.partial/mathjax/es5 && rm -rf "$work/package"
# embed-amd.js plus the icon fonts its CSS asks for beside it (without them widget pages 404 offline).
tar -xzf "$work"/jupyter-widgets-html-manager-*.tgz -C "$work"
cp "$work"/package/dist/embed-amd.js "$work"/package/dist/*.{woff2,woff,ttf,eot,svg} _vendor.partial/widgets/
rm -rf "$work/package"
tar -xzf "$work"/requirejs-*.tgz -C "$work" && cp "$work/package/require.js" _vendor.partial/widgets/require.js
rm -rf _vendor && mv _vendor.partial _vendor
touch "$stamp"
echo "[setup] vendored MathJax 3, the widget manager and require.js into _vendor/"
