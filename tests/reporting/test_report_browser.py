"""A fresh run's report.html in headless Chromium: every chart drawn, visible and not empty,
the confusion matrix's total equal to the validation rows, no console error, nothing fetched."""

from __future__ import annotations

import json

from conftest import CHROMIUM, CHROMIUM_ARGS, playwright_or_skip

from digitcnn import kfold
from digitcnn.reporting.page import FIGURE_CAPTIONS

FAST = ["--epochs", "2", "--batch-size", "32", "--threads", "1", "--no-verify", "--quiet"]

# Per chart: its drawn marks (curves, cells, bars, markers, digits) and their sizes on screen
CHARTS_JS = """
() => [...document.querySelectorAll("figure > svg.chart")].map(svg => {
    const box = svg.getBoundingClientRect();
    const marks = [...svg.querySelectorAll(".series, .mark")].map(mark => {
        const b = mark.getBoundingClientRect();
        return [b.width, b.height];
    });
    return {
        name: svg.dataset.chart,
        width: box.width,
        height: box.height,
        visible: getComputedStyle(svg).visibility === "visible" && svg.checkVisibility(),
        marks: marks,
        tooltips: svg.querySelectorAll(".series > title, .mark > title, .mark title").length,
        panelTitles: [...svg.querySelectorAll(".panel-title")].map(t => t.textContent),
    };
})
"""


def test_report_charts_in_chromium(optdigits_dir, tmp_path):
    playwright_api = playwright_or_skip()
    out = tmp_path / "run"
    assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            errors, requests = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((out / "report.html").as_uri())
            page.wait_for_load_state("load")
            charts = page.evaluate(CHARTS_JS)
        finally:
            browser.close()
    assert errors == []
    # the page itself, and the digits' PNGs as data URIs: nothing from a network or a file
    assert all(url.startswith("data:") for url in requests[1:]), requests
    assert [c["name"] for c in charts] == [name.removesuffix(".svg") for name in FIGURE_CAPTIONS]
    for chart in charts:
        assert chart["visible"] and chart["width"] > 400 and chart["height"] > 200, chart["name"]
        drawn = [m for m in chart["marks"] if m[0] > 0 or m[1] > 0]
        assert len(drawn) >= 4, (chart["name"], len(drawn))
        assert chart["tooltips"] >= len(drawn) // 2, chart["name"]  # hovering shows values
    by_name = {c["name"]: c for c in charts}
    # 10 x 10 cells in each of the two heatmaps; the counts' total is every validation row
    assert len(by_name["confusion"]["marks"]) == 200
    assert by_name["confusion"]["panelTitles"][0] == f"counts (n = {metrics['n']:,})"
    assert metrics["n"] == sum(fold["n_val"] for fold in metrics["folds"]) == 180
    # one digit per misclassified row shown, at most 40
    wrong = sum(sum(row) - row[i] for i, row in enumerate(metrics["confusion"]))
    assert len(by_name["misclassified"]["marks"]) == min(wrong, 40) > 0
