"""One speed-quality Pareto plot over several stored benchmarks (each arm's speedup is against plain decoding
in its own benchmark process), as an HTML page and, with --png, an image drawn by a headless Chromium.

    python scripts/pareto_figure.py --db runs.sqlite BENCH_ID [BENCH_ID ...] --html pareto.html \
        --png docs/images/lossy-pareto.png --measure agreement

The points are the app's (ui.presenters.quality.bench_points over each benchmark's report, "all" prompts),
labelled by arm (and backend, where they differ); plain decoding (lossless) is drawn once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import RunStore  # noqa: E402
from ui.presenters.quality import bench_points, pareto_figure  # noqa: E402
from workbench.bench.report import benchmark_report  # noqa: E402


def points_of(store, bench_ids: list[str], measure: str) -> list[dict]:
    points, plain = [], False
    reports = [benchmark_report(store, bench_id) for bench_id in bench_ids]
    backends = {k[1] for report in reports for k in report.keys}
    for report in reports:  # the backend in the label only where the benchmarks mix backends
        names = {k: report.name(*k) + (f" ({k[1]})" if len(backends) > 1 else "") for k in report.keys}
        for p in bench_points(report.rows, measure, names=names):
            if p["method"] == "autoregressive" and p["lossless"]:
                if plain:
                    continue
                plain, p["label"] = True, "plain decoding"
            points.append(p)
    return points


def screenshot(html: Path, png: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless"])
        page = browser.new_page(viewport={"width": 1000, "height": 560})
        page.goto(html.resolve().as_uri())
        page.wait_for_selector(".main-svg")
        page.screenshot(path=str(png), full_page=True)
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_ids", nargs="+", help="stored benchmark ids (a unique prefix is enough)")
    ap.add_argument("--db", required=True, help="the run store holding them")
    ap.add_argument("--measure", default="agreement", help="agreement, rouge_l, nll_gap, ... (docs/quality.md)")
    ap.add_argument("--title", default="")
    ap.add_argument("--html", required=True, help="the page to write (plotly inline: it opens offline)")
    ap.add_argument("--png", default=None, help="also an image of it")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    store = RunStore(args.db)
    fig = pareto_figure(points_of(store, args.bench_ids, args.measure), args.measure,
                        speed_label="speedup over plain decoding", title=args.title)
    fig.update_layout(height=540, width=980)
    html = Path(args.html)
    fig.write_html(html, include_plotlyjs=True)
    print(f"wrote {html}")
    if args.png:
        screenshot(html, Path(args.png), args.chromium)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
