"""End to end in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium): load the page, upload a query photo, see it as the top result, click a library photo
and see that one on top. A screenshot is saved in the test's tmp folder as an artifact.

Run alone with ``pytest -m browser``; ``tests/browser_setup.sh`` installs what it needs. The
browser never downloads itself: the driver path is given, so Selenium Manager is not used."""

import shutil
from pathlib import Path

import pytest

from edge_demo import photos
from mghash_tf.core.encoder import TFLiteEncoder
from test_edge_cli import make_photos, model  # noqa: F401
from test_edge_serve import running_server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TIMEOUT_S = 30


@pytest.fixture
def browser(tmp_path):
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}: run tests/browser_setup.sh "
                    "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: run tests/browser_setup.sh")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for_results(driver, expected_top: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def top(d):
        cards = d.find_elements(By.CSS_SELECTOR, "#results figure")
        return cards and cards[0].get_attribute("data-name") == expected_top and cards

    cards = WebDriverWait(driver, TIMEOUT_S).until(
        top, message=f"no results with {expected_top} on top; "
                     f"error box: {driver.find_element(By.ID, 'error').text!r}")
    return cards


def test_upload_and_click_search_in_headless_chromium(browser, model, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    root = tmp_path / "photos"
    make_photos(root)
    index_path = tmp_path / "photos.mgh"
    photos.index_folder(root, TFLiteEncoder(model), index_path)
    query = tmp_path / "query.jpg"  # a copy outside the folder: what a user would pick
    shutil.copy(root / "cats/b.jpg", query)
    with running_server(index_path, model, root) as httpd:
        host, port = httpd.server_address[:2]
        browser.get(f"http://{host}:{port}/")
        WebDriverWait(browser, TIMEOUT_S).until(
            lambda d: "8 photos" in d.find_element(By.ID, "stats").text
            and len(d.find_elements(By.CSS_SELECTOR, "#library figure")) == 8)
        browser.find_element(By.ID, "k").clear()
        browser.find_element(By.ID, "k").send_keys("5")
        browser.find_element(By.ID, "file").send_keys(str(query))
        cards = _wait_for_results(browser, "cats/b.jpg")
        assert len(cards) == 5 and "d=0" in cards[0].text
        status = browser.find_element(By.ID, "status").text
        assert "5 results of 8 for uploaded image" in status and " ms" in status
        # Every result thumbnail really loaded (served by id, decodable by the browser).
        WebDriverWait(browser, TIMEOUT_S).until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"))
        assert not browser.find_element(By.ID, "weights").is_displayed()
        browser.save_screenshot(str(tmp_path / "serve_screenshot.png"))

        # Per-scale weights: choosing them re-runs the same query with a scales: spec.
        Select(browser.find_element(By.ID, "granularity")).select_by_value("scales")
        assert browser.find_element(By.ID, "weights").is_displayed()
        WebDriverWait(browser, TIMEOUT_S).until(
            lambda d: "granularity scales:coarse=1,fine=1" in d.find_element(By.ID, "status").text)
        _wait_for_results(browser, "cats/b.jpg")

        library = browser.find_elements(By.CSS_SELECTOR, "#library figure")
        target = next(c for c in library if c.get_attribute("data-name") == "dogs/c.png")
        target.click()
        _wait_for_results(browser, "dogs/c.png")
        assert "for photo dogs/c.png" in browser.find_element(By.ID, "status").text
        assert not browser.find_element(By.ID, "error").is_displayed()

        # A failed upload clears the previous answers: they are not answers for the bad file.
        bad = tmp_path / "notes.jpg"
        bad.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        WebDriverWait(browser, TIMEOUT_S).until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert browser.find_elements(By.CSS_SELECTOR, "#results figure") == []
        # The page names its icon inline, so the browser asks for no /favicon.ico.
        assert browser.execute_script("return document.querySelector('link[rel=icon]').href").startswith("data:")
    shot = tmp_path / "serve_screenshot.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
