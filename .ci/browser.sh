#!/usr/bin/env bash
# CI: what the browser test of `flowsr serve` (tests/test_serve.py) needs: Debian's chromium, and
# Playwright's Python package driving it. Idempotent. Never runs `playwright install`: the test
# launches /usr/bin/chromium, so no browser is downloaded.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
fi
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
# playwright brings only greenlet and pyee (no torch)
python3 -c "import playwright" 2>/dev/null || python3 -m pip install --quiet "playwright>=1.40,<2"
echo "browser test: $(/usr/bin/chromium --version 2>/dev/null), playwright $(python3 -c "from importlib.metadata import version; print(version('playwright'))")"
