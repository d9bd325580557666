"""The rating page in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, installed by
``make test``) driven through selenium.

Selenium rather than the DevTools protocol by hand: its clicks are real pointer events on the element (scrolled into
view, refused if it is hidden or covered), which is what a rater does, and ``chromium-driver`` is built from the
same source as ``chromium``, so their versions always match. Selenium is pointed at ``/usr/bin/chromedriver``
explicitly (and ``SE_OFFLINE`` is set) so that its selenium-manager never tries to download a driver or a browser.

The test writes a tiny run folder, has ``sparring rate`` write the page, rates every pair as two raters (the second
after "Start over as a new rater"), checks that a reload keeps the answers, exports them (the download and the text
box), and feeds the exports to ``sparring rate --summarize``. A screenshot of the rated page is saved to
``tmp_path/rating.png`` (the path is printed; ``pytest -s`` shows it) and, when ``SPARRING_SCREENSHOT`` is set, to
that path as well.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli import run_main as run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file()
                                                else None)

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs Debian's chromium and "
                       "chromium-driver)"),
    pytest.mark.skipif(CHROMIUM is not None and CHROMEDRIVER is None,
                       reason="chromedriver is not installed (make test installs Debian's chromium-driver)"),
]

ATTACKS = ["fgsm"] * 4 + ["pgd"] * 4


def rating_for(condition: str, rater: int, k: int) -> int:
    """What the test's raters answer: controls 1, fgsm 1 or 2, pgd 4 or 5."""
    return {"control": 1, "fgsm": 1 + (k + rater) % 2, "pgd": 4 + (k + rater) % 2}[condition]


@pytest.fixture
def browser(tmp_path: Path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager: never download anything
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1000,1400", "--no-first-run", "--no-default-browser-check",
                     f"--user-data-dir={tmp_path / 'profile'}", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver, downloads
    finally:
        driver.quit()


def rate_every_pair(driver, rater_index: int, rater_id: str) -> dict[str, int]:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "rater")
    field.clear()
    field.send_keys(rater_id)
    given = {}
    for k, item in enumerate(driver.find_elements(By.CSS_SELECTOR, "li.pair")):
        pair, condition = item.get_attribute("data-pair"), item.get_attribute("data-condition")
        value = rating_for(condition, rater_index, k)
        item.find_element(By.CSS_SELECTOR, f'input[type="radio"][value="{value}"]').click()
        given[pair] = value
    return given


def export(driver, downloads: Path, rater_id: str) -> dict:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "export").click()
    text = driver.find_element(By.ID, "answers").get_attribute("value")
    data = json.loads(text)
    deadline = time.monotonic() + 20
    files: list[Path] = []
    while time.monotonic() < deadline:  # the download lands a moment later
        files = [p for p in downloads.glob(f"*{rater_id}.json")]
        if files:
            break
        time.sleep(0.2)
    assert files, f"the export did not download a file into {downloads}"
    assert json.loads(files[0].read_text(encoding="utf-8")) == data
    return data


def test_rating_page_in_headless_chromium(tmp_path, browser, monkeypatch, capsys):
    from selenium.webdriver.common.by import By

    driver, downloads = browser
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    clean = rng.random((8, 1, 8, 8)).astype(np.float32)
    adv = np.clip(clean + rng.choice([-0.3, 0.3], clean.shape), 0, 1).astype(np.float32)
    np.savez(run / "examples.npz", clean=clean, adv=adv, labels=np.arange(8), clean_pred=np.arange(8),
             adv_pred=(np.arange(8) + 1) % 10, attack=np.array(ATTACKS))
    (run / "report.json").write_text(json.dumps({"threat": {"norm": "linf", "eps": 0.3}}), encoding="utf-8")

    code, out, err = run_cli(["rate", "run", "--out", "rating.html", "--controls", "4", "--seed", "3"], tmp_path,
                             monkeypatch, capsys)
    assert code == 0, err
    page = tmp_path / "rating.html"
    driver.get(page.as_uri())
    items = driver.find_elements(By.CSS_SELECTOR, "li.pair")
    assert len(items) == 12
    assert {i.get_attribute("data-condition") for i in items} == {"control", "fgsm", "pgd"}
    assert all(not i.text.count("fgsm") and not i.text.count("pgd") and not i.text.count("control") for i in items)
    for image in driver.find_elements(By.CSS_SELECTOR, "li.pair img"):  # decoded and shown at 160 px
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 160
        assert image.size["width"] == 160
    assert "0 of 12 pairs rated" in driver.find_element(By.ID, "progress").text

    first = rate_every_pair(driver, 0, "ann")
    assert "12 of 12 pairs rated" in driver.find_element(By.ID, "progress").text

    driver.refresh()  # the answers are kept in the page (localStorage under its id)
    assert driver.find_element(By.ID, "rater").get_attribute("value") == "ann"
    assert "12 of 12 pairs rated" in driver.find_element(By.ID, "progress").text
    for item in driver.find_elements(By.CSS_SELECTOR, "li.pair"):
        checked = item.find_element(By.CSS_SELECTOR, 'input[type="radio"]:checked')
        assert int(checked.get_attribute("value")) == first[item.get_attribute("data-pair")]

    driver.set_window_size(1000, min(6000, driver.execute_script("return document.body.scrollHeight") + 40))
    driver.execute_script("window.scrollTo(0, 0)")
    screenshot = tmp_path / "rating.png"
    assert driver.save_screenshot(str(screenshot))
    saved = [screenshot]
    if os.environ.get("SPARRING_SCREENSHOT"):
        saved.append(Path(os.environ["SPARRING_SCREENSHOT"]))
        saved[-1].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, saved[-1])
    with capsys.disabled():  # past the CLI's captured output: shown with pytest -s
        sys.stdout.write(f"\nrating page screenshot: {', '.join(map(str, saved))}\n")
    driver.set_window_size(1000, 1400)

    exported_ann = export(driver, downloads, "ann")
    assert exported_ann["generator"] == "sparring-rate" and exported_ann["rater"] == "ann"
    assert exported_ann["scale"] == 5 and exported_ann["n_pairs"] == 12
    assert exported_ann["question"] == "How different do these two images look?"
    assert {a["pair"]: a["rating"] for a in exported_ann["answers"]} == first
    assert {a["condition"] for a in exported_ann["answers"]} == {"control", "fgsm", "pgd"}

    driver.find_element(By.ID, "reset").click()  # a second rater on the same machine
    driver.switch_to.alert.accept()
    assert "0 of 12 pairs rated" in driver.find_element(By.ID, "progress").text
    assert driver.find_elements(By.CSS_SELECTOR, 'input[type="radio"]:checked') == []
    second = rate_every_pair(driver, 1, "bob")
    exported_bob = export(driver, downloads, "bob")
    assert {a["pair"]: a["rating"] for a in exported_bob["answers"]} == second
    assert exported_bob["page_id"] == exported_ann["page_id"]

    for name, data in (("ann.json", exported_ann), ("bob.json", exported_bob)):
        (tmp_path / name).write_text(json.dumps(data), encoding="utf-8")
    code, out, err = run_cli(["rate", "--summarize", "ann.json", "bob.json", "--json", "summary.json"], tmp_path,
                             monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    rows = {row["condition"]: row for row in summary["conditions"]}
    assert rows["control"]["mean"] == 1.0 and rows["control"]["n_ratings"] == 8
    assert rows["pgd"]["verdict"] == "not shown equivalent" and rows["pgd"]["mean"] == 4.5
    assert rows["fgsm"]["n_raters"] == 2
    assert summary["agreement"]["pairs_rated_by_two_or_more"] == 12
    assert summary["agreement"]["krippendorff_alpha_ordinal"] is not None
    assert "±0.5" in out
