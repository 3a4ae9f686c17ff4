"""Membership inference: can an attacker tell whether a patient's images were in the training set?

White-box attacks query the model (:mod:`.whitebox`), black-box attacks use only the release
(:mod:`.blackbox`); :mod:`.metrics` turns their scores into ROC metrics with bootstrap confidence intervals and
:mod:`.run` assembles members, non-members and the public report entry. Checks return numbers; the policy
(``policies.evaluate``) decides whether they are acceptable.
"""

from .blackbox import BlackBoxAttack, BlackBoxOptions
from .run import (MembershipScores, membership_report, model_privacy, release_level_checks, run_membership,
                  score_membership)
from .whitebox import WhiteBoxAttack, WhiteBoxOptions

__all__ = [
    "BlackBoxAttack", "BlackBoxOptions", "MembershipScores", "WhiteBoxAttack", "WhiteBoxOptions",
    "membership_report", "model_privacy", "release_level_checks", "run_membership", "score_membership",
]
