"""Dataset audit: score a labeled collection, find its errors, and show what the model reacts to.

See :func:`explain.audit.run.audit` for the stages and :mod:`explain.audit.store` for the
resumable SQLite store.
"""

from explain.audit.concepts import NudeNetDetector, Part, PartDetector
from explain.audit.cues import Cue, Cues, discover_cues
from explain.audit.dataset import Item, open_dataset
from explain.audit.options import AuditOptions, AuditResult, CueOptions, RayOptions
from explain.audit.run import audit

__all__ = ["AuditOptions", "AuditResult", "Cue", "CueOptions", "Cues", "Item", "NudeNetDetector",
           "Part", "PartDetector", "RayOptions", "audit", "discover_cues", "open_dataset"]
