"""The one rule for user-chosen names that become path components (pure: no Ray, no MLflow).

A run or config `name`, `runtime.experiment`, a sweep's name and the trial names derived from it
end up in directory names (Ray Train and Tune runs, MLflow artifact locations, checkpoints): a
name with a separator or `..` would put files outside the storage root, and `[`, `"`, `=` need
shell quoting when a user copies a checkpoint path. So a name is 1..100 characters from a
conservative set, starting with a letter or digit.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from pydantic import AfterValidator

MAX_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ALLOWED = (
    "allowed: letters, digits, '.', '_', '-' (1..100 characters, starting with a letter or "
    "digit, no '..')"
)


def check_name(name: str) -> str:
    """`name` if it is a safe path component, else ValueError saying what is allowed."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(ALLOWED)
    return name


SafeName = Annotated[str, AfterValidator(check_name)]


def derived_name(base: str, detail: str) -> str:
    """A safe name `<base>-<detail>` (e.g. a sweep trial from the sweep name and its grid key):
    every character outside the set becomes '-', and a name too long ends in a hash of the whole
    so that different details never collapse onto one name."""
    raw = f"{base}-{detail}"
    name = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._-]|\.\.", "-", raw)).strip("-.")
    if len(name) > MAX_LENGTH:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
        name = f"{name[: MAX_LENGTH - len(digest) - 1].rstrip('-.')}-{digest}"
    return check_name(name)


# MLflow names of the figures of imported data, whose behaviour policy is unknown (docs/data.md,
# docs/metrics.md): a figure that rests on the behaviour estimated from the data's (t, s, a)
# counts carries ESTIMATE_SUFFIX, and the run's tags say which and why.
ESTIMATE_SUFFIX = "_estimate"
BEHAVIOUR_TAG = "mfd.behaviour"  # "unknown" for imported data (absent: the behaviour is known)
ESTIMATES_TAG = "mfd.estimates"  # the run's metric names that are estimates, comma-separated
# The decomposition's figures that use the true behaviour π_b (through π_β*).
RESTS_ON_BEHAVIOUR = (
    "subopt/j_beta_star",
    "subopt/regularisation_gap",
    "subopt/distribution_shift",
)
# Manifest behaviour keys -> metric names (behaviour/return and /exploitability when known).
BEHAVIOUR_METRICS = {
    "behaviour/return": "return",
    "behaviour/exploitability": "exploitability",
    "behaviour/data_return": "data_mean_return",
    "behaviour/return" + ESTIMATE_SUFFIX: "return_estimate",
    "behaviour/exploitability" + ESTIMATE_SUFFIX: "exploitability_estimate",
}


def estimate_key(key: str) -> str:
    """The MLflow name of `key` when it rests on an estimated behaviour."""
    return key + ESTIMATE_SUFFIX
