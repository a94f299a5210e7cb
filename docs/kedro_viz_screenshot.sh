#!/usr/bin/env bash
# Screenshots of the default pipeline in kedro-viz, taken from `kedro viz build` output in
# headless Chromium (apt-get install chromium): docs/figures/kedro_viz.png (the main job as its
# stages, datasets hidden) and docs/figures/kedro_viz_datasets.png (datasets and layers shown).
# Run from the project root: bash docs/kedro_viz_screenshot.sh
set -euo pipefail
KEDRO=${KEDRO:-.venv/bin/kedro}
PYTHON=${PYTHON:-.venv/bin/python}
PORT=${PORT:-8765}
export KEDRO_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
"$KEDRO" viz build >/dev/null
setsid "$PYTHON" -m http.server "$PORT" --bind 127.0.0.1 --directory build >/dev/null 2>&1 &
server=$!
trap 'kill -- -"$server" 2>/dev/null || true; rm -f build/shot.html' EXIT
sleep 2
shot() {  # $1: kedro-viz settings (what it keeps in localStorage), $2: output file
  cat >build/shot.html <<HTML
<!doctype html><meta charset="utf-8"><script>
localStorage.setItem("KedroViz", JSON.stringify($1)); location.replace("index.html");
</script>
HTML
  profile=$(mktemp -d)
  chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --screenshot="$2" \
    --window-size=1600,1000 --virtual-time-budget=15000 "http://127.0.0.1:$PORT/shot.html" \
    2>/dev/null
  rm -rf "$profile"
}
common='"theme": "light", "showFeatureHints": false, "isPrettyName": true'
shot "{$common, \"nodeType\": {\"disabled\": {\"data\": true, \"parameters\": true}},
  \"orientation\": \"horizontal\", \"visible\": {\"miniMap\": false, \"sidebar\": true}}" \
  docs/figures/kedro_viz.png
shot "{$common, \"nodeType\": {\"disabled\": {\"parameters\": true}},
  \"visible\": {\"miniMap\": false, \"sidebar\": false}}" docs/figures/kedro_viz_datasets.png
