"""Prefect tasks of the crowdclust pipeline: one module per stage, thin adapters over plain functions."""

import logging
import warnings

# toloka-kit 1.2.3 imports pkg_resources; the deprecation warning is noise in every run log.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


class _DropExperimentalNotice(logging.Filter):
    """toloka-kit logs 'Experimental method' on every TSV export; it says nothing to a pipeline user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Experimental method"


logging.getLogger("toloka.client").addFilter(_DropExperimentalNotice())
