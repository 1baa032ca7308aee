"""A real headless Chromium driven by Selenium, for tests of the admin page.

Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver; .ci/run
installs them). The driver path is given explicitly, so Selenium never looks for or downloads
one. The flags keep Chromium off the network: this machine has none, and without them Chromium
stalls on its own background connections.

Selenium calls block; async tests run them with `asyncio.to_thread` so that the proxy, on the
test's event loop, keeps serving the page meanwhile.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


class Browser:
    """One Chromium window; every method blocks (call it with asyncio.to_thread)."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    def open(self, url: str) -> None:
        self.driver.get(url)

    def wait(self, what: str, ready: Callable[[], Any], timeout: float = 15.0) -> Any:
        """Poll `ready` until it returns something truthy; fail naming `what` otherwise."""
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
            lambda _: ready(), message=f"page never showed {what}"
        )

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        """The visible text of the first match ('' when there is none)."""
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""

    def wait_text(self, css: str, expected: str, timeout: float = 15.0) -> None:
        self.wait(f"{expected!r} in {css}", lambda: expected in self.text(css), timeout)

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    def severe_console_entries(self) -> list[str]:
        """Errors the page logged (JS exceptions, refused resources, CSP violations)."""
        # Selenium leaves get_log unannotated; the entries are the driver's JSON objects.
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return [e["message"] for e in entries if e["level"] == "SEVERE"]

    def screenshot(self, path: Path) -> None:
        """The whole page as PNG, beyond the window's height too."""
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        path.write_bytes(base64.b64decode(shot["data"]))


@contextmanager
def chromium() -> Iterator[Browser]:
    """A fresh headless Chromium (own profile directory), quit on exit."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with tempfile.TemporaryDirectory(prefix="rollout-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            yield Browser(driver)
        finally:
            driver.quit()
