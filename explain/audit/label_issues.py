"""Label issues: the labeled images whose label the data itself contradicts, apart from the
model's errors (confident learning, cleanlab's ``find_label_issues``).

Confident learning needs each image's class probabilities from a model that did not learn from
that image's label. The audit uses, where the data allows it (an embedding of every labeled
image and at least :data:`FOLDS` images of each side), **out-of-sample** probabilities: a
logistic regression on the image embeddings (:mod:`explain.audit.embedding`, standardised),
fitted on the labels of the other folds of a seeded stratified :data:`FOLDS`-fold split. An
image is then an issue when images that look like it in the model's feature space carry the
other label, which a model error alone (a whole source scored too high, say) does not make.
Otherwise it falls back to the audited model's own probabilities, reported as **in-sample**
(they are the scores whose errors are being judged, so every confident error looks like a label
issue).

The task is binary, as the audit's metrics are: the target class against the rest. cleanlab
prunes by noise rate (its default) and the issues are ranked by self-confidence: the
probability of the given label, lowest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOLDS = 5


@dataclass
class LabelIssues:
    """``order``: indices of the issues into the inputs, most likely first; ``given``: each
    input's probability of its own label; ``source``: how the probabilities were made;
    ``out_of_sample``: whether they were."""

    order: list[int]
    given: np.ndarray
    source: str
    out_of_sample: bool


def out_of_sample_probs(vectors: np.ndarray, positive: np.ndarray, seed: int = 0
                        ) -> np.ndarray:
    """P(target) of each image from a logistic regression fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    return cross_val_predict(model, vectors, positive.astype(int), cv=folds,
                             method="predict_proba")[:, 1]


def find_issues(positive: np.ndarray, scores: np.ndarray, vectors: np.ndarray | None,
                embedding: str = "", seed: int = 0) -> LabelIssues | None:
    """The label issues of these labeled images (``positive``: label is the target; ``scores``:
    the model's p(target); ``vectors``: their embeddings, one row each, or None); None when
    either side has fewer than 2 labeled images (confident learning needs a class's typical
    confidence)."""
    from cleanlab.filter import find_label_issues

    y = np.asarray(positive, dtype=bool)
    if min(y.sum(), (~y).sum()) < 2:
        return None
    if vectors is not None and min(y.sum(), (~y).sum()) >= FOLDS:
        p = out_of_sample_probs(vectors, y, seed)
        source = (f"out-of-sample: {FOLDS}-fold cross-validated logistic regression on "
                  f"{embedding}")
        out = True
    else:
        p = np.asarray(scores, dtype=np.float64)
        source = ("in-sample: the audited model's own probabilities (too few labeled images "
                  f"for {FOLDS} folds, or no embeddings)")
        out = False
    p = np.clip(p, 1e-6, 1 - 1e-6)
    probs = np.stack([1.0 - p, p], axis=1)
    order = find_label_issues(y.astype(int), probs, return_indices_ranked_by="self_confidence",
                              n_jobs=1, verbose=False)
    return LabelIssues([int(i) for i in order], probs[np.arange(len(y)), y.astype(int)],
                       source, out)
