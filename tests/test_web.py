"""The web page at / in a real browser: headless Chromium driven through Selenium, against the
real `retrain serve` on a loopback port with tiny generated images.

The whole flow (upload a zip, read the pre-flight report, start a toy job, watch it reach
100%, open the model, see its confusion matrix, try an image), a class folder named like an
HTML tag that must stay text, the token form, and a phone-width layout. Screenshots of each
page go to the test's temporary folder; with RETRAIN_WRITE_SCREENSHOTS=1 the job page and
"try it" at 1280x800 also go to docs/images/ for the README.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest

from fit_fixtures import REPO, make_colour_data, make_colour_split
from serve_fixtures import TOY_JOB, Server, colour_zip, kill_workers
from web_fixtures import (console_errors, missing, screenshot, small_png, start_browser, stop_measuring, viewport,
                          wait_for)

pytestmark = pytest.mark.slow

HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_ARCHIVE = "<svg onload=alert(2)>"  # the upload's file name becomes the dataset's name
TOKEN = "web-test-token-0123456789"
DESKTOP, PHONE = (1280, 800), (390, 844)
# A 32 px PNG of one colour, dropped on the try-it zone or pasted into the page, as a
# DataTransfer carries a user's file (Selenium has no native file drag and drop).
DROP_OR_PASTE = """
const [how, colour] = arguments;
const canvas = Object.assign(document.createElement("canvas"), {width: 32, height: 32});
const g = canvas.getContext("2d");
g.fillStyle = colour;
g.fillRect(0, 0, 32, 32);
canvas.toBlob((blob) => {
  const files = new DataTransfer();
  files.items.add(new File([blob], `${how}.png`, {type: "image/png"}));
  if (how === "drop") {
    document.querySelector(".drop").dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
  } else {
    document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: files, bubbles: true}));
  }
}, "image/png");
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    driver = start_browser(tmp_path_factory.mktemp("chromium") / "profile")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The server every test but the token one drives; a data root with one folder, so the
    page offers it."""
    folder = tmp_path_factory.mktemp("web")
    make_colour_data(folder / "roots" / "shapes")
    server = Server(folder / "home", "--data-root", str(folder / "roots")).start()
    yield server
    server.stop()
    kill_workers(server.home)
    stop_measuring(server.home)


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def one(driver, selector):
    found = css(driver, selector)
    if not found:
        raise LookupError(selector)
    return found[0]


def go(driver, server, route: str, ready: str, what: str):
    """Load the page afresh at `route` and wait until `ready` (a CSS selector) is on it."""
    driver.get("about:blank")  # from a page of the same server, a new hash alone would not reload
    driver.get(f"{server.url}/{route}")
    wait_for(driver, lambda d: css(d, ready), what)


def fill(element, value) -> None:
    element.clear()
    element.send_keys(str(value))


def choose(element, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(element).select_by_value(value)


def job_log(server: Server):
    def diagnose():
        jobs = server.get("/v1/jobs")[1].get("jobs", [])
        return "\n".join(f"job {j['id']} {j['state']}: {j.get('error')}\n"
                         + str(server.get(f"/v1/jobs/{j['id']}/log?tail=30")[1]) for j in jobs)
    return diagnose


def shoot(driver, tmp: Path, name: str, docs: str | None = None) -> None:
    """A full-page screenshot in the test's folder; with RETRAIN_WRITE_SCREENSHOTS=1 and `docs`,
    the 1280x800 viewport as a small PNG in docs/images/ too."""
    screenshot(driver, tmp / f"{name}.png")
    if docs and os.environ.get("RETRAIN_WRITE_SCREENSHOTS") == "1":
        small_png(screenshot(driver, tmp / f"{name}-viewport.png", full_page=False), REPO / "docs" / "images" / docs)


def test_the_whole_flow(browser, site, tmp_path):
    """Upload a zip, read the report, train a toy job to 100%, open the model, try an image."""
    driver, server = browser, site
    viewport(driver, *DESKTOP)
    archive = colour_zip(tmp_path)
    go(driver, server, "", "h1", "the jobs list")
    assert one(driver, "h1").text == "Jobs"
    assert [a.text for a in css(driver, "nav a")] == ["Jobs", "New job", "Models"]
    one(driver, 'nav a[href="#/new"]').click()
    wait_for(driver, lambda d: css(d, '#f-backbone option[value="tiny_cnn"]'), "the backbones to load")
    assert one(driver, "#f-backbone").get_attribute("value") == "mobilenet_v2"
    assert one(driver, "#f-alpha").get_attribute("value") == "0.35"
    assert one(driver, "#f-image-size").get_attribute("value") == "96"
    wait_for(driver, lambda d: css(d, "#data-folder"), "the data root's folder to be offered")
    assert "shapes" in one(driver, "#data-folder").text

    # Upload: the file input is the drop zone's; the report lists the classes and counts.
    one(driver, "#archive").send_keys(str(archive))
    wait_for(driver, lambda d: one(d, "#report").is_displayed(), "the pre-flight report", diagnose=job_log(server))
    assert [th.text for th in css(driver, "#report .class-name")] == ["cyan", "magenta", "yellow"]
    assert one(driver, "#report .dataset-name").text == "colours"
    assert "36 files" in one(driver, "#report").text
    wait_for(driver, lambda d: one(d, "#f-freeze-hint").text.startswith("Auto will"), "what freeze auto picks")
    assert one(driver, "#f-model").get_attribute("value") == "colours"

    # The toy job (serve_fixtures.TOY_JOB): a tiny CNN from scratch on 32 px colours.
    choose(one(driver, "#f-backbone"), TOY_JOB["backbone"])
    choose(one(driver, "#f-weights"), TOY_JOB["weights"])
    fill(one(driver, "#f-image-size"), TOY_JOB["image_size"])
    choose(one(driver, "#f-freeze"), TOY_JOB["freeze"])
    fill(one(driver, "#f-epochs"), TOY_JOB["epochs"])
    fill(one(driver, "#f-fine-tune-epochs"), TOY_JOB["fine_tune_epochs"])
    one(driver, "#job-form summary").click()
    fill(one(driver, "#f-batch-size"), TOY_JOB["batch_size"])
    fill(one(driver, "#f-learning-rate"), TOY_JOB["learning_rate"])
    fill(one(driver, "#f-fine-tune-learning-rate"), TOY_JOB["fine_tune_learning_rate"])
    rest = {k: TOY_JOB[k] for k in ("schedule", "label_smoothing", "feature_shift")}
    fill(one(driver, "#f-extra"), str(rest).replace("'", '"'))
    shoot(driver, tmp_path, "new-job")
    one(driver, "#train").click()

    # The job page: live progress to 100%, the curves drawn from the events, the log.
    wait_for(driver, lambda d: re.search(r"#/jobs/\w+$", d.current_url), "the job page")
    job = driver.current_url.rsplit("/", 1)[1]
    wait_for(driver, lambda d: css(d, ".status .pct"), "the job's progress bar")
    driver.execute_script(  # every percentage and time left the page shows, as the events arrive
        "const pct = document.querySelector('.status .pct'), eta = document.querySelector('.status .eta');"
        "window.__shown = [pct.textContent]; window.__eta = [];"
        "new MutationObserver(() => { window.__shown.push(pct.textContent); window.__eta.push(eta.textContent); })"
        ".observe(document.querySelector('.status'), {childList: true, characterData: true, subtree: true});")
    wait_for(driver, lambda d: one(d, ".status .state").text == "succeeded", "the job to succeed",
             timeout=240, diagnose=job_log(server))
    assert one(driver, ".status .pct").text == "100%"
    shown = [int(p.rstrip("%")) for p in driver.execute_script("return window.__shown")]
    assert shown == sorted(shown) and shown[-1] == 100 and any(0 < p < 100 for p in shown), shown
    times_left = driver.execute_script("return window.__eta")
    assert any(re.fullmatch(r"· about [\w ]+ left in phase [12]", t) for t in times_left), times_left
    assert one(driver, ".status [role=progressbar]").get_attribute("aria-valuenow") == "100"
    epochs = TOY_JOB["epochs"] + TOY_JOB["fine_tune_epochs"]
    wait_for(driver, lambda d: one(d, "#loss-chart").get_attribute("data-points") == str(epochs), "4 loss points")
    assert one(driver, "#accuracy-chart").get_attribute("data-points") == str(epochs)
    wait_for(driver, lambda d: "done: best epoch" in one(d, "#log").text, "the log's tail")
    assert not one(driver, "#cancel").is_enabled() and not one(driver, "#resume").is_enabled()
    assert server.get(f"/v1/jobs/{job}")[1]["state"] == "succeeded"
    shoot(driver, tmp_path, "job", docs="web-job.png")

    # The model version: accuracy, per-class table, confusion matrix, the curl line.
    one(driver, "#open-model").click()
    wait_for(driver, lambda d: d.execute_script(
        "const i = document.getElementById('confusion-matrix'); return i && i.complete && i.naturalWidth > 0"),
        "the confusion matrix image to load")
    assert one(driver, "h1").text == "colours · version 1"
    wait_for(driver, lambda d: len(css(d, "#per-class tbody tr")) == 3, "the per-class table")
    assert [th.text for th in css(driver, "#per-class tbody th")] == ["cyan", "magenta", "yellow"]
    curl = one(driver, "#curl").text
    assert ":predict" in curl and f"{server.url}/v1/models/colours/versions/1:predict" in curl
    assert one(driver, "#accuracy").text.endswith("%")
    wait_for(driver, lambda d: css(d, "p#misclassified, #misclassified figure img"), "the misclassified images")
    shoot(driver, tmp_path, "model")

    # Try it: an image of each colour through the file input; each card's top label.
    one(driver, 'a.button[href^="#/try/"]').click()
    wait_for(driver, lambda d: css(d, "#try-files"), "the try-it page")
    colours = ("cyan", "magenta", "yellow")
    images = make_colour_split(tmp_path / "try", 1, seed=7)
    one(driver, "#try-files").send_keys("\n".join(str(p) for p in images))
    wait_for(driver, lambda d: len(css(d, ".result .top5 li.best .label")) == 3, "three predictions")
    tops = {one(card, ".file").text: one(card, "li.best .label").text for card in css(driver, ".result")}
    assert tops == {f"{c}_000.png": c for c in colours}
    assert len(css(driver, ".result:first-child .top5 li")) == 3  # 3 classes: the top 5 has 3
    shoot(driver, tmp_path, "try", docs="web-try.png")
    # Dropped on the zone, and pasted: a PNG drawn in the page, handed over as a user's would be.
    for how, colour in (("drop", "magenta"), ("paste", "cyan")):
        driver.execute_script(DROP_OR_PASTE, how, colour)
        wait_for(driver, lambda d: one(d, ".result .file").text == f"{how}.png"
                 and one(d, ".result li.best .label").text != "…", f"the {how}ped image's labels")
        assert one(driver, ".result li.best .label").text == colour

    # Back on the list: the job succeeded at 100%.
    one(driver, 'nav a[href="#/jobs"]').click()
    wait_for(driver, lambda d: css(d, f'tr[data-job="{job}"] .state-succeeded'), "the job in the list")
    assert one(driver, f'tr[data-job="{job}"] .pct').text == "100%"
    shoot(driver, tmp_path, "jobs")
    assert console_errors(driver) == []


def test_a_hostile_class_name_stays_text(browser, site, tmp_path):
    """Class folder and archive names that are HTML show as text, in the report and on the
    model's pages (per-class table, mistakes, top labels): no element made, no alert."""
    driver, server = browser, site
    viewport(driver, *DESKTOP)
    root = make_colour_data(tmp_path / "hostile", train=4, validation=2, classes=("cyan", "yellow"))
    for split in ("train", "validation"):
        (root / split / "yellow").rename(root / split / HOSTILE)
    archive = tmp_path / f"{HOSTILE_ARCHIVE}.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(root.rglob("*.png")):
            z.write(f, f.relative_to(tmp_path))
    go(driver, server, "#/new", "#archive", "the new-job page")
    driver.execute_script("window.__alerted = false; window.alert = () => { window.__alerted = true; };")
    one(driver, "#archive").send_keys(str(archive))
    wait_for(driver, lambda d: one(d, "#report").is_displayed(), "the pre-flight report")
    assert [th.text for th in css(driver, "#report .class-name")] == [HOSTILE, "cyan"]
    assert one(driver, "#report .dataset-name").text == HOSTILE_ARCHIVE
    assert css(driver, 'img[src="x"]') == [] and css(driver, "#report svg, #report img") == []
    assert driver.execute_script("return window.__alerted") is False
    assert one(driver, "#f-model").get_attribute("value") == "svg-onload-alert-2"
    shoot(driver, tmp_path, "hostile")

    # A model of those classes, barely trained so that it gets some images wrong.
    dataset = next(d for d in server.get("/v1/datasets")[1]["datasets"] if d["name"] == HOSTILE_ARCHIVE)
    done = server.wait(server.submit(dataset["id"], model="hostile", epochs=1, fine_tune_epochs=0,
                                     learning_rate=1e-6))
    assert done["state"] == "succeeded", done
    driver.execute_script("location.hash = '#/models/hostile/1'")  # the same document: alert() stays watched
    wait_for(driver, lambda d: len(css(d, "#per-class tbody th")) == 2, "the per-class table")
    assert [th.text for th in css(driver, "#per-class tbody th")] == [HOSTILE, "cyan"]
    assert HOSTILE in one(driver, ".facts").text
    wrong = round(done["metrics"]["images"] * (1 - done["metrics"]["accuracy"]))
    wait_for(driver, lambda d: css(d, "p#misclassified") or len(css(d, "#misclassified img")) == wrong,
             "the misclassified thumbnails")
    if wrong:
        wait_for(driver, lambda d: all(d.execute_script("return arguments[0].naturalWidth", img) > 0
                                       for img in css(d, "#misclassified img")), "the thumbnails to load")
        labels = {e.text for e in css(driver, "#misclassified .truth, #misclassified .predicted")}
        assert labels == {HOSTILE, "cyan"}
    shoot(driver, tmp_path, "hostile-model")
    driver.execute_script("location.hash = '#/try/hostile/1'")
    wait_for(driver, lambda d: css(d, "#try-files"), "the try-it page")
    assert HOSTILE in one(driver, ".drop").text
    one(driver, "#try-files").send_keys(str(sorted((root / "validation" / HOSTILE).glob("*.png"))[0]))
    wait_for(driver, lambda d: len(css(d, ".result .top5 .label")) == 2, "the top labels")
    assert {e.text for e in css(driver, ".result .top5 .label")} == {HOSTILE, "cyan"}
    assert css(driver, 'img[src="x"]') == [] and css(driver, "main svg") == []
    assert driver.execute_script("return window.__alerted") is False
    shoot(driver, tmp_path, "hostile-try")


def test_the_page_asks_for_a_token_once(browser, tmp_path):
    """With a token the page loads (its files need none), asks for the token, refuses a wrong
    one, and shows the jobs list once given the right one."""
    driver = browser
    viewport(driver, *DESKTOP)
    (tmp_path / "token").write_text(TOKEN + "\n")
    server = Server(tmp_path / "home", "--token-file", str(tmp_path / "token")).start()
    try:
        driver.get(server.url + "/")
        wait_for(driver, lambda d: one(d, "#token-form").is_displayed(), "the token form")
        assert one(driver, 'label[for="token-input"]').text == "Access token"
        assert driver.switch_to.active_element.get_attribute("id") == "token-input"
        fill(one(driver, "#token-input"), "not-the-token-at-all")
        one(driver, "#token-form button").click()
        wait_for(driver, lambda d: "refused" in one(d, "#token-why").text and one(d, "#token-form").is_displayed(),
                 "the form again after a wrong token")
        shoot(driver, tmp_path, "token")
        fill(one(driver, "#token-input"), TOKEN)
        one(driver, "#token-form button").click()
        wait_for(driver, lambda d: css(d, "p.empty") and one(d, "p.empty").is_displayed(), "the (empty) jobs list")
        assert not one(driver, "#token-form").is_displayed()
        assert driver.execute_script("return sessionStorage.getItem('retrain.token')") == TOKEN
        # Asked once: another page of the same tab sends the stored token.
        one(driver, 'nav a[href="#/models"]').click()
        wait_for(driver, lambda d: one(d, "h1").text == "Models", "the models page")
        assert not one(driver, "#token-form").is_displayed()
    finally:
        server.stop()
        driver.get_log("browser")  # the 401s of the wrong token are expected console errors


def test_phone_width(browser, site, tmp_path):
    """At 390 px the nav and the new-job form show, and no page scrolls sideways."""
    driver, server = browser, site
    viewport(driver, *PHONE, mobile=True)
    try:
        go(driver, server, "#/new", "#job-form", "the new-job page")
        for link in css(driver, "nav a"):
            assert link.is_displayed(), link.text
        assert one(driver, "#job-form").is_displayed() and one(driver, "#train").is_displayed()
        one(driver, "#archive").send_keys(str(colour_zip(tmp_path, "phone")))
        wait_for(driver, lambda d: one(d, "#report").is_displayed(), "the report")
        shoot(driver, tmp_path, "phone-new")
        pages = ["#/new", "#/jobs", "#/models"]
        pages += [f"#/{kind}/{m['name']}/{m['versions'][-1]}" for m in server.get("/v1/models")[1]["models"][:1]
                  for kind in ("models", "try")]  # the flow's model, when it ran
        for page in pages:
            if page != "#/new":
                go(driver, server, page, "main h1", page)
            width = driver.execute_script("return [document.documentElement.scrollWidth, "
                                          "document.documentElement.clientWidth]")
            assert width[0] <= width[1], f"{page} scrolls sideways: {width}"
            shoot(driver, tmp_path, f"phone-{page.strip('#/').replace('/', '-')}")
    finally:
        viewport(driver, *DESKTOP)


def test_cancel_and_resume_buttons(browser, site, tmp_path):
    """The job page's buttons: Cancel stops a running job, Resume queues it again; the jobs
    list follows its state live."""
    driver, server = browser, site
    viewport(driver, *DESKTOP)
    dataset = server.upload(colour_zip(tmp_path, "long"), name="long")
    job = server.submit(dataset["id"], model="long", epochs=500, fine_tune_epochs=0)
    try:
        go(driver, server, f"#/jobs/{job}", ".status .state", "the job page")
        state = lambda d: one(d, ".status .state").text  # noqa: E731
        wait_for(driver, lambda d: state(d) == "running", "the job to start", timeout=120, diagnose=job_log(server))
        assert one(driver, "#cancel").is_enabled() and not one(driver, "#resume").is_enabled()
        one(driver, "#cancel").click()
        wait_for(driver, lambda d: state(d) == "cancelled", "the job to be cancelled", timeout=90)
        assert not one(driver, "#cancel").is_enabled() and one(driver, "#resume").is_enabled()
        assert server.get(f"/v1/jobs/{job}")[1]["state"] == "cancelled"
        one(driver, "#resume").click()
        wait_for(driver, lambda d: state(d) in ("queued", "running") and one(d, "#cancel").is_enabled(),
                 "the job to be queued again")
        assert server.get(f"/v1/jobs/{job}")[1]["state"] in ("queued", "running")
        shoot(driver, tmp_path, "resumed")
        one(driver, 'nav a[href="#/jobs"]').click()
        row = f'tr[data-job="{job}"]'
        wait_for(driver, lambda d: one(d, f"{row} .state").text in ("queued", "running"), "the job in the list")
        server.post(f"/v1/jobs/{job}:cancel")
        wait_for(driver, lambda d: one(d, f"{row} .state").text == "cancelled", "the list to show it cancelled",
                 timeout=90)
    finally:
        server.post(f"/v1/jobs/{job}:cancel")  # it ends on its own; the module's teardown kills what is left


def test_keyboard_and_labels(browser, site):
    """Every control has a label; Tab walks the nav and the new-job form in order, with a
    visible focus; Enter on a nav link opens its page."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver, server = browser, site
    viewport(driver, *DESKTOP)
    go(driver, server, "#/new", '#f-backbone option[value="tiny_cnn"]', "the new-job page")
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id || e.outerHTML)")
    assert unlabelled == []
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    visited = []
    for _ in range(40):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        focused = driver.switch_to.active_element
        visited.append(focused.get_attribute("id") or focused.get_attribute("href") or focused.text)
        shown = focused if focused.get_attribute("id") != "archive" else one(driver, "label[for=archive]")
        assert driver.execute_script("return getComputedStyle(arguments[0]).outlineStyle", shown) != "none", visited[-1]
        if visited[-1] == "train":
            break
    order = ["#main", "#/jobs", "#/new", "#/models", "archive", "f-model", "f-backbone", "f-epochs", "train"]
    positions = [next(i for i, v in enumerate(visited) if v == want or v.endswith(want)) for want in order]
    assert positions == sorted(positions), visited
    driver.execute_script("document.querySelector('nav a[href=\"#/models\"]').focus()")
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    wait_for(driver, lambda d: one(d, "main h1").text == "Models", "the models page from the keyboard")


def test_a_folder_under_a_data_root(browser, site):
    """The new-job page offers the folders under --data-root and checks the one picked."""
    driver, server = browser, site
    viewport(driver, *DESKTOP)
    go(driver, server, "#/new", "#data-folder", "the data root's folders")
    choose(one(driver, "#data-folder"), str(server.home.parent / "roots" / "shapes"))
    one(driver, "#check-folder").click()
    wait_for(driver, lambda d: one(d, "#report").is_displayed(), "the folder's report")
    assert [th.text for th in css(driver, "#report .class-name")] == ["cyan", "magenta", "yellow"]
    assert one(driver, "#report .dataset-name").text == "shapes"
    wait_for(driver, lambda d: one(d, "#f-freeze-hint").text.startswith("Auto will"), "what freeze auto picks")
