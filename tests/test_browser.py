"""The atlas in a real browser: headless Chromium (Debian packages chromium and chromium-driver,
installed by `make install`) driven by Selenium with the system chromedriver, on a small real home
whose corpus holds an injected script token. Screenshots go to the test's output directory
(printed; run pytest with -s to see the path)."""

import shutil
import time

import pytest

from latent_atlas.report import ReportConfig, build_site
from tests.report_home import inject_script_token

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="no system Chromium: `make install` adds the Debian packages chromium and "
                                       "chromium-driver as root where apt-get is available")


@pytest.fixture(scope="module")
def site(finished_home):
    home = finished_home
    shutil.rmtree(home / "report")
    cluster = inject_script_token(home)
    build_site(home, config=ReportConfig(map_method="umap"))
    return home / "report", cluster


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def no_alert(driver) -> bool:
    """True when no JavaScript dialog is open (an injected alert(1) that ran would open one)."""
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def test_atlas_in_headless_chromium(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    root, cluster = site
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    start = time.perf_counter()
    browser.get((root / "index.html").as_uri())
    load = browser.execute_script("return performance.timing.loadEventEnd - performance.timing.navigationStart")
    print(f"index load: {load} ms (browser), {time.perf_counter() - start:.2f} s (driver)")
    assert no_alert(browser)
    rows = browser.find_elements(By.CSS_SELECTOR, "#cluster-table tbody tr")
    n = len(list((root / "clusters").glob("*.html")))
    assert len(rows) == n and n > 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#center-map a.map-point")) == n
    # the injected token is on the index as text (its top tokens), never as an element
    assert "<script>alert(1)</script>" in browser.find_element(By.ID, "cluster-table").text
    assert browser.execute_script("return document.querySelectorAll('script:not([src])').length") == 0
    browser.save_screenshot(str(shots / "index.png"))

    # filter by the search box: one cluster id's row, and the count says so
    search = browser.find_element(By.ID, "cluster-search")
    search.send_keys("alert(1)")
    visible = [r for r in rows if r.is_displayed()]
    assert 1 <= len(visible) < n
    assert browser.find_element(By.ID, "shown-count").text.startswith(f"{len(visible)} of {n}")
    search.clear()
    search.send_keys(" ")  # an empty search shows every row again
    assert sum(r.is_displayed() for r in rows) == n
    # sort by usage, descending: the first row has the largest usage
    header = browser.find_elements(By.CSS_SELECTOR, "#cluster-table th")[3]
    header.click()
    header.click()
    usage = [float(r.find_elements(By.TAG_NAME, "td")[3].get_attribute("data-sort")) for r in
             browser.find_elements(By.CSS_SELECTOR, "#cluster-table tbody tr")]
    assert usage == sorted(usage, reverse=True)

    # open the injected cluster from its table row
    browser.find_element(By.CSS_SELECTOR, f"#cluster-table a[href='clusters/{cluster}.html']").click()
    assert browser.current_url.endswith(f"clusters/{cluster}.html")
    assert no_alert(browser)
    centres = browser.find_elements(By.CSS_SELECTOR, ".exemplar .context span.c")
    assert centres
    shaded = [e.value_of_css_property("background-color") for e in centres]
    assert all(s.startswith("rgba(230, 85, 13") or s.startswith("rgb(230, 85, 13") for s in shaded), shaded[:3]
    assert all(e.value_of_css_property("outline-style") == "solid" for e in centres[:5])
    assert "<script>alert(1)</script>" in browser.find_element(By.ID, "exemplars").text
    assert browser.execute_script("return typeof window.alert") == "function"  # not replaced, and never called
    browser.execute_script("document.getElementById('exemplars').scrollIntoView()")
    browser.save_screenshot(str(shots / "cluster.png"))

    browser.get((root / "trees" / "token.html").as_uri())
    assert no_alert(browser)
    browser.find_element(By.ID, "expand-all").click()
    assert all(d.get_attribute("open") is not None for d in browser.find_elements(By.TAG_NAME, "details"))
    browser.save_screenshot(str(shots / "tree.png"))
    for name in ("index", "cluster", "tree"):
        assert (shots / f"{name}.png").stat().st_size > 5000
