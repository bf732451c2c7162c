"""The run report: verdict first, renders from a real run's results.json and from a run cut short; in headless
Chromium (skipped, saying why, when it is not installed) the page renders, every image loads and nothing
overflows the viewport (wide tables scroll inside their own box)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qmap.report.document import write_report
from qmap.report.run_plots import plot_activation_levels, plot_run, plot_weight_levels
from qmap.report.verdict import rtl_summary, verdict

SEED_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "run_seed_alpha_w4a4.json"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PROBE = """<script>
window.addEventListener('load', () => {
  const vw = document.documentElement.clientWidth, imgs = Array.from(document.images);
  const over = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('.scroll') && !el.classList.contains('scroll')) continue;  // inside a scroll box
    if (el.getBoundingClientRect().right > vw + 1) over.push(el.tagName + ' ' + (el.id || el.className));
  }
  const out = document.createElement('pre');
  out.id = 'qmap-probe';
  out.textContent = JSON.stringify({images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => i.alt), overflow: over.slice(0, 10), scroll_width: document.documentElement.scrollWidth, viewport: vw,
    first_h2: document.querySelector('h2').textContent,
    verdict_rows: document.querySelectorAll('table.verdict tbody tr').length});
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory) -> Path:
    """A run folder from the committed results of the seed flow, with its plots drawn."""
    run = tmp_path_factory.mktemp("seed_run")
    res = json.loads(SEED_RESULTS.read_text())
    res.setdefault("hardware", {})["rtl_simulators"] = []  # as on a machine without Icarus
    res["hardware"]["rtl_skipped"] = {"reason": "Icarus Verilog (iverilog) is not on PATH",
                                      "enable": "bash scripts/setup.sh --rtl"}
    (run / "results.json").write_text(json.dumps(res))
    plot_run(res, run / "plots")
    rng = np.random.default_rng(0)
    plot_weight_levels(rng.normal(0, 0.02, 5000), 0.01, 0.009, -7, 7, 0.9, "features.27",
                       run / "plots" / "weight_hist.features.27.png")
    plot_activation_levels(np.abs(rng.normal(0, 1, 5000)), 0.2, 0.0, 0, 15, "features.27",
                           run / "plots" / "act_hist.features.27.png")
    write_report(run)
    return run


def test_verdict_comes_first_and_states_the_rtl_skip(seed_run):
    md = (seed_run / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Accuracy") < md.index("## Per layer")
    assert "SKIPPED" in md and "Icarus Verilog (iverilog) is not on PATH" in md
    assert "965,700 cycles" in md and "88.53 %" in md  # whole-network total in the verdict
    assert "0.8514" in md  # α of features.27 in the per-layer table
    res = json.loads((seed_run / "results.json").read_text())
    assert rtl_summary(res).startswith("RTL: SKIPPED (Icarus Verilog (iverilog) is not on PATH; to enable: ")
    assert "**" not in (seed_run / "report.html").read_text()  # no raw Markdown in the HTML


def test_report_of_a_run_cut_short(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"name": "cut", "config": {}, "metrics": {}}))
    write_report(tmp_path)
    rows = verdict(json.loads((tmp_path / "results.json").read_text()))
    assert {r["status"] for r in rows} == {"SKIPPED"}
    assert "RTL: SKIPPED" in rtl_summary({}) and "<h2 id=\"verdict\">" in (tmp_path / "report.html").read_text()


def chromium() -> str:
    exe = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if exe is None:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium; bash scripts/setup.sh --test does it)")
    return exe


@pytest.mark.parametrize("width", [1280, 720])
def test_report_in_headless_chromium(seed_run, tmp_path, width):
    exe = chromium()
    page = tmp_path / "probe.html"
    page.write_text((seed_run / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},900",
           "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="qmap-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the page did not finish loading in Chromium: {dom[:300]!r}"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["first_h2"] == "Verdict" and probe["verdict_rows"] >= 6
    assert probe["images"] == 4 and probe["broken"] == []
    assert probe["overflow"] == [] and probe["scroll_width"] <= probe["viewport"]
