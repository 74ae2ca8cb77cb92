"""The page of ``cgcnn-lab serve`` in a real browser (headless Chromium driven by Playwright): upload the course's
CIFs and a pasted POSCAR, read the table, download the CSV, open one structure's 3-D view, see an error.

Needs Debian's ``chromium`` (``apt-get install chromium``; Playwright's own browser download is not used) and the
course's data in ../shared. ``CGCNN_LAB_SCREENSHOT=docs/images/serve.png`` saves the page there (README.md shows
it); otherwise into the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COURSE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "homework" / "perovskite_energy"
MODEL = "perovskite-vs-oxides"  # the course's classifier; its atom readout colours the atoms

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium to drive: apt-get install chromium"),
    pytest.mark.skipif(not COURSE.is_dir(), reason=f"the course's CIFs are not here ({COURSE})"),
]

POSCAR = """SrTiO3 pasted
1.0
3.905 0 0
0 3.905 0
0 0 3.905
Sr Ti O
1 1 3
direct
0 0 0
0.5 0.5 0.5
0.5 0.5 0
0.5 0 0.5
0 0.5 0.5
"""


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        # swiftshader: WebGL in software, as a machine without a GPU draws it
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--use-angle=swiftshader",
                                                              "--enable-unsafe-swiftshader"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def url():
    from cgcnn_lab.web.app import create_app
    from cgcnn_lab.web.background import running

    with running(create_app([MODEL, "mp-perovskite-e-form"])) as base:
        yield base


def colours(png: bytes) -> int:
    """Distinct colours of a screenshot: a blank canvas has one."""
    from PIL import Image

    return len(np.unique(np.asarray(Image.open(BytesIO(png)).convert("RGB")).reshape(-1, 3), axis=0))


def test_upload_predict_download_and_view(browser, url, tmp_path):
    cifs = sorted(COURSE.glob("*.cif"))[:8]
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(url)
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")
    page.select_option("#model", MODEL)
    assert "test accuracy" in page.inner_text("#model-info")
    assert "at most 50 structures per request" in page.inner_text("#limits")

    page.set_input_files("#files", [str(p) for p in cifs])
    page.click("#paste-box summary")
    page.fill("#paste", POSCAR)
    page.fill("#paste-name", "SrTiO3")
    page.click("#paste-add")
    assert page.locator("#chosen li").count() == 9
    page.click("#predict")
    page.wait_for_selector("#table tbody tr")
    rows = page.locator("#table tbody tr")
    assert rows.count() == 9
    assert [rows.nth(k).locator("td").first.inner_text() for k in range(9)] == [p.stem for p in cifs] + ["SrTiO3"]
    assert "P(is_perovskite = 1)" in page.inner_text("#table thead")
    assert "9 files: 9 crystals" in page.inner_text("#notes")

    with page.expect_download() as download:
        page.click("#download")
    csv = Path(download.value.path()).read_text()
    assert download.value.suggested_filename == f"predictions-{MODEL}.csv"
    (tmp_path / "SrTiO3.vasp").write_text(POSCAR)
    import cgcnn_lab

    cgcnn_lab.predict(MODEL, [*cifs, tmp_path / "SrTiO3.vasp"]).to_csv(tmp_path / "cli.csv")
    assert csv == (tmp_path / "cli.csv").read_text()

    rows.nth(1).locator("button").click()  # 1021504: 20 atoms
    page.wait_for_selector("#legend:not([hidden])")
    page.wait_for_selector("#viewer canvas")
    assert page.inner_text("#view-title").startswith(f"{cifs[1].stem} ({cifs[1].name}): is_perovskite")
    assert page.locator("#sites tbody tr").count() == 20
    assert "log-odds of is_perovskite = 1" in page.inner_text("#legend-unit")
    assert "12 nearest neighbours within 8 Å" in page.inner_text("#view-info")
    page.wait_for_timeout(500)  # the first frame of the WebGL drawing
    assert colours(page.locator("#viewer").screenshot()) > 50, "the 3-D view is blank"
    shot = Path(os.environ.get("CGCNN_LAB_SCREENSHOT") or tmp_path / "serve.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert problems == []


def test_the_page_shows_the_command_lines_error(browser, url, tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("data_broken\n_cell_length_a 3.9\n")
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")
    page.set_input_files("#files", [str(bad)])
    page.click("#predict")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("error: broken: empty dataset")
    assert "broken.cif: unreadable CIF" in page.inner_text("#error")
    assert page.is_hidden("#results")
