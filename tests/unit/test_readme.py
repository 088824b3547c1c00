"""The README's measured figures are the latest benchmark results', not a stale copy."""

import json
import os

from bench import report
from tests.support.electric import ROOT


def test_known_limits_figures_come_from_the_results_file():
    with open(os.path.join(ROOT, "bench", "results", "results.json")) as fh:
        results = json.load(fh)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    expected = f"{report.README_BEGIN}\n{report.readme_limits(results)}\n{report.README_END}"
    assert expected in readme, "README known limits differ from bench/results: " \
        "run python -m bench --render bench/results"
    # The figures results.md shows are the ones quoted.
    with open(os.path.join(ROOT, "bench", "results", "results.md"), encoding="utf-8") as fh:
        results_md = fh.read()
    total = f"{results['throughput']['electric']['total']['rows_per_s']:,}"
    assert f"{total} rows/s" in results_md and f"{total} rows/s" in readme
