"""Comparing runs: grouping by threat model, the comparison page, ``sparring compare`` and ``sparring --version``.

Reports are written by hand (``make_run`` of test_report); the CLI runs in process (``run_main`` of test_cli).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_cli import one_error_line, run_main
from test_report import DATA_URI, make_run, without_images

import sparring
from sparring.errors import SparringError
from sparring.report import compare_runs, threat_key, write_comparison
from sparring.report.html import COMPARISON_MARKER

LINF = {"norm": "linf", "eps": 0.1, "bounds": [0.0, 1.0]}
L2 = {"norm": "l2", "eps": 0.5, "bounds": [0.0, 1.0]}
EXTRA_ROW = {"name": "eps-curve@0.1", "source": "eps_curve", "robust_accuracy": 0.18, "broken": 1}


def _per_class(robust: list[float]) -> list[dict[str, object]]:
    names = ["zero", "one", "two"]
    return [
        {"class": k, "name": names[k], "n": 15, "clean_accuracy": 0.95, "robust_accuracy": acc}
        for k, acc in enumerate(robust)
    ]


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    """Two L∞ ε=0.1 runs (different attack sets, one with a row from outside the suite) and one L2 ε=0.5 run.

    The L2 run has the highest worst case of all: it must not be ranked against the L∞ runs.
    """
    common = {"metrics": False, "examples": False}
    strong = make_run(
        tmp_path / "runs" / "strong",
        **common,
        run_name="strong",
        threat=LINF,
        robust_accuracy={"fgsm": 0.61, "pgd": 0.52, "worst_case": 0.49},
        per_class=_per_class([0.3, 0.5, 0.7]),
    )
    weak = make_run(
        tmp_path / "runs" / "weak",
        **common,
        run_name="weak",
        objective="standard",
        threat={**LINF, "eps": 0.1 + 1e-13},  # the same ε, written by another code path
        robust_accuracy={"fgsm": 0.3, "apgd_t": 0.2, "worst_case": 0.18},
        attacks=[{"name": "apgd_t", "robust_accuracy": 0.2, "broken": 10}, EXTRA_ROW],
        per_class=_per_class([0.1, 0.25, 0.2]),
    )
    l2 = make_run(
        tmp_path / "runs" / "l2",
        **common,
        run_name="l2_run",
        threat=L2,
        robust_accuracy={"fgsm": 0.95, "pgd": 0.91, "worst_case": 0.9},
    )
    return [strong, weak, l2]


def _sections(html: str) -> list[str]:
    """The page's threat-group sections, in order."""
    return re.findall(r'<section id="threat-\d+" class="threat-group">(.*?)</section>', html, flags=re.S)


def _row(section: str, label: str) -> str:
    match = re.search(rf"<tr[^>]*><td><a [^>]*>{re.escape(label)}</a>.*?</tr>", section, flags=re.S)
    assert match, label
    return match.group(0)


def test_threat_key() -> None:
    assert threat_key(LINF) == threat_key({**LINF, "norm": "Linf", "eps": 0.1 * (1 + 1e-12)})
    assert threat_key(LINF) != threat_key({**LINF, "eps": 0.11})
    assert threat_key(LINF) != threat_key({**LINF, "bounds": None})  # no box is another threat
    assert threat_key(LINF) != threat_key(L2 | {"eps": 0.1})
    assert threat_key(LINF) != threat_key({**LINF, "radius": 0.05})  # a further field (point clouds)


def test_runs_are_grouped_and_ranked_only_within_a_threat(runs: list[Path]) -> None:
    groups = compare_runs(runs)
    assert [[run.label for run in group.runs] for group in groups] == [["strong", "weak"], ["l2_run"]]
    assert [group.heading for group in groups] == ["L∞ ε = 0.1, box [0, 1]", "L2 ε = 0.5, box [0, 1]"]
    linf, l2 = groups
    assert [run.best for run in linf.runs] == [True, False]
    assert not l2.runs[0].best  # the highest worst case overall, but alone under its threat
    assert linf.attacks == ["fgsm", "pgd", "apgd_t", "eps-curve@0.1"]  # union, first seen; extra rows by name
    assert linf.runs[0].attacks.get("apgd_t") is None and linf.runs[1].attacks["eps-curve@0.1"] == 0.18
    assert linf.classes == [("0", "zero"), ("1", "one"), ("2", "two")]


def test_comparison_page_has_one_section_per_threat(runs: list[Path], tmp_path: Path) -> None:
    html = write_comparison(runs, tmp_path / "page.html").read_text(encoding="utf-8")
    assert COMPARISON_MARKER in html
    assert len(DATA_URI.findall(html)) == 2  # one ε-curve figure per threat: L∞ and L2 never share axes
    linf, l2 = _sections(without_images(html))
    assert "<h2>L∞ ε = 0.1, box [0, 1]</h2>" in linf and "<h2>L2 ε = 0.5, box [0, 1]</h2>" in l2
    assert linf.count('class="best"') == 1 and _row(linf, "strong").startswith('<tr class="best">')
    assert 'class="best"' not in l2 and "nothing to rank it against" in l2
    for attack in ("fgsm", "pgd", "apgd_t", "eps-curve@0.1"):
        assert f'<th class="num">robust after {attack}</th>' in linf, attack
    assert "robust after apgd_t" not in l2
    strong_cells = re.findall(r'<td class="num">([^<]*)</td>', _row(linf, "strong"))
    assert strong_cells == ["97.0%", "61.0%", "52.0%", "—", "—", "49.0%", "48.0%"]  # clean, 4 attacks, worst, bal.
    weak_cells = re.findall(r'<td class="num">([^<]*)</td>', _row(linf, "weak"))
    assert weak_cells[1:6] == ["30.0%", "—", "20.0%", "18.0%", "18.0%"]
    per_class = linf.split("Robust accuracy per class", 1)[1]
    assert all(f'<th class="num">{name}</th>' in per_class for name in ("zero", "one", "two"))
    assert '<td class="num lowest">10.0%</td>' in per_class and '<td class="num lowest">30.0%</td>' in per_class


def test_untrustworthy_runs_are_never_best_and_many_classes_list_the_weakest(tmp_path: Path) -> None:
    names = [f"c{k}" for k in range(25)]
    per_class = [
        {"class": k, "name": name, "n": 4, "clean_accuracy": 1.0, "robust_accuracy": 0.5 + k / 100}
        for k, name in enumerate(names)
    ]
    masked = make_run(
        tmp_path / "masked",
        metrics=False,
        examples=False,
        run_name="masked",
        robust_accuracy={"pgd": 0.99, "worst_case": 0.99},
        trustworthy=False,
        checks=[{"name": "gradients_finite_nonzero", "passed": False, "detail": "zero gradients"}],
        per_class=per_class,
    )
    honest = make_run(tmp_path / "honest", metrics=False, examples=False, run_name="honest", per_class=per_class)
    [group] = compare_runs([masked, honest])
    assert [run.best for run in group.runs] == [False, True]
    assert not group.class_columns
    assert [name for name, _ in group.lowest_classes(group.runs[0])] == ["c0", "c1", "c2", "c3", "c4"]
    html = without_images(write_comparison([masked, honest], tmp_path / "page.html").read_text(encoding="utf-8"))
    assert "c0: 50.0%, c1: 51.0%, c2: 52.0%, c3: 53.0%, c4: 54.0%" in html
    assert '<th class="num">c24</th>' not in html
    assert "gradients_finite_nonzero" in html


def test_non_classification_reports_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "recsys"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"task": "recsys", "ranking": {}}))
    with pytest.raises(SparringError, match="recsys report; only classification runs"):
        compare_runs([run])
    with pytest.raises(SparringError, match="at least one run folder"):
        compare_runs([])


def test_cli_compare_writes_the_page_and_prints_a_table_per_threat(runs, tmp_path, monkeypatch, capsys) -> None:
    args = ["compare", *map(str, runs), "--out", "pages/cmp.html"]
    code, out, err = run_main(args, tmp_path, monkeypatch, capsys)
    assert code == 0, err
    page = tmp_path / "pages" / "cmp.html"
    assert COMPARISON_MARKER in page.read_text(encoding="utf-8")
    assert "comparison: pages/cmp.html" in out
    assert "L∞ ε = 0.1, box [0, 1]" in out and "L2 ε = 0.5, box [0, 1]" in out
    assert "strong ★" in out and "l2_run ★" not in out
    code, _, err = run_main(args, tmp_path, monkeypatch, capsys)  # its own page is replaced
    assert code == 0, err


def test_cli_compare_refuses_a_file_it_did_not_write(runs, tmp_path, monkeypatch, capsys) -> None:
    foreign = tmp_path / "notes.html"
    foreign.write_text("<html>my notes</html>\n")
    code, out, err = run_main(["compare", *map(str, runs), "--out", "notes.html"], tmp_path, monkeypatch, capsys)
    assert code == 2
    assert "not a comparison page written by sparring" in one_error_line(err)
    assert foreign.read_text() == "<html>my notes</html>\n"
    assert out == ""


def test_cli_compare_names_a_folder_without_report(runs, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(["compare", str(runs[0]), "empty"], tmp_path, monkeypatch, capsys)
    assert code == 2
    assert "empty" in one_error_line(err)
    assert not (tmp_path / "comparison.html").exists()


def test_version(tmp_path, monkeypatch, capsys) -> None:
    code, out, err = run_main(["--version"], tmp_path, monkeypatch, capsys)
    assert (code, out, err) == (0, f"sparring {sparring.__version__}\n", "")
    assert sparring.__version__ == "0.1.0"
