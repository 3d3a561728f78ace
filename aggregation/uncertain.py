"""Which confidences count as uncertain, and how a file writes them so that they still do.

Light on purpose (pandas only): the run folder and the command write clusters with it without
loading the model's numba kernels.
"""

from __future__ import annotations

import pandas as pd

UNCERTAIN_BELOW = 0.5  # an item whose cluster is less likely than not is one to show the crowd again


def written(confidence: pd.Series, digits: int) -> pd.Series:
    """`confidence` rounded to `digits` decimals for a file, an uncertain one staying below
    UNCERTAIN_BELOW.

    Rounded as it was, 0.49996 was written `0.5`: a run whose report counted 1,156 items below 0.5
    wrote a `clusters.csv` in which 1,155 were, and a user filtering the file for the items to send
    back lost one. Such a value is written just below the line (`0.4999`).

    >>> written(pd.Series([0.49996, 0.5, 0.123456, 1.0]), 4).tolist()
    [0.4999, 0.5, 0.1235, 1.0]
    """
    rounded = confidence.round(digits)
    crossed = (confidence < UNCERTAIN_BELOW) & (rounded >= UNCERTAIN_BELOW)
    return rounded.mask(crossed, round(UNCERTAIN_BELOW - 10.0**-digits, digits))
