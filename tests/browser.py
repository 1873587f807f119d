"""Play a player page in Debian's Chromium through Playwright and report what happened.

Playwright's own browser download is not possible here, so it drives /usr/bin/chromium.
`chromium --headless --dump-dom --virtual-time-budget` does not advance media playback,
hence a real session that waits on the page's own state (window.player.state).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STATE = "() => window.player && JSON.parse(JSON.stringify(window.player.state))"

_available: str | None | bool = False  # False: not checked yet


def chromium_available() -> str | None:
    """None when a headless Chromium starts; otherwise why it cannot (checked once)."""
    global _available
    if _available is not False:
        return _available
    reason = None
    if shutil.which(CHROMIUM) is None:
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            reason = "the playwright package is missing (.venv/bin/pip install playwright)"
        else:
            try:
                with sync_playwright() as pw:
                    pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS).close()
            except Exception as e:  # any launch failure means: no browser tests here
                reason = f"chromium does not start: {str(e).strip().splitlines()[0]}"
    _available = reason
    return reason


def play(url: str, screenshot: Path, switch_to: int | None = None, timeout: float = 120) -> dict:
    """Open the page, play it to the end (or a fatal error) and return window.player.state.

    With `switch_to`, pick that level once playback runs and wait until it is the one
    playing. The screenshot is taken mid-play, hovering the seek bar when the page has
    thumbnails so that the preview shows. The returned state gains `console` (the page's
    console errors and warnings).
    """
    from playwright.sync_api import sync_playwright

    deadline = time.monotonic() + timeout
    screenshot.unlink(missing_ok=True)
    console: list[str] = []

    def wait(page, condition: str, what: str) -> bool:
        """Poll a JS condition on the state; False when the page reports a fatal error first."""
        while True:
            state = page.evaluate(STATE)
            if state and state["errors"]:
                return False
            if state and page.evaluate(f"(s) => {condition}", state):
                return True
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s; state {state}; console {console[-10:]}")
            time.sleep(0.05)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 820})
            page.on("console", lambda m: m.type in ("error", "warning") and console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            response = page.goto(url, wait_until="load", timeout=timeout * 1000)
            if response is None or not response.ok:
                raise RuntimeError(f"{url}: HTTP {response and response.status}")
            if not page.evaluate("() => !!window.player"):
                raise RuntimeError(f"{url}: the page set no window.player; console {console[-10:]}")
            try:
                if wait(page, "s.started || s.ended", "playback start"):
                    if switch_to is not None:
                        page.evaluate("(i) => window.player.pickLevel(i)", switch_to)
                        wait(page, f"s.currentLevel === {int(switch_to)} || s.ended", f"switch to level {switch_to}")
                    _screenshot(page, screenshot)
                    wait(page, "s.ended", "end of playback")
            finally:
                if not screenshot.exists():  # a failed run's picture helps to see why
                    _screenshot(page, screenshot)
            state = page.evaluate(STATE) or {}
            state["console"] = console
            return state
        finally:
            browser.close()


def _screenshot(page, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if page.evaluate("() => !!(window.player && window.player.state.thumbnails)"):
        bar = page.locator("#scrub")
        box = bar.bounding_box()
        if box:
            # hover 60% along: the preview pops up above that point of the seek bar
            page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
            page.wait_for_timeout(150)  # the sprite is cached, one frame paints it
    page.screenshot(path=str(path))
