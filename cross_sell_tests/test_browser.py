"""The Dagster UI in a real browser (headless Chromium), used the way a person uses it.

Open the asset graph, expand the groups and find the product's assets, click "Materialize all",
follow the run to success, then open the pictures attached to the materializations: the affinity
heatmap and the top-recommendations table. Screenshots of every step are saved under
``test-artifacts/browser/`` (git-ignored; ``CROSS_SELL_TEST_ARTIFACTS`` overrides the folder).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from cross_sell.definitions import build_definitions
from cross_sell_tests.conftest import PROJECT_ROOT, cli_env
from cross_sell_tests.devserver import DevServer, dagster_dev

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS_ENV = "CROSS_SELL_TEST_ARTIFACTS"
ELLIPSIS = "\u2026"
MAX_ZOOM_OUTS = 8

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
    ),
]


@pytest.fixture
def artifacts() -> Path:
    folder = Path(os.environ.get(ARTIFACTS_ENV) or PROJECT_ROOT / "test-artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "failure.png").unlink(missing_ok=True)  # the step screenshots are overwritten run by run
    return folder


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile and nothing that phones home (the network is closed)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1920,1600",
    ]:
        options.add_argument(flag)
    # An explicit driver path: Selenium never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: WebDriver, artifacts: Path, name: str) -> None:
    path = artifacts / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000, f"no screenshot {path}"


def _wait(driver: WebDriver, seconds: float = 60) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.25)


def _button(driver: WebDriver, text: str, seconds: float = 60) -> WebElement:
    return _wait(driver, seconds).until(ec.element_to_be_clickable((By.XPATH, f"//button[normalize-space()='{text}']")))


def _dismiss_community_dialog(driver: WebDriver) -> None:
    """A fresh instance greets local users with a newsletter dialog once; a person clicks Skip."""
    try:
        _button(driver, "Skip", seconds=8).click()
    except TimeoutException:
        return
    _wait(driver, 10).until(ec.invisibility_of_element_located((By.XPATH, "//button[normalize-space()='Skip']")))


def _shows(label: str, name: str) -> bool:
    """Does a node label show this asset name (long names are shortened in the middle with …)?"""
    if ELLIPSIS not in label:
        return label == name
    head, tail = label.split(ELLIPSIS, 1)
    return name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail)


def _node_labels(driver: WebDriver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "[class*='AssetNode_assetName']")]


def _graph_shows(driver: WebDriver, names: list[str]) -> bool:
    """Is every asset on the graph, each shown once (names are the last part of each asset key)?"""
    remaining = _node_labels(driver)
    for name in sorted(names, key=len, reverse=True):
        match = next((label for label in remaining if _shows(label, name)), None)
        if match is None:
            return False
        remaining.remove(match)
    return not remaining


def _open_expanded_graph(driver: WebDriver, url: str, names: list[str]) -> None:
    driver.get(f"{url}/asset-groups")
    _button(driver, "Materialize all")
    _dismiss_community_dialog(driver)
    # Groups start collapsed; the graph's settings menu expands them all (and the UI remembers).
    _wait(driver).until(
        ec.element_to_be_clickable((By.XPATH, "//button[not(normalize-space()) and .//*[@aria-label='settings']]"))
    ).click()
    toggle = _wait(driver).until(
        ec.element_to_be_clickable((By.XPATH, "//button[@role='menuitem'][contains(normalize-space(), 'all groups')]"))
    )
    if toggle.text.startswith("Expand all groups"):
        toggle.click()
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    _wait(driver, 10).until(ec.invisibility_of_element_located((By.XPATH, "//button[@role='menuitem']")))
    # The graph renders only the nodes in view: zoom out (as a person would) until all of them are.
    for _ in range(MAX_ZOOM_OUTS):
        try:
            _wait(driver, 3).until(lambda d: _graph_shows(d, names))
            return
        except TimeoutException:
            driver.find_element(By.XPATH, "//button[.//*[@aria-label='zoom_out']]").click()
    raise AssertionError(f"graph shows {sorted(_node_labels(driver))}, expected {sorted(names)}")


def _open_markdown_entry(driver: WebDriver, url: str, asset: str, label: str) -> WebElement:
    """Open an asset's page and the markdown metadata entry ``label`` (long ones open in a dialog)."""
    driver.get(f"{url}/assets/{asset}")
    key = _wait(driver).until(ec.presence_of_element_located((By.XPATH, f"//td//*[normalize-space(text())='{label}']")))
    row = key.find_element(By.XPATH, "./ancestor::tr[1]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    opener = row.find_elements(By.XPATH, ".//a[normalize-space()='[Show Markdown]']")
    if opener:
        opener[0].click()
        return _wait(driver).until(ec.visibility_of_element_located((By.CSS_SELECTOR, "[role='dialog']")))
    return row


def _walk_through(browser: WebDriver, server: DevServer, artifacts: Path, names: list[str]) -> None:
    """The person's path through the UI, a screenshot at each step."""
    # 1. The asset graph, groups expanded: every asset of the product is on it.
    _open_expanded_graph(browser, server.url, names)
    _shot(browser, artifacts, "01_asset_graph.png")

    # 2. Materialize everything with one click; the UI confirms the launch with a link to the run.
    _button(browser, "Materialize all").click()
    view = _wait(browser).until(
        ec.element_to_be_clickable((By.XPATH, "//a[contains(@href, '/runs/')][normalize-space()='View']"))
    )
    run_id = view.get_attribute("href").rstrip("/").rsplit("/", 1)[-1]
    _shot(browser, artifacts, "02_run_launched.png")

    # 3. Follow the run in the UI until its status reads Success (or fail on Failure).
    view.click()
    finished = " or ".join(f"normalize-space(text())='{s}'" for s in ["Success", "Failure", "Canceled"])
    status = _wait(browser, 300).until(ec.visibility_of_element_located((By.XPATH, f"//*[{finished}]")))
    _shot(browser, artifacts, "03_run.png")
    assert status.text == "Success", server.log_tail()
    assert server.wait_for_run(run_id, timeout=30)["status"] == "SUCCESS"  # the UI agrees with the server

    # 4. Back on the graph, every asset now shows its fresh materialization (a green node).
    _open_expanded_graph(browser, server.url, names)
    green = "[class*='AssetNode_minimalAssetNodeBox'][style*='--color-background-green']"
    try:
        _wait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, green)) == len(names))
    except TimeoutException:
        raise AssertionError(f"{len(browser.find_elements(By.CSS_SELECTOR, green))} of {len(names)} nodes green") from None
    _shot(browser, artifacts, "04_asset_graph_materialized.png")

    # 5. The affinity heatmap renders as a picture on the product_affinity page.
    dialog = _open_markdown_entry(browser, server.url, "product_affinity", "affinity_heatmap")
    picture = _wait(browser).until(
        lambda d: next(iter(dialog.find_elements(By.CSS_SELECTOR, "img[src^='data:image/png;base64,']")), None)
    )
    _wait(browser).until(lambda d: d.execute_script("return arguments[0].complete", picture))
    natural_width, shown_width = browser.execute_script(
        "return [arguments[0].naturalWidth, arguments[0].getBoundingClientRect().width]", picture
    )
    _shot(browser, artifacts, "05_affinity_heatmap.png")
    assert natural_width >= 300 and shown_width >= 300  # decoded and laid out, not a broken icon

    # 6. The top recommendations render as a table on the cross_sell_recommendations page.
    holder = _open_markdown_entry(browser, server.url, "cross_sell_recommendations", "top_recommendations")
    table = _wait(browser).until(lambda d: next(iter(holder.find_elements(By.TAG_NAME, "table")), None))
    headers = [th.text for th in table.find_elements(By.TAG_NAME, "th")]
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    _shot(browser, artifacts, "06_top_recommendations.png")
    assert {"customer_id", "product_category", "score", "reason"} <= set(headers)
    assert rows and all(len(r.find_elements(By.TAG_NAME, "td")) == len(headers) for r in rows)


def test_materialize_the_product_from_the_asset_graph(
    browser: WebDriver, artifacts: Path, generated_data: Path, tmp_path: Path, dagster_home: Path
) -> None:
    env = cli_env(generated_data, tmp_path / "warehouse" / "cross_sell.duckdb", dagster_home)
    env["CROSS_SELL_LANDING_DIR"] = str(tmp_path / "landing")  # nothing lands during the test
    graph = build_definitions().resolve_asset_graph()
    names = [key.path[-1] for key in graph.get_all_asset_keys()]

    with dagster_dev(env, tmp_path / "dagster_dev.log") as server:
        try:
            _walk_through(browser, server, artifacts, names)
        except BaseException:
            browser.save_screenshot(str(artifacts / "failure.png"))  # what the page showed when it failed
            raise
    assert server.leftover == [] and server.exit_code == 0, server.log_tail()
