"""Human rating export (``sparring rate``): the page, the statistics and the summary of answers (issue 21).

The statistics are checked against textbook values: Student's t CDF against tables and closed forms,
Krippendorff's α against the worked example of Krippendorff (2011), TOST on synthetic ratings. The page is
checked as text here; ``test_rating_browser.py`` drives it in headless Chromium.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from test_cli import one_error_line, run_main

from sparring.errors import DataError
from sparring.rating import (
    CONTROL,
    betainc,
    default_controls,
    default_delta,
    is_rating_page,
    krippendorff_alpha,
    summarize,
    t_cdf,
    t_ppf,
    welch_tost,
    write_rating_page,
)
from sparring.rating.page import png_bytes


def make_run(folder: Path, n: int = 8, *, attacks: list[str] | None = None, unchanged: int = 0, seed: int = 0,
             channels: int = 1, size: int = 8) -> Path:
    """A folder with ``examples.npz`` (n images, the last ``unchanged`` of them not perturbed) and report.json."""
    rng = np.random.default_rng(seed)
    clean = rng.random((n, channels, size, size)).astype(np.float32)
    adv = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    if unchanged:
        adv[n - unchanged:] = clean[n - unchanged:]
    arrays = {"clean": clean, "adv": adv, "labels": np.arange(n) % 10, "clean_pred": np.arange(n) % 10,
              "adv_pred": (np.arange(n) + 1) % 10}
    if attacks is not None:
        arrays["attack"] = np.array(attacks)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "examples.npz", **arrays)
    (folder / "report.json").write_text(json.dumps({"threat": {"norm": "linf", "eps": 0.1}}), encoding="utf-8")
    return folder


def pairs_of(html: str) -> list[tuple[str, str, str]]:
    """(pair id, condition, source) of every pair on a page, in page order."""
    return re.findall(r'<li class="pair" id="pair-[^"]+" data-pair="([^"]+)" data-condition="([^"]+)" '
                      r'data-source="([^"]+)"', html)


# -- the page ------------------------------------------------------------------------------------------------------


def test_page_holds_every_changed_pair_and_the_default_controls(tmp_path):
    run = make_run(tmp_path / "run", n=10, unchanged=2)
    page = write_rating_page([run], tmp_path / "rating.html", seed=0)
    html = page.path.read_text(encoding="utf-8")
    found = pairs_of(html)
    assert page.n_adversarial == 8 and page.skipped_unchanged == 2
    assert page.n_controls == default_controls(8) == 4
    assert len(found) == 12
    assert [c for _, c, _ in found].count(CONTROL) == 4
    assert [c for _, c, _ in found].count("adversarial") == 8
    assert len({pid for pid, _, _ in found}) == 12
    assert [pid for pid, _, _ in found] == [f"p{k:02d}" for k in range(1, 13)]  # ids in page order, not a label
    assert is_rating_page(page.path)
    assert '<meta name="generator" content="sparring-rate">' in html
    assert "How different do these two images look?" in html
    assert "1 = identical" in html and "5 = very different" in html
    assert html.count('<input type="radio"') == 12 * 5


def test_pairs_cap_is_drawn_evenly_across_attacks_and_controls_are_counted(tmp_path):
    attacks = ["fgsm"] * 6 + ["pgd"] * 2
    run = make_run(tmp_path / "run", n=8, attacks=attacks)
    page = write_rating_page([run], tmp_path / "rating.html", pairs=4, controls=3, seed=1)
    conditions = [c for _, c, _ in pairs_of(page.path.read_text(encoding="utf-8"))]
    assert page.conditions == {"control": 3, "fgsm": 2, "pgd": 2}
    assert sorted(conditions) == ["control"] * 3 + ["fgsm"] * 2 + ["pgd"] * 2
    assert default_controls(40) == 10


def test_controls_show_the_same_clean_image_twice_and_adversarial_pairs_differ(tmp_path):
    run = make_run(tmp_path / "run", n=6)
    html = write_rating_page([run], tmp_path / "rating.html", seed=3).path.read_text(encoding="utf-8")
    blocks = re.findall(r'(data-condition="[^"]+".*?)</li>', html, flags=re.S)
    assert len(blocks) == 6 + default_controls(6)
    for block in blocks:
        images = re.findall(r'src="data:image/png;base64,([^"]+)"', block)
        assert len(images) == 2
        assert (images[0] == images[1]) == block.startswith(f'data-condition="{CONTROL}"')


def test_order_and_sides_are_fixed_by_the_seed(tmp_path):
    run = make_run(tmp_path / "run", n=12)
    first = write_rating_page([run], tmp_path / "a.html", seed=7).path.read_text(encoding="utf-8")
    again = write_rating_page([run], tmp_path / "b.html", seed=7).path.read_text(encoding="utf-8")
    other = write_rating_page([run], tmp_path / "c.html", seed=8).path.read_text(encoding="utf-8")
    assert first == again
    assert pairs_of(first) != pairs_of(other)
    sides = re.findall(r'adversarial_side', first)
    assert not sides  # the side is never written out


def test_adversarial_side_is_randomised(tmp_path):
    run = make_run(tmp_path / "run", n=30)
    rating = write_rating_page([run], tmp_path / "rating.html", controls=0, seed=0)
    html = rating.path.read_text(encoding="utf-8")
    clean_of = {}
    with np.load(run / "examples.npz") as data:
        from sparring.rating.page import png_base64

        for i in range(30):
            clean_of[f"run:{i}"] = png_base64(data["clean"][i])
    left = 0
    for block in re.findall(r'(data-source="[^"]+".*?)</li>', html, flags=re.S):
        source = re.match(r'data-source="([^"]+)"', block).group(1)
        images = re.findall(r'src="data:image/png;base64,([^"]+)"', block)
        assert clean_of[source] in images
        left += images[0] != clean_of[source]
    assert 5 < left < 25


def test_page_is_self_contained(tmp_path):
    run = make_run(tmp_path / "run", n=4, channels=3, size=32)
    html = write_rating_page([run], tmp_path / "rating.html").path.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert re.findall(r'<script[^>]*\ssrc=', html) == []
    assert re.findall(r'<link\b', html) == []
    assert "@import" not in html and "url(" not in html
    sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def test_images_are_enlarged_pngs(tmp_path):
    from PIL import Image

    pixels = (np.arange(8 * 8 * 3).reshape(8, 8, 3) % 256).astype(np.uint8)
    image = Image.open(io.BytesIO(png_bytes(pixels)))
    assert image.size == (8, 8) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), pixels)
    grey = Image.open(io.BytesIO(png_bytes(pixels[:, :, :1])))
    assert grey.mode == "L" and np.array_equal(np.asarray(grey), pixels[:, :, 0])

    import base64

    from sparring.rating.page import png_base64

    digit = np.zeros((1, 8, 8))
    digit[0, 2, 3] = 1.0
    big = Image.open(io.BytesIO(base64.b64decode(png_base64(digit))))
    assert big.size == (160, 160)
    array = np.asarray(big)
    assert array[2 * 20:3 * 20, 3 * 20:4 * 20].min() == 255 and array.sum() == 255 * 400  # nearest neighbour


def test_several_runs_and_attack_names_label_the_conditions(tmp_path):
    a = make_run(tmp_path / "standard", n=4)
    b = make_run(tmp_path / "pgd_at", n=4, attacks=["apgd-ce", "apgd-ce", "square", "control"], seed=1)
    page = write_rating_page([a, b], tmp_path / "rating.html", controls=2)
    assert page.conditions == {"control": 2, "pgd_at/apgd-ce": 2, "pgd_at/attack control": 1, "pgd_at/square": 1,
                               "standard/adversarial": 4}


def test_cli_writes_the_page_and_refuses_to_overwrite_a_foreign_file(tmp_path, monkeypatch, capsys):
    make_run(tmp_path / "run", n=5)
    code, out, err = run_main(["rate", "run", "--pairs", "3", "--controls", "2", "--seed", "4"], tmp_path,
                              monkeypatch, capsys)
    assert code == 0, err
    page = tmp_path / "rating.html"  # the default --out, in the working folder
    assert "5 pairs (3 adversarial, 2 control)" in out
    first = page.read_text(encoding="utf-8")
    code, _, err = run_main(["rate", "run", "--out", "rating.html", "--seed", "5", "--scale", "7"], tmp_path,
                            monkeypatch, capsys)
    assert code == 0, err  # its own page: replaced
    second = page.read_text(encoding="utf-8")
    assert second != first and second.count('<input type="radio"') == 7 * len(pairs_of(second))
    mine = tmp_path / "notes.html"
    mine.write_text("<html><head><title>my notes</title></head></html>", encoding="utf-8")
    code, _, err = run_main(["rate", "run", "--out", "notes.html"], tmp_path, monkeypatch, capsys)
    assert code == 2
    assert "not a rating page written by sparring" in one_error_line(err)
    assert mine.read_text(encoding="utf-8") == "<html><head><title>my notes</title></head></html>"


@pytest.mark.parametrize("argv, needle", [
    (["rate", "nowhere"], "is not a folder"),
    (["rate", "empty"], "holds no examples.npz"),
    (["rate", "broken"], "could not be read"),
    (["rate", "run", "--scale", "4"], "--scale must be 5 or 7"),
    (["rate", "run", "--json", "s.json"], "go with --summarize"),
    (["rate", "a.json", "--summarize", "--pairs", "3"], "only make sense when writing a page"),
    (["rate", "a.json", "--summarize", "--scale", "7"], "only make sense when writing a page"),
])
def test_cli_page_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, needle):
    make_run(tmp_path / "run", n=3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "examples.npz").write_bytes(b"not a zip")
    code, _, err = run_main(argv, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert needle in one_error_line(err)


def test_unchanged_examples_only_is_an_error(tmp_path):
    run = make_run(tmp_path / "run", n=3, unchanged=3)
    with pytest.raises(DataError, match="changed nothing"):
        write_rating_page([run], tmp_path / "rating.html")


# -- statistics ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t, df, expected", [
    (1.0, 1, 0.75),  # Cauchy
    (-1.0, 1, 0.25),
    (0.0, 7.3, 0.5),
    (1.812461123, 10, 0.95),  # table values
    (2.228138852, 10, 0.975),
    (2.042272456, 30, 0.975),
    (3.169272673, 10, 0.995),
    (-2.570581836, 5, 0.025),
    (1.959963985, 1e9, 0.975),  # the normal limit
])
def test_t_cdf_matches_tables(t, df, expected):
    assert t_cdf(t, df) == pytest.approx(expected, abs=1e-8)


def test_t_cdf_matches_closed_form_for_two_degrees_of_freedom():
    for t in (-30.0, -2.5, -0.1, 0.4, 1.0, 3.3, 100.0):
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_t_ppf_inverts_the_cdf():
    for df in (1, 2.5, 9, 40, 1000):
        for q in (0.01, 0.2, 0.5, 0.9, 0.95, 0.999):
            assert t_cdf(t_ppf(q, df), df) == pytest.approx(q, abs=1e-10)
    assert t_ppf(0.975, 10) == pytest.approx(2.228138852, abs=1e-8)


def test_betainc_known_values():
    assert betainc(1, 1, 0.3) == pytest.approx(0.3)
    assert betainc(2.5, 1, 0.6) == pytest.approx(0.6 ** 2.5)
    assert betainc(0.5, 0.5, 0.5) == pytest.approx(0.5)
    assert betainc(3, 4, 0.0) == 0.0 and betainc(3, 4, 1.0) == 1.0


def test_t_cdf_agrees_with_scipy_when_present():
    stats = pytest.importorskip("scipy.stats")
    for df in (0.7, 1, 3, 12.4, 80):
        for t in (-40, -3, -0.5, 0.2, 1.5, 6, 25):
            assert t_cdf(t, df) == pytest.approx(float(stats.t.cdf(t, df)), abs=1e-10)


KRIPPENDORFF_2011 = np.array([  # observers x units, from Krippendorff (2011), "Computing Krippendorff's alpha"
    [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
    [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
])


@pytest.mark.parametrize("level, expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_on_the_textbook_example(level, expected):
    assert krippendorff_alpha(KRIPPENDORFF_2011, level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_alpha_perfect_agreement_and_undefined_cases():
    perfect = {f"u{k}": {"a": v, "b": v, "c": v} for k, v in enumerate([1, 2, 5, 3, 1, 4])}
    assert krippendorff_alpha(perfect, "ordinal") == pytest.approx(1.0)
    assert krippendorff_alpha({"u": {"a": 1}}, "ordinal") is None  # nothing pairable
    assert krippendorff_alpha({"u": {"a": 2, "b": 2}, "v": {"a": 2, "b": 2}}) is None  # no variation
    reversed_ = {f"u{k}": {"a": v, "b": 6 - v} for k, v in enumerate([1, 2, 4, 5, 1, 5])}
    assert krippendorff_alpha(reversed_, "ordinal") < 0  # systematic disagreement


def test_tost_equal_distributions_with_many_ratings_are_equivalent():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 4, size=400)
    b = rng.integers(1, 4, size=300)
    result = welch_tost(a, b, delta=0.5)
    assert result.equivalent and result.p < 0.05
    assert -0.5 < result.ci[0] < result.ci[1] < 0.5


def test_tost_clearly_different_or_few_ratings_are_not_shown_equivalent():
    rng = np.random.default_rng(1)
    control = rng.integers(1, 3, size=200)
    assert not welch_tost(rng.integers(3, 6, size=200), control, delta=0.5).equivalent
    few = welch_tost([1, 2, 1], [1, 2, 2], delta=0.5)  # same means roughly, but far too few ratings
    assert not few.equivalent and few.p > 0.05
    assert welch_tost([1], [1, 1], delta=0.5).p is None
    constant = welch_tost([1, 1, 1], [1, 1], delta=0.5)  # no variance, equal means: known exactly
    assert constant.equivalent and constant.as_dict()["df"] is None  # JSON has no infinity
    assert not welch_tost([2, 2, 2], [1, 1], delta=0.5).equivalent


def test_tost_p_values_agree_with_a_direct_computation():
    a, b = [1, 2, 2, 3, 1, 2, 2, 1], [1, 1, 2, 1, 2, 1]
    result = welch_tost(a, b, delta=0.5)
    ma, mb = np.mean(a), np.mean(b)
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    assert result.df == pytest.approx(df)
    assert result.p_lower == pytest.approx(1 - t_cdf((ma - mb + 0.5) / se, df))
    assert result.p_upper == pytest.approx(t_cdf((ma - mb - 0.5) / se, df))


# -- summaries of answers ------------------------------------------------------------------------------------------


def answers_file(path: Path, rater: str, ratings: dict[str, tuple[str, int]], *, page_id: str = "page1",
                 scale: int = 5) -> Path:
    data = {"generator": "sparring-rate", "format": 1, "page_id": page_id, "rater": rater, "scale": scale,
            "answers": [{"pair": p, "condition": c, "rating": r} for p, (c, r) in ratings.items()]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def synthetic_raters(tmp_path: Path, n_raters: int = 6, seed: int = 0) -> list[Path]:
    """Raters who see controls and ``blur`` pairs alike (1-2) and ``pgd`` pairs as clearly different (4-5)."""
    rng = np.random.default_rng(seed)
    conditions = ["control"] * 20 + ["blur"] * 20 + ["pgd"] * 20
    files = []
    for r in range(n_raters):
        ratings = {}
        for k, condition in enumerate(conditions):
            base = 4 if condition == "pgd" else 1
            ratings[f"p{k:02d}"] = (condition, int(base + rng.integers(0, 2)))
        files.append(answers_file(tmp_path / f"r{r}.json", f"rater{r}", ratings))
    return files


def test_summary_means_agreement_and_equivalence(tmp_path):
    summary = summarize(synthetic_raters(tmp_path))
    rows = {row["condition"]: row for row in summary["conditions"]}
    assert list(rows) == ["control", "blur", "pgd"]
    assert rows["control"]["verdict"].startswith("reference")
    assert rows["blur"]["verdict"] == "equivalent to clean (imperceptible)"
    assert rows["pgd"]["verdict"] == "not shown equivalent"
    assert rows["pgd"]["n_ratings"] == 120 and rows["pgd"]["n_raters"] == 6 and rows["pgd"]["n_pairs"] == 20
    assert 4 <= rows["pgd"]["mean"] <= 5
    assert summary["bounds"]["delta"] == 0.5 and "±0.5" in summary["bounds"]["statement"]
    assert 0.5 < summary["agreement"]["krippendorff_alpha_ordinal"] < 1
    assert summary["agreement"]["pairs_rated_by_two_or_more"] == 60


def test_summary_bounds_scale_with_the_scale():
    assert default_delta(5) == 0.5 and default_delta(7) == 0.75


def test_cli_summarize_prints_the_table_bounds_and_writes_json(tmp_path, monkeypatch, capsys):
    from sparring.cli import out_console

    monkeypatch.setattr(out_console, "width", 160)  # the table unwrapped, as in a wide terminal
    files = [p.name for p in synthetic_raters(tmp_path, n_raters=3)]
    code, out, err = run_main(["rate", "--summarize", *files, "--json", "summary.json"], tmp_path, monkeypatch,
                              capsys)
    assert code == 0, err
    assert "equivalent to clean" in out and "not shown equivalent" in out
    assert "±0.5 on the 1-5 scale" in out
    assert "Krippendorff's α (ordinal)" in out
    written = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert written["generator"] == "sparring-rate-summary" and written["raters"] == 3
    code, _, err = run_main(["rate", "--summarize", *files, "--json", "summary.json", "--delta", "0.3"], tmp_path,
                            monkeypatch, capsys)
    assert code == 0, err  # its own summary: replaced
    assert json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))["bounds"]["delta"] == 0.3
    code, _, err = run_main(["rate", "--summarize", *files, "--json", files[0]], tmp_path, monkeypatch, capsys)
    assert code == 2 and "not a rating summary written by sparring" in one_error_line(err)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


HEAD = '{"generator": "sparring-rate", "page_id": "x", "rater": "a", '


@pytest.mark.parametrize("content, needle", [
    ("{not json", "is not valid JSON"),
    ("[1, 2, 3]", "is not an answers file of a sparring rating page"),
    ('{"generator": "something else"}', "is not an answers file"),
    (HEAD + '"scale": 4, "answers": []}', "scale must be 5 or 7"),
    (HEAD + '"scale": 5, "answers": {}}', "answers must be a list"),
    (HEAD + '"scale": 5, '
     '"answers": [{"pair": "p1", "condition": "control", "rating": 9}]}', "rating must be a whole number from 1 to 5"),
    (HEAD + '"scale": 5, '
     '"answers": [{"pair": "p1", "condition": "control", "rating": "3"}]}', "rating must be a whole number"),
    (HEAD + '"scale": 5, "answers": ["p1"]}', "must be an object"),
    (HEAD + '"scale": 5, "answers": []}', "hold no rating"),
])
def test_malformed_answers_file_is_one_line_and_status_2(tmp_path, monkeypatch, capsys, content, needle):
    _write(tmp_path / "answers.json", content)
    code, out, err = run_main(["rate", "--summarize", "answers.json"], tmp_path, monkeypatch, capsys)
    assert code == 2, out
    assert needle in one_error_line(err)


def test_answers_that_do_not_fit_together_are_refused(tmp_path, monkeypatch, capsys):
    answers_file(tmp_path / "a.json", "ann", {"p1": ("control", 1)})
    answers_file(tmp_path / "b.json", "ann", {"p1": ("control", 2)})
    answers_file(tmp_path / "c.json", "bob", {"p1": ("pgd", 2)})
    answers_file(tmp_path / "d.json", "cy", {"p1": ("control", 2)}, scale=7)
    for files, needle in ((["a.json", "b.json"], "are both rater 'ann'"), (["a.json", "c.json"], "not come from the "
                          "same page"), (["a.json", "d.json"], "different scales"), (["missing.json"], "not found")):
        code, _, err = run_main(["rate", "--summarize", *files], tmp_path, monkeypatch, capsys)
        assert code == 2
        assert needle in one_error_line(err)
