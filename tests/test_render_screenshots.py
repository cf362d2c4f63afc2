"""The digest in headless Chromium at phone (375 px) and desktop (800 px) width, light and dark.

Three looks: light; dark, the email's own dark scheme as Apple Mail and Outlook apply it (the page is
shown with the emulated media feature prefers-color-scheme: dark); and inverted, what Gmail's and
Outlook's apps do to a light email on their own (Chromium's forced dark mode does the same).
Screenshots go to tests/artifacts/ to be looked at.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.models import Paper
from newsletter.render import DigestRenderer, paper_view
from tests.conftest import services_required, skip_or_fail
from tests.test_render import make_digest, many_papers, paper_by_id, sample_papers, view

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
DARK_ARGS = ["--force-dark-mode", "--blink-settings=forceDarkModeEnabled=true"]

pytestmark = pytest.mark.browser


def chromium_path() -> str:
    """The Debian Chromium; under NEWSLETTER_REQUIRE_SERVICES=1 (CI, as root) it is installed when missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and services_required() and shutil.which("apt-get") and os.geteuid() == 0:
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            subprocess.run(command, capture_output=True, timeout=900, check=False)
        found = shutil.which("chromium")
    if found is None:
        skip_or_fail("Chromium is not installed (apt-get install -y chromium)")
    return str(found)


@pytest.fixture(scope="module", params=["light", "dark", "inverted"])
def browser(request: pytest.FixtureRequest) -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright (test extra) is not installed")
    args = CHROMIUM_ARGS + (DARK_ARGS if request.param == "inverted" else [])
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=chromium_path(), args=args)
        except Exception as exc:  # noqa: BLE001 - any launch failure means no usable browser here
            skip_or_fail(f"Chromium does not start: {str(exc).splitlines()[0]}")
        launched.mode = request.param  # type: ignore[attr-defined]
        yield launched
        launched.close()


def sample_html(language: str) -> str:
    crowded = Paper(**{**sample_papers()[2].model_dump(), "authors": [f"Author Number {i}" for i in range(1, 16)],
                       "comment": "Accepted at ICLR 2026; 23 pages, 9 figures, code at https://github.com/example/"
                                  "a-very-long-repository-name-that-does-not-break"})
    if language == "zh":
        papers = [view(paper_by_id("2301.05651"), ["reinforcement learning"]), view(crowded, ["learning"]),
                  paper_view(sample_papers()[3], None, ["testing"], translation_wanted=True)]
        digest = make_digest([("reinforcement learning", papers), ("diffusion policy", [])])
    else:
        papers = [view(p, ["testing"], "EN-US") for p in (paper_by_id("2301.05651"), crowded)]
        digest = make_digest([("testing", papers), ("quantum", [])], language="EN-US", timezone="Europe/Berlin")
    return DigestRenderer().render(digest).html


def png_pixels(png: bytes) -> list[tuple[int, int, int]]:
    """RGB pixels of an 8-bit RGB/RGBA PNG (what Chromium writes), row by row."""
    width, height, depth, color_type = struct.unpack(">IIBB", png[16:26])
    assert depth == 8 and color_type in (2, 6)
    channels = 3 if color_type == 2 else 4
    position, data = 8, b""
    while position < len(png):
        length, kind = struct.unpack(">I4s", png[position:position + 8])
        if kind == b"IDAT":
            data += png[position + 8:position + 8 + length]
        position += 12 + length
    raw = zlib.decompress(data)
    stride = width * channels
    previous = bytearray(stride)
    pixels = []
    for row in range(height):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, up_left = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 255
        pixels.extend(tuple(line[i:i + 3]) for i in range(0, stride, channels))
        previous = line
    return pixels


def luminance(pixel: tuple[int, int, int]) -> float:
    red, green, blue = pixel
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def open_page(browser, width: int):  # type: ignore[no-untyped-def]
    """A page of `width` px that tells the email the reader's colour scheme."""
    scheme = "dark" if browser.mode == "dark" else "light"
    return browser.new_page(viewport={"width": width, "height": 900}, color_scheme=scheme)


def mean_luminance(png: bytes) -> float:
    pixels = png_pixels(png)
    return sum(map(luminance, pixels)) / len(pixels)


@pytest.mark.parametrize("width", [375, 800])
@pytest.mark.parametrize("language", ["zh", "en"])
def test_the_digest_reads_well_at_phone_and_desktop_width(browser, width: int, language: str) -> None:  # type: ignore[no-untyped-def]
    page = open_page(browser, width)
    page.set_content(sample_html(language))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"digest-{language}-{width}-{browser.mode}.png"), full_page=True)

    assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
    boxes = page.eval_on_selector_all("p, a, li", "els => els.map(e => e.getBoundingClientRect().right)")
    assert max(boxes) <= width
    smallest = page.eval_on_selector_all(
        "p, a, li, b, span", "els => Math.min(...els.filter(e => e.textContent.trim())"
        ".map(e => parseFloat(getComputedStyle(e).fontSize)))")
    assert smallest >= 12
    heading = page.get_by_text("arXiv 每日速递 ·" if language == "zh" else "arXiv digest ·").bounding_box()
    assert heading is not None and heading["width"] <= width - 30
    shot = page.screenshot(clip={"x": heading["x"], "y": heading["y"], "width": min(heading["width"], 300),
                                 "height": heading["height"]})
    screen = mean_luminance(page.screenshot())
    if browser.mode == "light":
        assert screen > 200  # a light page
    else:
        assert screen < 70  # the whole screen is dark, not a bright page with dark islands
    shades = sorted(luminance(p) for p in png_pixels(shot))
    background, ink = shades[len(shades) // 2], (shades[0] if browser.mode == "light" else shades[-1])
    if browser.mode == "light":
        assert background > 200 and ink < 80  # dark text on a light card
    else:
        assert background < 80 and ink > 170  # light text on a dark card
    page.close()


def test_a_long_day_renders_without_sideways_scrolling_on_a_phone(browser) -> None:  # type: ignore[no-untyped-def]
    html = DigestRenderer().render(make_digest([("learning", many_papers(60))])).html
    page = open_page(browser, 375)
    page.set_content(html)

    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.get_by_text("网页版完整内容").first.is_visible()
    page.close()
