"""Helpers for the web page tests: Debian's headless Chromium driven through Selenium and
Debian's chromedriver, viewports, screenshots, waits that say what they waited for.

Selenium with Debian's `chromium-driver` rather than Playwright: the driver is built from the
same source package as the browser, so their versions match by construction, and nothing is
downloaded (Selenium Manager is kept offline by naming both binaries). Playwright's Python
package pins the Chromium revision it speaks to and installs browsers by downloading them.

Imported explicitly (`from web_fixtures import ...`); nothing here is auto-used.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import time
from pathlib import Path

CHROMIUM = ("chromium", "/usr/bin/chromium", "chromium-browser")
CHROMEDRIVER = ("chromedriver", "/usr/bin/chromedriver")
# Without the background-networking flags Chromium reaches for Google's services at start,
# which a closed network refuses; none of them is needed to drive a page on loopback.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,800")
INSTALL = "apt-get install -y chromium chromium-driver"


def _which(names) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def missing() -> str | None:
    """None when the browser, its driver and selenium are all here; else one line saying what
    is missing and how to install it."""
    lacking = [what for what, names in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER))
               if _which(names) is None]
    if lacking:
        return f"the web page tests need {' and '.join(lacking)}: {INSTALL}"
    import importlib.util

    if importlib.util.find_spec("selenium") is None:
        return "the web page tests need the selenium package: pip install -e '.[test]'"
    return None


def start_browser(profile: Path):
    """Headless Chromium with a new empty profile in `profile`; its console log is kept."""
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=_which(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


def viewport(driver, width: int, height: int, mobile: bool = False) -> None:
    """The page's viewport, exactly (a headless window's size includes no chrome, but say it anyway)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def screenshot(driver, path: Path, full_page: bool = True) -> Path:
    """A PNG of the viewport, or of the whole page's height."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shot = {"format": "png"}
    if full_page:
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot.update(captureBeyondViewport=True,
                    clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
    path.write_bytes(base64.b64decode(driver.execute_cdp_cmd("Page.captureScreenshot", shot)["data"]))
    return path


def small_png(source: Path, dest: Path) -> Path:
    """`source` as a palette PNG (256 colours, optimized): a UI screenshot of modest size."""
    from PIL import Image

    with Image.open(source) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    small.save(out, "PNG", optimize=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(out.getvalue())
    return dest


def console_errors(driver) -> list[str]:
    """The browser console's error lines since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def stop_measuring(home: Path) -> None:
    """SIGTERM the backbone-measuring process a server started for `home` (the page's first
    GET /v1/backbones starts it, in a session of its own; a server stopped gracefully ends it,
    one killed outright cannot)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"retrain.serve.catalog" in argv and os.fsencode(Path(home) / "backbones.json") in argv:
            try:
                os.kill(int(cmdline.parent.name), signal.SIGTERM)
            except ProcessLookupError:
                pass


def wait_for(driver, condition, what: str, timeout: float = 30, diagnose=None):
    """Poll condition(driver) until it is truthy; -> its value. On timeout fail saying `what`,
    with the page's alert, the browser console, and diagnose()'s text when given."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition(driver)
            if value:
                return value
        except (StaleElementReferenceException, LookupError):
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    try:
        alert = driver.execute_script("return document.getElementById('alert-text')?.textContent")
        console = "\n".join(console_errors(driver))
        where = driver.current_url
    except WebDriverException as err:
        alert, console, where = "", f"(no browser: {err.msg})", ""
    extra = diagnose() if diagnose else ""
    raise AssertionError(f"waited {timeout} s for {what} at {where}\npage alert: {alert!r}\n"
                         f"console:\n{console}\n{extra}")
