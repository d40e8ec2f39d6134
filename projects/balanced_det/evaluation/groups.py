"""AP by class-frequency group (rare / common / frequent), as LVIS reports it."""
from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence

__all__ = ["frequency_group_ap"]

GROUPS = {"r": "APr", "c": "APc", "f": "APf"}


def frequency_group_ap(results: Mapping[str, float], class_names: Sequence[str],
                       groups: Sequence[str]) -> Dict[str, float]:
    """``{"APr", "APc", "APf"}``: the mean per-class AP (``results["AP-<name>"]``, as
    detectron2's COCO evaluation writes it) over the classes tagged ``"r"`` / ``"c"`` / ``"f"``
    in ``groups`` (one tag per class); classes without a finite AP (no instance in the
    evaluation set) are left out, and a group with none is NaN."""
    if len(groups) != len(class_names):
        raise ValueError(f"groups has {len(groups)} tags for {len(class_names)} classes")
    out = {}
    for tag, key in GROUPS.items():
        aps = [results.get(f"AP-{n}", math.nan) for n, g in zip(class_names, groups) if g == tag]
        aps = [a for a in aps if isinstance(a, (int, float)) and math.isfinite(a)]
        out[key] = sum(aps) / len(aps) if aps else math.nan
    return out
