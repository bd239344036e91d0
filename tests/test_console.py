"""The web console at /ui in a real headless browser (Debian's chromium and chromium-driver), against a real
gateway process and a real ranker with Redis and Milvus; plus the JSON endpoints it reads.

Nothing the page loads comes from the network: the browser runs with every host but loopback unreachable.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seqrec.services.gateway.http_app import create_app
from seqrec.shared.bundle import HISTORIES, Bundle
from seqrec.shared.local_services import ManagedProcess, free_port, start_service
from tests.test_gateway import _settings, serving_ranker

KEY = "console-test-key-1"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUERIES = ("user_to_item", "contextual", "sequential", "item_to_item")


@pytest.fixture(scope="module")
def ranker(trained_bundle, redis_server, milvus_server) -> Iterator[tuple[str, Path]]:
    """A real ranker on the trained test bundle, in its own Redis database (events below change histories)."""
    path = trained_bundle[0]
    with serving_ranker(path, f"redis://{redis_server.address}/5", milvus_server) as address:
        yield address, path


def test_console_endpoints(ranker):
    address, path = ranker
    bundle = Bundle.open(path)
    with TestClient(create_app(_settings(address, SEQREC_API_KEYS=KEY))) as client:
        assert client.get("/ui").status_code == 200 and client.get("/ui/assets/console.js").status_code == 200
        assert client.get("/v1/model").status_code == 401  # the data needs the key; the page does not
        headers = {"X-API-Key": KEY}
        info = client.get("/v1/model", headers=headers).json()
        assert info["bundle_version"] == bundle.version and info["metadata_columns"] == ["genre", "in_stock"]
        users = info["example_user_ids"]
        assert 0 < len(users) <= 20
        row = next(r for r in bundle.iter_jsonl(HISTORIES) if r["user_id"] == users[0])
        history = client.get("/v1/history", params={"user_id": users[0], "limit": 5}, headers=headers).json()
        assert [i["item_id"] for i in history["items"]] == row["items"][-5:]
        assert all(i["display_name"].startswith("Series ") for i in history["items"])
        report = client.get("/v1/model/report", headers=headers)
        assert report.status_code == 200 and "Training report" in report.text and "Markov" in report.text
        bad = client.get("/v1/history", params={"user_id": "u", "limit": -1}, headers=headers)
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "limit"
        missing = client.get("/v1/history", headers=headers)
        assert missing.status_code == 400 and missing.json()["error"]["field"] == "user_id"


@pytest.fixture(scope="module")
def gateway(ranker, tmp_path_factory) -> Iterator[str]:
    """`seqrec serve gateway` as its own process with an API key; yields its base URL."""
    port = free_port()
    process: ManagedProcess = start_service("gateway", {
        "SEQREC_RANKER": ranker[0], "SEQREC_GATEWAY_ADDRESS": f"127.0.0.1:{port}",
        "SEQREC_GATEWAY_GRPC_ADDRESS": f"127.0.0.1:{free_port()}", "SEQREC_API_KEYS": KEY,
        "SEQREC_LOG_FORMAT": "json"}, port, tmp_path_factory.mktemp("gateway-logs"))
    yield f"http://127.0.0.1:{port}"
    process.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless chromium through chromium-driver; the network beyond loopback is cut off for it."""
    if not (os.access(CHROMEDRIVER, os.X_OK) and os.access(CHROMIUM, os.X_OK)):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (see .ci/run)")
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1500,1100", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                 "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(condition, timeout: float = 20.0, what: str = "the page"):
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:  # read while the page was redrawing that list: look again
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not get there within {timeout} s")


def _answers(driver) -> dict[str, list[str]]:
    from selenium.webdriver.common.by import By

    return {q: [li.get_attribute("data-item") for li in
                driver.find_elements(By.CSS_SELECTOR, f'.answer[data-query="{q}"] li[data-item]')] for q in QUERIES}


def test_the_console_in_a_browser(gateway, ranker, browser, tmp_path):
    """Ask for the key, pick a user, see the history and the four answers, filter, send an event and watch
    user_to_item change, open the training report; screenshots of the main views land in docs/ when asked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    driver.get(f"{gateway}/ui")
    status = driver.find_element(By.ID, "status")
    _wait(lambda: "API key" in status.text, what="the request for a key")
    driver.find_element(By.ID, "api-key").send_keys(KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    version = Bundle.open(ranker[1]).version
    _wait(lambda: version in driver.find_element(By.ID, "model-version").text, what="the model version")
    driver.get_log("browser")  # drop the 401 of the first, keyless call: the page asked for the key as it should

    picker = Select(driver.find_element(By.ID, "user-picker"))
    user = picker.options[1].get_attribute("value")
    picker.select_by_value(user)
    answers = _wait(lambda: (a := _answers(driver)) and all(len(v) == 10 for v in a.values()) and a,
                    what="the four answers")
    history = [li.get_attribute("data-item") for li in driver.find_elements(By.CSS_SELECTOR, "#history li")]
    assert history and all(driver.find_element(By.ID, "history").find_elements(By.CLASS_NAME, "name"))
    window = Bundle.open(ranker[1]).max_len - 1  # the items the encoder reads, excluded as seen by default
    assert not set(answers["user_to_item"]) & set(history[-window:])
    names = driver.find_elements(By.CSS_SELECTOR, ".answer .name")
    assert names and all(n.text.startswith("Series ") for n in names)  # display names, not ids
    assert driver.find_elements(By.CSS_SELECTOR, ".answer .chip")  # metadata shown
    if os.environ.get("SEQREC_SCREENSHOTS"):
        driver.save_screenshot(str(Path(os.environ["SEQREC_SCREENSHOTS"]) / "console_answers.png"))

    filters = driver.find_element(By.ID, "filters")
    filters.send_keys('{"meta.genre": "comedy"}')
    driver.find_element(By.ID, "recommend").click()
    genres = "//*[contains(@class,'answer')]//*[contains(@class,'chip') and starts-with(text(),'genre')]"
    _wait(lambda: (chips := [c.text for c in driver.find_elements(By.XPATH, genres)])
          and set(chips) == {"genre: comedy"}, what="comedy-only answers")
    filters.clear()

    before = _wait(lambda: _answers(driver)["user_to_item"], what="user_to_item")
    driver.find_element(By.ID, "event-item").send_keys(before[0])
    driver.find_element(By.ID, "send-event").click()
    _wait(lambda: "stored" in status.text, what="the event acknowledgement")
    after = _answers(driver)["user_to_item"]
    assert before[0] not in after and after != before  # it is in the history now, and the answer moved on
    assert driver.find_elements(By.CSS_SELECTOR, "#history li")[-1].get_attribute("data-item") == before[0]

    driver.find_element(By.ID, "show-report").click()
    frame = driver.find_element(By.ID, "report")
    _wait(lambda: frame.is_displayed(), what="the report")
    driver.switch_to.frame(frame)
    assert "Training report" in driver.find_element(By.TAG_NAME, "h1").text
    assert driver.find_elements(By.TAG_NAME, "img")
    driver.switch_to.default_content()
    if os.environ.get("SEQREC_SCREENSHOTS"):
        driver.execute_script("document.getElementById('model').scrollIntoView()")
        driver.save_screenshot(str(Path(os.environ["SEQREC_SCREENSHOTS"]) / "console_report.png"))
    logs = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not logs, logs  # no script error, no failed load
