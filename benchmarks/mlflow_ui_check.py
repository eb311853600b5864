"""Open a sweep's experiment in the MLflow UI in a real browser and save screenshots.

    python benchmarks/mlflow_ui_check.py --backend-store-uri sqlite:///mlruns.db --out ui_check/

Starts `mlflow ui` on 127.0.0.1 (a free port), opens the experiment `plasticity-sweeps`
with Chromium through Playwright (`pip install -e ".[ui-check]"`; a system Chromium such as
Debian's /usr/bin/chromium, `--chromium`), waits for the runs table, expands the parent
run, and writes `runs.png`, `model.png` and `page.txt` (the visible text): what a user
sees, to check that the classic ML view, the trial names, the eta/rule/alpha columns and
the registered model are there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cluster.processes import free_port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend-store-uri", default="sqlite:///mlruns.db")
    ap.add_argument("--experiment", default="plasticity-sweeps")
    ap.add_argument("--model", default="plasticity-patterns")
    ap.add_argument("--parent-prefix", default="patterns-", help="text the parent run's name starts with")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", type=Path, default=Path("ui_check"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.backend_store_uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=(args.out / "mlflow.log").open("w"))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                                    f"{args.experiment}") as r:
            experiment_id = json.load(r)["experiment"]["experiment_id"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # The UI keeps a telemetry request open: wait for the table, not for "networkidle".
            page.goto(f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning")
            try:
                page.get_by_text(args.parent_prefix).first.wait_for(timeout=60_000)  # the parent run's name
            except Exception:  # noqa: BLE001 - keep what the page shows, then fail below
                page.screenshot(path=str(args.out / "timeout.png"), full_page=True)
                (args.out / "timeout.txt").write_text(page.inner_text("body"))
                raise
            page.wait_for_timeout(3000)
            # The parent run's expand button (the square "+" left of its name).
            expand = page.locator("button[data-component-id*='runnamecellrenderer']").first
            if not expand.count():
                raise SystemExit("mlflow_ui_check: the parent run has no expand button: no child runs shown")
            expand.click()
            page.wait_for_timeout(2000)
            page.screenshot(path=str(args.out / "runs.png"), full_page=True)
            (args.out / "page.txt").write_text(page.inner_text("body"))
            page.goto(f"{base}/#/models/{args.model}")
            page.wait_for_timeout(5000)
            page.screenshot(path=str(args.out / "model.png"), full_page=True)
            (args.out / "model.txt").write_text(page.inner_text("body"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"screenshots and page text in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
