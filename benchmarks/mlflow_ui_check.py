"""A sweep's answer in the MLflow UI, checked in a real browser: from the URL the sweep
printed, how many clicks to the objective against eta.

    python benchmarks/mlflow_ui_check.py --backend-store-uri sqlite:///mlruns.db --out ui_check/
    python benchmarks/mlflow_ui_check.py --url 'http://127.0.0.1:5000/#/experiments/1/runs/...'

With a database store it starts `mlflow ui` on 127.0.0.1 (a free port) and opens the last
sweep's parent run as `plasticity sweep` prints it (`--url`: the printed URL itself; its
host and port are replaced by the started UI's); with `--url` of a server, that server.
Chromium through Playwright (`pip install -e ".[ui-check]"`; a system Chromium such as
Debian's /usr/bin/chromium, `--chromium`). It counts the clicks from the landing page:

- 0: the parent run's description (its run note), with the best trial's `plasticity
  train` command in its first lines;
- 1: its "Show more": the objective against eta drawn inline, the sweep's table;
- 2: the run's Artifacts tab, then `objective_vs_eta.png` (Optuna's plot) shown;

then expands the parent in the experiment's runs table (the trials, sortable by their
`objective` metric) and opens the registered model. Each step saves a screenshot and the
page's text in --out; it prints a table of the steps and exits 1 if the picture is more
than 2 clicks away.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cluster.processes import free_port

PICTURE = "objective_vs_eta.png"


def wait_health(base: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow_ui_check: the MLflow UI at {base} did not answer /health in {timeout:.0f} s")


def last_sweep_url(base: str, experiment: str) -> str:
    """The parent run of the newest sweep, addressed as `plasticity sweep` prints it."""
    def post(path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.load(r)

    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?"
                                + urllib.parse.urlencode({"experiment_name": experiment})) as r:
        exp_id = json.load(r)["experiment"]["experiment_id"]
    runs = post("runs/search", {"experiment_ids": [exp_id], "filter": "tags.role = 'sweep'",
                                "order_by": ["attributes.start_time DESC"], "max_results": 1}).get("runs", [])
    if not runs:
        raise SystemExit(f"mlflow_ui_check: experiment {experiment} has no sweep parent run: run a sweep first")
    return f"{base}/#/experiments/{exp_id}/runs/{runs[0]['info']['run_id']}?workflowType=machine_learning"


def image_shown(page, selector: str, timeout_ms: int = 20_000) -> bool:
    """Whether an <img> matching `selector` is on the page and loaded (not a broken link)."""
    try:
        page.wait_for_function(
            f"""() => [...document.querySelectorAll({json.dumps(selector)})]
                    .some(i => i.complete && i.naturalWidth > 100)""", timeout=timeout_ms)
        return True
    except Exception:  # noqa: BLE001 - a timeout: not shown
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend-store-uri", default="sqlite:///mlruns.db", help="the sweep's store (started here)")
    ap.add_argument("--url", help="the MLflow URL the sweep printed (default: the last sweep's parent run)")
    ap.add_argument("--experiment", default="plasticity-sweeps")
    ap.add_argument("--model", help="a registered model to open at the end (default: the one the parent names)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", type=Path, default=Path("ui_check"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    server = None
    if args.url and not re.match(r"https?://(127\.0\.0\.1|localhost):5000/", args.url):
        base = args.url.split("/#", 1)[0].rstrip("/")  # a tracking server: open it as it is
    else:
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.backend_store_uri,
                                   "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=(args.out / "mlflow-ui.log").open("w"))
        base = f"http://127.0.0.1:{port}"
    steps: list[tuple[str, int, bool]] = []
    try:
        wait_health(base)
        url = (base + "/#" + args.url.split("/#", 1)[1]) if args.url else last_sweep_url(base, args.experiment)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})

            def save(name: str) -> None:
                page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
                (args.out / f"{name}.txt").write_text(page.inner_text("body"))

            # The UI keeps a telemetry request open: wait for what is looked for, not "networkidle".
            page.goto(url)
            try:
                page.get_by_text("plasticity train").first.wait_for(timeout=60_000)
                described = True
            except Exception:  # noqa: BLE001 - no description: recorded below
                described = False
            save("0-landing")
            steps.append(("landing page: the description with the best trial's train command", 0, described))
            # The UI shows the first lines of a long description until "Show more".
            more = page.get_by_text("Show more", exact=True)
            collapsed = more.count() > 0
            if collapsed:
                more.first.click()
            inline = described and image_shown(page, f"img[src*='{PICTURE}']")
            save("1-description")
            steps.append(("Show more: the objective against eta drawn in the description, the table",
                          1 if collapsed else 0, inline))

            page.get_by_role("tab", name=re.compile("Artifacts")).first.click()
            page.get_by_text(PICTURE, exact=True).first.click(timeout=30_000)
            shown = image_shown(page, "img")
            save("2-artifact")
            steps.append((f"Artifacts tab, then {PICTURE}: Optuna's plot shown", 2, shown))

            exp_id = re.search(r"#/experiments/([^/?]+)", url).group(1)
            page.goto(f"{base}/#/experiments/{exp_id}?workflowType=machine_learning")
            expand = page.locator("button[data-component-id*='runnamecellrenderer']").first
            try:
                expand.wait_for(timeout=60_000)
                expand.click()
                page.wait_for_timeout(2000)
                trials = True
            except Exception:  # noqa: BLE001 - no child runs shown
                trials = False
            save("runs")
            steps.append(("the experiment's runs table, the parent expanded: its trials", 2, trials))
            model = args.model
            if model is None:
                text = (args.out / "0-landing.txt").read_text()
                found = re.search(r"registered model: ([\w.\-]+)/\d+", text)
                model = found.group(1) if found else None
            if model:
                page.goto(f"{base}/#/models/{model}")
                try:
                    page.get_by_text("Version 1").first.wait_for(timeout=30_000)
                    registered = True
                except Exception:  # noqa: BLE001
                    registered = False
                save("model")
                steps.append((f"the registered model {model}", 1, registered))
            browser.close()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    print(f"{'step':<72} {'clicks':>6}  seen")
    for what, clicks, ok in steps:
        print(f"{what:<72} {clicks:>6}  {'yes' if ok else 'NO'}")
    picture = min((c for what, c, ok in steps if ok and "objective against eta" in what or ok and PICTURE in what),
                  default=None)
    found = "not found" if picture is None else f"{picture} click{'' if picture == 1 else 's'}"
    print(f"the objective against eta: {found} from {url}")
    print(f"screenshots and page text in {args.out}")
    return 0 if picture is not None and picture <= 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
