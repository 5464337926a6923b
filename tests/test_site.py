"""The web leaderboard (`robench leaderboard` writes index.html, one page per model, one per activation
comparison), driven in a real headless Chromium (Debian's chromium and chromium-driver, which `make install`
installs): opened from disk, sorted, filtered, searched, a model link followed; no console errors. The
screenshots the README and the docs show are written by these tests into results/screenshots/."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from helpers import save_tiny, write_mnist_like
from typer.testing import CliRunner

import robench
from robench.cli import app

REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = REPO / "results" / "screenshots"

# In CI the browser must be there (`make install` installs it); elsewhere the browser tests skip.
requires_browser = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()) and not os.environ.get("CI"),
    reason="Chromium is not installed (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        "--hide-scrollbars",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _column(driver, table, header: str) -> list[str]:
    heads = [th.text.strip() for th in table.find_elements("css selector", "thead th")]
    i = heads.index(header)
    return [
        r.find_elements("tag name", "td")[i].get_attribute("data-value") or r.find_elements("tag name", "td")[i].text
        for r in table.find_elements("css selector", "tbody tr")
        if r.is_displayed()
    ]


def _click_header(table, header: str):
    next(th for th in table.find_elements("css selector", "thead th") if th.text.strip() == header).click()


def _numbers(values: list[str]) -> list[float]:
    return [float(v) if v not in ("", "-") else float("nan") for v in values]


@requires_browser
def test_the_shipped_leaderboard_sorts_filters_and_links_to_model_pages(browser):
    """The committed leaderboard/index.html, opened from disk: sorted by AutoAttack, filtered to one
    architecture, a model link followed to a page that shows its sha256 and attack budgets."""
    index = REPO / "leaderboard" / "index.html"
    csv = pd.read_csv(REPO / "leaderboard" / "fashion-mnist_Linf.csv", dtype={"eps": str})
    browser.get(index.as_uri())
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "index.png"))
    table = browser.find_element("css selector", "#fashion-mnist-linf-eps-0\\.1 table")
    board = csv[csv.eps == "0.1"]
    assert len(table.find_elements("css selector", "tbody tr")) == len(board)

    _click_header(table, "AutoAttack")
    aa = _numbers(_column(browser, table, "AutoAttack"))
    measured = [v for v in aa if v == v]
    assert measured == sorted(measured, reverse=True) and len(measured) == (board.autoattack_n > 0).sum()
    assert all(v != v for v in aa[len(measured) :])  # models without AutoAttack come last
    assert measured[0] == board.autoattack_acc.max()
    _click_header(table, "AutoAttack")  # a second click reverses
    assert [v for v in _numbers(_column(browser, table, "AutoAttack")) if v == v] == sorted(measured)

    Select = __import__("selenium.webdriver.support.select", fromlist=["Select"]).Select
    Select(browser.find_element("id", "filter-architecture")).select_by_visible_text("resnet20")
    models = _column(browser, table, "Model")
    assert sorted(models) == sorted(board[board.architecture == "resnet20"].model_id) and models
    assert "of" in table.find_element("xpath", "..").find_element("css selector", ".count").text

    link = table.find_element("link text", models[0])
    link.click()
    row = board[board.model_id == models[0]].iloc[0]
    assert browser.find_element("id", "sha256").text == row.sha256
    body = browser.find_element("tag name", "body").text
    assert "Stored runs" in body and "Budget as stored (JSON)" in body  # every run with its full budget
    budgets = [t.text for t in browser.find_elements("css selector", "table.budget")]
    assert any("Steps" in t and "pgd 20 1 2.5*eps/steps" in t for t in budgets), budgets[:2]  # read as a table
    assert "Gradient-masking checks" in body
    browser.save_screenshot(str(SCREENSHOTS / "model.png"))
    assert _console_errors(browser) == []

    # the index's second view: each activation of a group, its training runs pooled; a cell's mean is the mean
    # of that activation's checkpoints in the CSV
    browser.get(index.as_uri())
    pooled = browser.find_element("id", "view-activations")
    assert not pooled.is_displayed()  # the index opens on the headline per-checkpoint table
    browser.find_element("css selector", "button[data-view=activations]").click()
    assert pooled.is_displayed() and not browser.find_element("id", "view-checkpoints").is_displayed()
    group = pooled.find_element("css selector", "#pooled-fashion-mnist-lenet5-pgd-at-eps0\\.1 table")
    rows = group.find_elements("css selector", "tbody tr")
    splash = board[(board.architecture == "lenet5") & (board.activation == "splash")]
    splash = splash[splash.training_method == "pgd-at"]
    assert len(splash) == 3 and len(rows) == board[board.architecture == "lenet5"].activation.nunique()
    row = next(r for r in rows if r.find_element("tag name", "td").text == "splash")
    aa = row.find_elements("tag name", "td")[3]  # Activation, Seeds, Clean, AutoAttack
    assert float(aa.get_attribute("data-value")) == pytest.approx(splash.autoattack_acc.mean(), abs=0.006)
    assert "reliability flag" in row.text  # every SPLASH checkpoint there carries AutoAttack's warning
    browser.save_screenshot(str(SCREENSHOTS / "index-activations.png"))

    # a group page opens on its answer: the pooled table and the forest plot, then the claims on it; the
    # per-checkpoint numbers are folded below
    browser.get((REPO / "leaderboard" / "groups" / "fashion-mnist-lenet5-pgd-at-eps0.1.html").as_uri())
    body = browser.find_element("tag name", "body").text
    assert body.index("Activations at a glance") < body.index("The papers' claims on this group")
    assert "Accuracy at Linf eps 0.1" not in body  # folded
    forest = browser.find_element("css selector", "img[src$='-forest.png']")
    assert browser.execute_script("return arguments[0].naturalWidth", forest) > 0
    browser.save_screenshot(str(SCREENSHOTS / "group.png"))
    browser.find_element("css selector", "#per-checkpoint summary").click()
    assert "Accuracy at Linf eps 0.1" in browser.find_element("tag name", "body").text
    assert _console_errors(browser) == []


@requires_browser
def test_a_generated_site_sorts_numbers_searches_and_marks_weaker_evidence(browser, tmp_path):
    write_mnist_like(Path("data/fashion-mnist"), n_test=40)
    save_tiny(
        "a.pt",
        "relu",
        seed=0,
        name="tiny-relu",
        zoo_group="g",
        link="https://example.org/paper",
        authors=["A. Author", "B. Author"],
        paper="Author et al. 2026",
    )
    save_tiny("b.pt", "splash", seed=1, name="tiny-splash", zoo_group="g")
    save_tiny("c.pt", "silu", seed=2, name="tiny-silu", zoo_group="g")
    robench.evaluate(["a.pt", "b.pt", "c.pt"], n=30, eps=["0.02", "0.1"], attacks=["fgsm"], store="s.sqlite")
    r = CliRunner().invoke(app, ["leaderboard", "--store", "s.sqlite", "--out", "lb"])
    assert r.exit_code == 0 and "lb/index.html" in r.output
    csv = pd.read_csv("lb/fashion-mnist_Linf.csv", dtype={"eps": str})
    browser.get((tmp_path / "lb" / "index.html").as_uri())
    table = browser.find_element("css selector", "#fashion-mnist-linf-eps-0\\.1 table")
    _click_header(table, "Clean")
    clean = _numbers(_column(browser, table, "Clean"))
    assert clean == sorted(csv[csv.eps == "0.1"].clean_acc, reverse=True)
    assert "†" in table.text  # no AutoAttack ran: every best known rests on weaker attacks, and says so
    browser.find_element("id", "search").send_keys("splash")
    assert _column(browser, table, "Model") == ["tiny-splash"]
    # the activation comparison page renders the report's own section with its figures
    browser.find_element("partial link text", "lenet5, ").click()
    assert "Change against ReLU" in browser.page_source
    img = browser.find_element("css selector", "img")
    assert browser.execute_script("return arguments[0].naturalWidth", img) > 0  # the PNG loaded from disk
    page = (tmp_path / "lb" / "models" / "fashion-mnist" / "Linf" / "tiny-relu.html").read_text()
    assert "https://example.org/paper" in page and "A. Author, B. Author" in page
    assert _console_errors(browser) == []


def test_model_info_takes_link_authors_and_paper_from_the_model_card():
    write_mnist_like(Path("data/fashion-mnist"), n_test=20)
    save_tiny("a.pt", "relu", name="tiny-relu")
    Path("a.pt.json").write_text(
        json.dumps(
            {
                "link": "https://example.org/x",
                "authors": ["C. D."],
                "paper": "C. D., Robust things, 2026",
                "arch": "ignored",
            }
        )
    )
    robench.evaluate(["a.pt"], n=10, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    robench.api.leaderboard("s.sqlite", "lb")
    info = json.loads(Path("lb/model_info/fashion-mnist/Linf/tiny-relu.json").read_text())
    assert info["link"] == "https://example.org/x" and info["authors"] == "C. D."
    assert info["robench"]["paper"] == "C. D., Robust things, 2026"
    assert robench.load_checkpoint("a.pt").meta["arch"] == "lenet5"  # a card adds descriptions, never structure
    Path("a.pt.json").write_text(json.dumps({"authors": 3}))
    r = CliRunner().invoke(app, ["info", "a.pt"])
    assert r.exit_code == 2 and "authors" in r.output and "Traceback" not in r.output


def test_rows_rank_by_best_known_and_mark_those_without_autoattack():
    """A model with only PGD ranks by its best known accuracy, not below every model with AutoAttack; its
    row is marked, and every accuracy carries its own n and interval."""
    write_mnist_like(Path("data/fashion-mnist"), n_test=40)
    save_tiny("a.pt", "relu", seed=0, name="tiny-a")
    save_tiny("b.pt", "relu", seed=1, name="tiny-b")
    robench.evaluate(["a.pt", "b.pt"], n=30, eps=["0.1"], attacks=["none"], store="s.sqlite")
    robench.evaluate(["a.pt"], n=20, eps=["0.1"], attacks=["autoattack"], store="s.sqlite")
    robench.evaluate(["b.pt"], n=20, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    robench.api.leaderboard("s.sqlite", "lb")
    df = pd.read_csv("lb/fashion-mnist_Linf.csv", dtype={"eps": str})
    assert list(df.best_known_acc) == sorted(df.best_known_acc, reverse=True)
    text = Path("lb/README.md").read_text()
    b = df[df.model_id == "tiny-b"].iloc[0]
    row = next(line for line in text.splitlines() if "| tiny-b |" in line)
    assert f"{b.clean_acc:.2f} {b.clean_ci95} n=30" in row and f"{b.pgd_acc:.2f} {b.pgd_ci95} n=20" in row
    assert f"{b.best_known_acc:.2f} {b.best_known_ci95} n={b.n} †" in row and "No AutoAttack result" in text
    assert "†" not in next(line for line in text.splitlines() if "| tiny-a |" in line)


def test_open_opens_the_index_in_a_browser(monkeypatch):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or False)
    write_mnist_like(Path("data/fashion-mnist"), n_test=20)
    save_tiny("a.pt", "relu", name="tiny-relu")
    robench.evaluate(["a.pt"], n=10, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    r = CliRunner().invoke(app, ["leaderboard", "--store", "s.sqlite", "--out", "lb", "--open"])
    assert r.exit_code == 0 and opened == [(Path("lb/index.html").resolve()).as_uri()]
    assert "No web browser was found" in r.output


def test_the_site_needs_nothing_from_the_network():
    """Every script, style and image a page loads is a file of the site (no CDN, no server)."""
    import re

    write_mnist_like(Path("data/fashion-mnist"), n_test=20)
    save_tiny("a.pt", "relu", name="tiny-relu", zoo_group="g")
    save_tiny("b.pt", "silu", name="tiny-silu", zoo_group="g")
    robench.evaluate(["a.pt", "b.pt"], n=10, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    robench.api.leaderboard("s.sqlite", "lb")
    pages = list(Path("lb").rglob("*.html"))
    assert len(pages) == 4  # index, two models, one comparison
    for page in pages:
        for ref in re.findall(r'(?:src|href)="([^"]+)"', page.read_text()):
            if ref.startswith("data:"):
                continue
            assert "://" not in ref, (page, ref)
            assert (page.parent / ref.split("#")[0]).resolve().is_file(), (page, ref)
    assert sum(p.stat().st_size for p in Path("lb/static").iterdir()) < 20_000


def test_the_report_draws_each_model_as_the_store_recorded_it():
    """Model pages, the shape figure and the claims read the activations as the store recorded them when the
    model was evaluated: replacing or deleting the checkpoint file afterwards changes nothing, and a model
    with no record is said so in its panel."""
    from robench.reporting.claims import member_shapes
    from robench.reporting.compare import shape_panels
    from robench.reporting.groups import groups
    from robench.reporting.leaderboard import results
    from robench.store import Store

    write_mnist_like(Path("data/fashion-mnist"), n_test=20)
    save_tiny("a.pt", "prelu", seed=0, name="tiny-a")
    save_tiny("b.pt", "relu", seed=0, name="tiny-b")
    robench.evaluate(["a.pt", "b.pt"], n=10, eps=["0.1"], attacks=["fgsm"], store="s.sqlite")
    page = Path("lb/models/fashion-mnist/Linf/tiny-a.html")
    robench.api.leaderboard("s.sqlite", "lb")
    before = page.read_text()
    assert "alpha = " in before
    with Store("s.sqlite", readonly=True) as db:
        (g,) = groups(results(db))
    assert set(member_shapes(g)) == {mb.sha256 for mb in g.members}
    save_tiny("a.pt", "prelu", seed=1, name="tiny-a")  # other weights at the evaluated path
    Path("b.pt").unlink()
    robench.api.leaderboard("s.sqlite", "lb")
    assert page.read_text() == before
    assert {p["title"]: p.get("note") for p in shape_panels(g)} == {"relu": None, "prelu": None}
    g.members[0].record = None  # a model evaluated before the store kept records
    assert "shape not recorded" in str([p.get("note") for p in shape_panels(g)])
