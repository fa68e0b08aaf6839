#!/usr/bin/env bash
# Installs the JavaScript and Python clients that discord-mock's tests drive against it, at the
# versions pinned beside this script. Run by .ci/run; run it yourself once before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"
command -v node >/dev/null || { echo "Node.js is required for discord-mock's client tests"; exit 1; }
# erlpack is a native module: node-gyp builds it against the local Node.js headers.
nodedir="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")"
npm_config_nodedir="$nodedir" npm ci --no-audit --no-fund --loglevel=error
node -e 'require("erlpack")' || { echo "erlpack did not build"; exit 1; }
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
