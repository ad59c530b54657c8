"""Open a page in headless Chromium (the Debian package, driven by playwright) and read what loaded.

No browser download: playwright drives /usr/bin/chromium (or $HIERDRUMS_CHROMIUM) in a fresh
profile, with the background network traffic a test does not want switched off.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required"]

# Waits until every <audio> has read its header (or failed), then lists what the page references.
PROBE = """() => ({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                  width: i.naturalWidth})),
  audio: Array.from(document.querySelectorAll('audio')).map(a => ({src: a.getAttribute('src'),
                                                  duration: a.duration, error: a.error && a.error.code})),
  links: Array.from(document.querySelectorAll('a[href]:not([href^="#"])')).map(a => a.getAttribute('href')),
  generated: document.querySelectorAll('.clip.generated').length,
  real: document.querySelectorAll('.clip.real:not(.empty)').length,
  notices: Array.from(document.querySelectorAll('.notice')).map(n => n.textContent.trim()),
})"""
AUDIO_READY = """() => Array.from(document.querySelectorAll('audio')).every(a => a.readyState >= 1 || a.error)"""


def chromium() -> str | None:
    return os.environ.get("HIERDRUMS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def open_page(page: Path, screenshot: Path | None = None, width: int = 1400) -> dict:
    """Load `page` (file://), wait for images and audio metadata, optionally screenshot the whole page;
    returns PROBE's dict."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=chromium(), headless=True,
                                                       args=FLAGS, viewport={"width": width, "height": 900})
        try:
            tab = context.new_page()
            tab.goto(Path(page).resolve().as_uri(), wait_until="load")
            tab.wait_for_function(AUDIO_READY, timeout=60_000)
            if screenshot is not None:
                tab.screenshot(path=str(screenshot), full_page=True)
            return tab.evaluate(PROBE)
        finally:
            context.close()
