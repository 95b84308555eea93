"""Per-group (Mondrian) conformal p-values: a row's p-value from its own group's calibration
scores, so the false-positive rate holds group by group (for a guarded classifier: class by
class), not only on average over the groups.

With ``n_g`` calibration scores of group ``g``, ``p = (1 + #{cal_g ≥ s}) / (n_g + 1)``
(:func:`oodguard.decisions.conformal_p_values`, the one implementation) and
``P(p ≤ alpha | group g) ≤ alpha`` for an in-distribution row of group ``g``. A group needs
``n_g ≥ 1/alpha − 1`` scores, or no row of it could ever be flagged at ``alpha``:
:meth:`GroupCalibration.check_alpha` refuses the others, naming them.

``calibration.json`` holds the groups as ``{"labels": [...], "calibration_scores": [[...], ...]}``
(labels all integers or all strings). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from oodguard.decisions import conformal_p_values, min_calibration_size, p_value_table
from oodguard.errors import InvalidInputError, parameter_error

__all__ = ["GroupCalibration"]

Label = int | str


class GroupCalibration:
    """The calibration scores of each group.

    Parameters
    ----------
    labels : the groups' labels (all ``int`` or all ``str``, distinct)
    scores : one float64 array per label, sorted ascending, non-empty
    """

    def __init__(self, labels: Sequence[Label], scores: Sequence[np.ndarray]) -> None:
        self.labels = tuple(labels)
        self.scores = tuple(np.asarray(s, dtype=np.float64) for s in scores)
        self._index = {label: i for i, label in enumerate(self.labels)}
        self._tables = tuple(p_value_table(len(s)) for s in self.scores)

    @property
    def sizes(self) -> dict[Label, int]:
        """Calibration scores per group."""
        return {label: len(s) for label, s in zip(self.labels, self.scores, strict=True)}

    def check_alpha(self, alpha: float, owner: str) -> None:
        """Refuse an ``alpha`` that some group's calibration cannot reach (InvalidParameterError
        naming every such group and its count)."""
        need = min_calibration_size(alpha)
        small = {g: n for g, n in self.sizes.items() if n < need}
        if small:
            raise parameter_error(
                "alpha", f"reachable by every group's calibration: each group needs at least "
                f"1/alpha − 1 = {need} calibration rows, and {_describe(small)}", alpha,
                owner=owner, fix="Calibrate with more rows of those groups, or a larger alpha.")

    def p_values(self, scores: np.ndarray, groups: Any) -> np.ndarray:
        """Each row's conformal p-value against its group's calibration scores.

        Parameters
        ----------
        scores : float64 ``[N]``, higher = more OOD
        groups : array-like ``[N]`` of the rows' labels (ints or strings, as calibrated)

        Raises
        ------
        InvalidInputError (reason ``"group"``)
            ``groups`` is not one label per row, or holds a label without calibration.
        """
        g = np.asarray(groups)
        if g.ndim != 1 or len(g) != len(scores):
            raise InvalidInputError(
                f"groups must hold one label per row: {len(scores)} labels, got an array of "
                f"shape {g.shape}", reason="group")
        out = np.empty(len(scores), dtype=np.float64)
        uniq, inverse = np.unique(g, return_inverse=True)
        for k, value in enumerate(uniq.tolist()):
            i = self._index.get(value)
            if i is None:
                raise InvalidInputError(
                    f"group {value!r} has no calibration; the calibrated groups are "
                    f"{list(self.labels)[:20]}", reason="group")
            rows = inverse == k
            out[rows] = conformal_p_values(self.scores[i], scores[rows], self._tables[i])
        return out

    def to_doc(self) -> dict[str, Any]:
        return {"labels": list(self.labels),
                "calibration_scores": [s.tolist() for s in self.scores]}


def _describe(sizes: dict[Label, int]) -> str:
    items = [f"group {g!r} has {n}" for g, n in list(sizes.items())[:10]]
    more = f" (and {len(sizes) - 10} more)" if len(sizes) > 10 else ""
    return ", ".join(items) + more
