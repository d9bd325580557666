"""Views of a run folder's ``report.json``: the file itself, an HTML page, a comparison page, a terminal table.

A run folder holds ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``report.json`` (the canonical,
machine-readable record; schema in ``docs/report.md``), ``report.html`` and optionally ``examples.npz``.
Everything here only reads the folder, except the writers, which write atomically.

    >>> report = load_report(run_dir / "report.json")
    >>> write_html(run_dir)                         # run_dir / "report.html"
    >>> write_comparison([run_a, run_b], Path("comparison.html"))   # one section per threat model
    >>> rich.print(summary_table(report))
    >>> for group in compare_runs([run_a, run_b]):
    ...     rich.print(comparison_table(group))
"""

from sparring.report.compare import ThreatGroup, compare_runs, threat_key
from sparring.report.html import render_comparison, render_report, write_comparison, write_html
from sparring.report.schema import SCHEMA_VERSION, is_trustworthy, load_report, worst_case, write_json
from sparring.report.terminal import comparison_table, summary_table

__all__ = [
    "SCHEMA_VERSION",
    "ThreatGroup",
    "compare_runs",
    "comparison_table",
    "render_comparison",
    "threat_key",
    "is_trustworthy",
    "load_report",
    "render_report",
    "summary_table",
    "worst_case",
    "write_comparison",
    "write_html",
    "write_json",
]
