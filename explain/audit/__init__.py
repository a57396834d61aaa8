"""Dataset audit: score a labeled collection, find its errors, and show what the model reacts to.

See :func:`explain.audit.run.audit` for the stages, :mod:`explain.audit.store` for the
resumable SQLite store, :mod:`explain.audit.comparison` for comparing two audits and
:mod:`explain.audit.mining` for mining a pool for counter-examples of an audit's cues.
"""

from explain.audit.comparison import Comparison, compare
from explain.audit.concepts import NudeNetDetector, Part, PartDetector
from explain.audit.cues import Cue, Cues, discover_cues
from explain.audit.dataset import Item, open_dataset
from explain.audit.mining import CounterExamples, counterexamples
from explain.audit.options import AuditOptions, CueOptions, RayOptions
from explain.audit.result import AuditResult
from explain.audit.run import audit

__all__ = ["AuditOptions", "AuditResult", "Comparison", "CounterExamples", "Cue", "CueOptions",
           "Cues", "Item", "NudeNetDetector", "Part", "PartDetector", "RayOptions", "audit",
           "compare", "counterexamples", "discover_cues", "open_dataset"]
