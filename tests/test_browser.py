"""A real browser drives the α explorer in JupyterLab: run all, move α, click run, see the counts change.

Starts JupyterLab on loopback (no token, temporary directories) and Debian's Chromium through
Playwright (``executable_path``, never a downloaded browser); stops both itself. Skipped only
when Chromium is absent. The screenshot is kept in ``$CSWAP_NB_ARTIFACTS`` (default
``test-artifacts/``).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "06_interactive_alpha.ipynb", work)
    port = _free_port()
    # render every cell (JupyterLab 4 otherwise detaches cells scrolled out of view)
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = {**os.environ, "CSWAP_NB_FAST": "1", "MPLBACKEND": "Agg",
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "IPYTHONDIR": str(tmp_path / "ipython")}
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
         "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={work}",
         "--LabApp.news_url=None"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("JupyterLab did not start: " + (tmp_path / "jupyterlab.log").read_text()[-2000:])
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _critical(page) -> str:
    return page.locator(".cswap-counts .n-critical").first.inner_text()


@pytest.mark.slow
def test_alpha_explorer_in_a_real_browser(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    artifacts = Path(os.environ.get("CSWAP_NB_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{jupyterlab}/lab/tree/06_interactive_alpha.ipynb", timeout=120_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            # a fresh JupyterLab may ask which kernel to start: take the notebook's own (python3)
            try:
                page.locator(".jp-Dialog button", has_text="Select").click(timeout=15_000)
            except Exception:
                pass  # no dialog: the kernel started by itself
            page.wait_for_selector(".jp-Toolbar", timeout=120_000)
            try:
                page.locator("li.lm-MenuBar-item", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                # the guided tour ends with a re-run at alpha = 0.05; wait for its counts and an idle kernel
                page.wait_for_selector(".cswap-counts .n-critical", timeout=300_000)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.jp-InputArea-prompt')]"
                    ".every(e => !e.textContent.includes('*'))", timeout=600_000)
                before = _critical(page)
                readout = page.locator(".widget-readout").first
                readout.click()
                page.keyboard.press("Control+A")
                page.keyboard.type("0.5")
                page.keyboard.press("Enter")
                page.get_by_role("button", name="run C-SWAP").click()
                page.wait_for_function(
                    "(before) => { const e = document.querySelector('.cswap-counts .n-critical');"
                    " return e && e.textContent !== before && document.body.innerText.includes('α = 0.5'); }",
                    arg=before, timeout=300_000)
                after = _critical(page)
            finally:
                page.screenshot(path=str(artifacts / "browser_alpha_explorer.png"), full_page=False)
        finally:
            browser.close()
    assert int(after) > int(before), (before, after)
