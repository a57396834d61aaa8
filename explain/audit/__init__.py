"""Dataset audit: score a labeled collection, find its errors, and show what the model reacts to.

See :func:`explain.audit.run.audit` for the stages and :mod:`explain.audit.store` for the
resumable SQLite store.
"""

from explain.audit.concepts import NudeNetDetector, Part, PartDetector
from explain.audit.dataset import Item, open_dataset
from explain.audit.run import AuditOptions, AuditResult, audit

__all__ = ["AuditOptions", "AuditResult", "Item", "NudeNetDetector", "Part", "PartDetector",
           "audit", "open_dataset"]
