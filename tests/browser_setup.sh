#!/usr/bin/env bash
# Installs what `pytest -m browser` needs: Debian's Chromium and its WebDriver (apt), and Selenium
# into the project's virtualenv. Selenium rather than Playwright: Playwright's wheel bundles a
# Node.js driver (~40 MB) and wants to download its own browser builds; Selenium is pure Python
# and drives the distribution's chromedriver, which apt keeps in step with chromium.
# Needs root (or sudo) for apt-get. Usage: tests/browser_setup.sh [path/to/venv]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
        chromium chromium-driver
fi
# The upper bound keeps Selenium within what older mirrors' certifi satisfies; 4.20+ has the
# Service(executable_path) API the test uses.
"$VENV/bin/python" -m pip install -q "selenium>=4.20,<4.52"
/usr/bin/chromium --version
/usr/bin/chromedriver --version
