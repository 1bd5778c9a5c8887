"""report.html in a real browser: ``python -m pipeline cv`` on a copy of the session's finished tiny
experiment, the page opened in headless Chromium driven by Playwright: no console error, every image
rendered, the subgroup table there with its rows, and the gallery of mistakes with its Grad-CAM overlays.

The browser is the system's (``CHROMIUM``, installed by scripts/browser.sh: apt-get, as root), never
one Playwright downloads; without the ``playwright`` package or a Chromium that starts, these tests
skip and say why. The last tests hold scripts/browser.sh and how .ci/run and README.md use it.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, copy_finished, run_main

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # as scripts/browser.sh looks for it
README = (ROOT / "README.md").read_text()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system Chromium's path; a skip, with the reason, when Playwright or the browser is absent."""
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("no playwright package (pip install -r requirements-dev.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no {CHROMIUM} (bash scripts/browser.sh installs it, as root, with apt-get)")
    try:
        subprocess.run([CHROMIUM, "--version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"{CHROMIUM} does not start ({e})")
    return CHROMIUM


@pytest.fixture(scope="module")
def page(chromium, finished, tmp_path_factory) -> dict:
    """report.html of the tiny experiment (``--by diagnosis``, a column of its training table only),
    as Chromium rendered it: the console errors, page errors and the states of what the tests look at."""
    from playwright.sync_api import sync_playwright
    _, work = copy_finished(finished, tmp_path_factory.mktemp("browser"))
    out = work / "report"
    run_main("-m", "pipeline", "cv", work / "oof" / "tiny", "--bootstrap", "50", "--by", "diagnosis", "--top", "3",
             "--out", out, cwd=ROOT)
    errors, seen = [], {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            tab = browser.new_page()
            tab.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            tab.goto((out / "report.html").as_uri(), wait_until="load")
            tab.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=30_000)
            images = "(sel) => Array.from(document.querySelectorAll(sel)).map(i => [i.alt, i.naturalWidth])"
            seen["images"] = tab.evaluate(images, "img")
            seen["cam"] = tab.evaluate(images, "img.cam")
            seen["gallery"] = tab.evaluate(images, "#mistakes img")
            seen["subgroups"] = tab.evaluate("Array.from(document.querySelectorAll('#subgroups tbody tr'))"
                                             ".map(r => Array.from(r.cells).map(c => c.innerText.trim()))")
            seen["visible"] = tab.locator("#subgroups").is_visible()
            seen["text"] = tab.locator("body").inner_text()
        finally:
            browser.close()
    return {"errors": errors, **seen}


def test_the_report_opens_without_a_console_error_and_every_image_renders(page):
    assert page["errors"] == []
    assert len(page["images"]) >= 5  # the five pictures, then the gallery's
    assert [alt for alt, width in page["images"] if width <= 0] == []


def test_the_subgroup_table_is_on_the_page_with_its_rows(page):
    rows = page["subgroups"]
    assert page["visible"] and len(rows) >= 8, rows
    by = [r[0] for r in rows]
    assert by[0] == "all" and {"sex", "anatom_site_general_challenge", "age_approx", "fold", "diagnosis"} <= set(by)
    assert "images per patient_id" in by
    fold0 = next(r for r in rows if r[:2] == ["fold", "0"])
    assert fold0[-1][:2] in ("0.", "1.") or fold0[-1].startswith("too few: "), fold0


@pytest.mark.parametrize("part", ["gallery", "cam"])
def test_the_gallery_and_its_grad_cam_overlays_render(page, part):
    """The gallery of mistakes (section id="mistakes") and its Grad-CAM overlays (img class="cam"),
    which the command makes by default; an overlay not made says why on the page."""
    if part == "cam" and not page["cam"] and "no Grad-CAM overlays" in page["text"]:
        pytest.skip("the report was made without Grad-CAM overlays: " +
                    next(x for x in page["text"].splitlines() if "no Grad-CAM overlays" in x))
    shown = page[part]
    assert shown, f"no {part} images in report.html"
    assert [alt for alt, width in shown if width <= 0] == []


# ---------------------------------------------------------------- installing the browser

def run_browser_sh(tmp_path: Path, apt_exit: int | None, uid: int, there: bool) -> subprocess.CompletedProcess:
    """scripts/browser.sh with a Chromium at CHROMIUM when ``there``, and on PATH only a stand-in ``id``
    (the user id ``uid``) and, unless ``apt_exit`` is None, a stand-in ``apt-get`` that logs its call
    and exits so."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    if apt_exit is not None:
        (bin_dir / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'apt.log'}\nexit {apt_exit}\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": str(bin_dir), "CHROMIUM": str(bin_dir / "id" if there else tmp_path / "no-chromium")}
    return subprocess.run(["/bin/bash", str(ROOT / "scripts" / "browser.sh")], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("case", ["there", "no apt", "not root", "apt fails", "apt works"])
def test_browser_sh_installs_chromium_with_apt_as_root_and_never_fails(tmp_path, case):
    apt_exit, uid = {"there": (0, 0), "no apt": (None, 0), "not root": (0, 1000), "apt fails": (100, 0),
                     "apt works": (0, 0)}[case]
    proc = run_browser_sh(tmp_path, apt_exit, uid, there=case == "there")
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines() if (tmp_path / "apt.log").exists() else []
    if case in ("apt fails", "apt works"):
        assert calls[0] == "update -qq" and calls[-1] == "install -y -qq chromium", calls
    else:
        assert calls == []
    said = proc.stdout.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("browser: "), proc.stdout
    assert ("tests/test_report_browser.py will skip" in said[0]) == (case not in ("there", "apt works")), said


def test_ci_installs_the_browser_first_and_readme_says_how():
    """.ci/run: scripts/browser.sh before README command 2, its failure not CI's; README says how."""
    ci = [x for x in (ROOT / ".ci" / "run").read_text().splitlines() if x and not x.startswith("#")]
    assert ci[-2].startswith("bash scripts/browser.sh || true")
    assert ci[-1] == "bash scripts/setup.sh && .venv/bin/python -m pytest"
    assert "`bash scripts/browser.sh`" in README and "tests/test_report_browser.py" in README
    dev = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert any(x.startswith("playwright") for x in dev)
