#!/usr/bin/env bash
# Optional: the system Chromium that tests/test_report_browser.py opens report.html in (through the
# playwright package of requirements-dev.txt; Playwright downloads no browser). Installs it with
# apt-get when apt-get is there and this runs as root, quietly; otherwise, or when the install fails,
# it says so in one line and exits 0: the browser test then skips. CHROMIUM: where it is looked for.
set -u
chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  echo "browser: $chromium is there"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && { apt-get update -qq >/dev/null 2>&1 || true; } \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; then
  echo "browser: installed chromium with apt-get"
else
  echo "browser: no $chromium (scripts/browser.sh installs it as root with apt-get); tests/test_report_browser.py will skip"
fi
exit 0
