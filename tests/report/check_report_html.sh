#!/bin/sh
# SPDX-License-Identifier: MIT
# `sona bench --html`'s page, checked as a browser draws it. Run by ctest:
#   check_report_html.sh REPORT_HTML_PAGE REPORT.json WORK_DIR
# writes the page for REPORT.json (report_html_page), checks that it is self-contained (no
# address outside it), renders it in headless Chromium and fails on a script error, a chart that
# drew nothing, or a page that did not finish drawing. Exit 77 (ctest: skipped) when no Chromium
# is installed (Debian: apt-get install chromium; scripts/deps.sh installs it). SONA_CHROMIUM
# names the browser to use instead.
set -u
page_tool=$1 report=$2 work=$3
mkdir -p "$work" || exit 1
page=$work/report.html dom=$work/report.dom.html log=$work/chromium.log
rm -f "$page" "$dom"

"$page_tool" "$report" "$page" || { echo "FAIL: report_html_page could not write the page"; exit 1; }

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# Self-contained: nothing loaded from elsewhere (the SVG namespace name is not an address).
if grep -n -E '(src|href)=["'\'']?(https?:)?//|@import|url\(' "$page" | grep -v 'href="#' >"$work/external.txt"; then
    fail "the page refers to something outside it:"
    cat "$work/external.txt"
fi
charts=$(grep -o '<figure class="chart' "$page" | wc -l)
[ "$charts" -gt 0 ] || fail "the page has no chart"

browser=
for b in ${SONA_CHROMIUM:-chromium chromium-browser google-chrome}; do
    if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
if [ -z "$browser" ]; then
    [ "$failures" -eq 0 ] || exit 1
    echo "SKIP: no ${SONA_CHROMIUM:-chromium} on PATH (Debian: apt-get install chromium, or scripts/deps.sh); the page's" \
         "static checks passed, its script was not run"
    exit 77
fi

# --no-sandbox: Chromium's sandbox refuses to start as root (CI containers). The profile stays in
# the work directory; the virtual time budget lets the page's script finish before the dump.
timeout 120 "$browser" --headless --disable-gpu --no-sandbox --no-first-run --disable-extensions \
    --disable-dev-shm-usage --user-data-dir="$work/profile" --virtual-time-budget=5000 \
    --dump-dom "file://$(cd "$(dirname "$page")" && pwd)/$(basename "$page")" >"$dom" 2>"$log"
rc=$?
if [ "$rc" -ne 0 ] || [ ! -s "$dom" ]; then
    echo "FAIL: $browser exited $rc with $(wc -c <"$dom" 2>/dev/null || echo 0) bytes of DOM; its log:"
    tail -n 30 "$log"
    exit 1
fi

if grep -q 'class="report-error"' "$dom"; then
    fail "the page's script reported errors:"
    grep -o 'class="report-error">[^<]*' "$dom" | head -n 20
fi
check=$(grep -o 'report-check: charts=[0-9]* empty=[0-9]* errors=[0-9]*' "$dom")
if [ -z "$check" ]; then
    fail "the page's script did not finish (no report-check line in the DOM)"
else
    echo "$check"
    [ "$check" = "report-check: charts=$charts empty=0 errors=0" ] ||
        fail "expected 'report-check: charts=$charts empty=0 errors=0'"
fi
# Each chart became an SVG with data marks; the summary came before the first group.
svgs=$(grep -o '<svg[^>]*role="img"' "$dom" | wc -l)
[ "$svgs" -eq "$charts" ] || fail "$svgs charts drawn as SVG, $charts in the page"
marks=$(grep -o 'class="mark"' "$dom" | wc -l)
[ "$marks" -ge "$charts" ] || fail "$marks data marks for $charts charts"
summary=$(grep -b -o 'id="summary"' "$dom" | head -n 1 | cut -d: -f1)
first_group=$(grep -b -o '<h2 id="g-' "$dom" | head -n 1 | cut -d: -f1)
[ -n "$summary" ] && [ -n "$first_group" ] && [ "$summary" -lt "$first_group" ] ||
    fail "the summary is not first (summary at byte ${summary:-none}, first group at ${first_group:-none})"

if [ "$failures" -gt 0 ]; then
    echo "$failures failure(s); the page: $page, as drawn: $dom"
    exit 1
fi
echo "ok: $charts charts drawn, $marks data marks, no script error"
