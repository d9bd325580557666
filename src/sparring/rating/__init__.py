"""Human ratings of adversarial examples, in the manner of SCOOTER.

SCOOTER is a framework for human studies of the imperceptibility of adversarial examples (346 participants; Likert
ratings; statistically grounded tests with equivalence bounds). Its finding is the reason for this module: a small
ℓp norm is neither necessary nor sufficient for an adversarial image to be imperceptible to people, so
"imperceptible" is a claim to check with raters, not to read off ε.

``sparring rate RUN_DIR... --out rating.html`` (:func:`write_rating_page`) writes one self-contained HTML page:
clean / adversarial pairs from each run's ``examples.npz`` plus clean / clean control pairs (the same clean image
twice), in a random order fixed by ``--seed``, the adversarial image on a random side. Every pair asks the same
question, on a 5- (or 7-) point Likert scale:

    "How different do these two images look?"  1 = identical … 5 = very different

The page keeps the answers in the browser (``localStorage``, keyed by the page's id) and exports them as JSON.

``sparring rate --summarize answers.json...`` (:func:`summarize`) gives, per condition (each attack, and
``control``), the number of ratings and the mean ± sd; the inter-rater agreement as Krippendorff's α (ordinal) over
pairs × raters; and for each attack an equivalence test against the controls: two one-sided Welch t-tests (TOST)
that its mean rating minus the control pairs' mean rating lies within ±Δ, by default Δ = 0.5 point on the 5-point
scale (0.75 on the 7-point scale: the same share of the range), at α = 0.05. Shown equivalent, the attack is
reported "equivalent to clean (imperceptible)"; otherwise "not shown equivalent" (which is not proof of a visible
difference: too few ratings cannot show equivalence either).

This is a tool for collecting and screening ratings, not a substitute for a preregistered study: the test treats
ratings as independent (the same rater and image contribute several), the bounds are a convention to state, not a
law, and a real study fixes its sample size, raters, viewing conditions and analysis in advance.
"""

from sparring.rating.page import (
    CONTROL,
    GENERATOR,
    QUESTION,
    RatingPage,
    default_controls,
    is_rating_page,
    write_rating_page,
)
from sparring.rating.stats import betainc, krippendorff_alpha, t_cdf, t_ppf, welch_tost
from sparring.rating.summary import default_delta, load_answers, summarize, summary_table, write_summary_json

__all__ = [
    "CONTROL", "GENERATOR", "QUESTION", "RatingPage", "default_controls", "is_rating_page", "write_rating_page",
    "betainc", "krippendorff_alpha", "t_cdf", "t_ppf", "welch_tost", "default_delta", "load_answers", "summarize",
    "summary_table", "write_summary_json",
]
