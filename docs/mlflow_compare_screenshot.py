"""Screenshot MLflow's compare view of the newest run's methods (docs/figures/mlflow_compare.png).

    .venv/bin/python docs/mlflow_compare_screenshot.py [PROJECT] [OUT.png] [PIPELINE]

Starts ``mlflow ui`` on PROJECT's ``mlflow.db`` (own process group, a free port), opens the
compare page of the method runs of PIPELINE's newest run (``__default__``) in headless
Chromium (DevTools protocol, ``websockets``), closes the assistant panel and the sidebar, folds
the empty sections, grows the metrics table to its rows (MLflow draws it in a 300-pixel box;
its last rows may stay hidden), saves the screenshot and stops the server and the browser.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import websockets
from mlflow.tracking import MlflowClient

from spire_pipeline.compare import EXPERIMENT, find_runs, project_tracking_uri

WIDTH, HEIGHT = 2250, 2150
TIDY = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const own = e => [...e.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent)
    .join('').trim();
  document.querySelector('button[aria-label="Close"]')?.click();
  document.querySelector('button[aria-label="Toggle sidebar"]')?.click();
  await sleep(1000);
  for (const t of ['Visualizations', 'Parameters', 'Artifacts'])
    [...document.querySelectorAll('*')].find(e => own(e) === t)?.click();
  await sleep(1500);
  for (const grid of document.querySelectorAll('.ReactVirtualized__Grid')) {
    const old = grid.clientHeight, full = grid.scrollHeight;
    if (full <= old + 2 || full > 2500) continue;
    grid.style.height = full + 'px';
    let p = grid.parentElement;
    for (let i = 0; i < 4 && p; i++, p = p.parentElement)
      if (Math.abs(p.clientHeight - old) < 3) p.style.height = 'auto';
  }
  await sleep(1500);
  return 'ok';
})()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


async def screenshot(debug_port: int, url: str, out: Path) -> None:
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list"))
    page = next(t for t in targets if t["type"] == "page")
    async with websockets.connect(page["webSocketDebuggerUrl"], max_size=2**28) as ws:
        counter = 0

        async def call(method: str, **params):
            nonlocal counter
            counter += 1
            await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == counter:
                    return message.get("result", message)

        await call("Page.enable")
        await call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
        await call("Page.navigate", url=url)
        await asyncio.sleep(25)
        await call("Runtime.evaluate", expression=TIDY, awaitPromise=True)
        shot = await call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))


def main(project: Path, out: Path, pipeline: str = "__default__") -> None:
    uri = project_tracking_uri(project)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    newest = client.search_runs(
        [experiment],
        f"tags.method != '' and tags.pipeline = '{pipeline}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if not newest:
        sys.exit(f"no {pipeline} run with method runs in {uri}")
    parent, children = find_runs(client, newest[0].data.tags["mlflow.parentRunId"])
    ids = json.dumps([r.info.run_id for r in children], separators=(",", ":"))
    port, debug_port = free_port(), free_port()
    url = (
        f"http://127.0.0.1:{port}/#/compare-runs?runs={urllib.parse.quote(ids)}"
        f"&experiments={urllib.parse.quote(json.dumps([experiment]))}"
    )
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_bin), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
        + ["--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    profile = tempfile.mkdtemp()
    browser = None
    try:
        wait_http(f"http://127.0.0.1:{port}/", 180)
        browser = subprocess.Popen(
            [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox"]
            + ["--disable-gpu", "--no-first-run", "--disable-background-networking"]
            + ["--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]
            + [f"--remote-debugging-port={debug_port}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_http(f"http://127.0.0.1:{debug_port}/json/version", 60)
        asyncio.run(screenshot(debug_port, url, out))
        print(f"{out}: {len(children)} method runs of {parent.info.run_name!r}")
    finally:
        for proc in (browser, server):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    here = Path(__file__).resolve().parents[1]
    main(
        Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else here,
        Path(sys.argv[2]) if len(sys.argv) > 2 else here / "docs/figures/mlflow_compare.png",
        *sys.argv[3:4],
    )
