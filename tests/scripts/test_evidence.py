"""tools/evidence.py: each setting's cell is the paired ΔAP over the seeds both runs recorded
(hand values below), a sweep's cell pairs each config at its own best learning rate and needs a
swept method, convergence is flagged, and a records root without any pair is refused. Records
are written by hand (tools/compare.py writes the real ones, tested in test_compare)."""
import os

import pytest

from record_helpers import flat, rising, write_record
from tools import evidence as E

TREES, SYNTHETIC, SWEEP = (s.label for s in E.SETTINGS)


def _records(root):
    trees = os.path.join(root, "trees-conv600")
    # DW-FCOS: differences 1, 2, 3, 1, 3 over 5 seeds: mean 2.0, sd 1.0,
    # 95 % CI 2.0 +- 2.776 * 1.0 / sqrt(5) = [+0.8, +3.2]
    for seed, (b, m) in enumerate([(10, 11), (11, 13), (12, 15), (13, 14), (14, 17)]):
        write_record(trees, "fcos", seed, b, flat, suite="trees")
        write_record(trees, "dw_fcos", seed, m, flat, suite="trees")
    # + refinement on seeds 0-2 only, still rising: -1, -1.5, -0.5: mean -1.0, sd 0.5,
    # 95 % CI -1.0 +- 4.303 * 0.5 / sqrt(3) = [-2.2, +0.2]
    for seed, m in enumerate([9, 9.5, 11.5]):
        write_record(trees, "dw_fcos_refine", seed, m, rising, suite="trees")
    # GHM on 2 seeds: no reading
    for seed, (b, m) in enumerate([(8, 7), (9, 6)]):
        write_record(trees, "retinanet", seed, b, flat, suite="trees")
        write_record(trees, "ghm_retinanet", seed, m, flat, suite="trees")
    common = os.path.join(root, "synthetic-conv600")  # no override: the config's LR 0.01
    low = os.path.join(root, "synthetic-conv600-lr0.005")
    for seed, (b, m) in enumerate([(10.0, 11.0), (12.0, 12.5), (14.0, 15.5)]):
        write_record(common, "fcos", seed, b, flat)
        write_record(common, "dw_fcos", seed, m, rising)
        write_record(common, "dw_fcos_refine", seed, b + 2, flat)  # not swept
    for seed, (b, m) in enumerate([(13.0, 11.0), (14.0, 12.0), (15.0, 13.0)]):
        write_record(low, "fcos", seed, b, flat, lr=0.005)
        write_record(low, "dw_fcos", seed, m, flat, lr=0.005)


def _cells(md):
    lines = md.strip().splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    return {row[0]: dict(zip(header, row)) for row in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[4:])}


def test_cells_hand_values(tmp_path):
    _records(str(tmp_path))
    out, figure = str(tmp_path / "evidence.md"), str(tmp_path / "evidence.png")
    md = E.main(["--records-root", str(tmp_path), "--out", out, "--figure", figure])
    assert open(out).read() == md
    with open(figure, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    cells = _cells(md)
    assert list(cells) == ["DW-FCOS", "DW-FCOS + box refinement", "GHM RetinaNet"]
    dw, refine, ghm = cells["DW-FCOS"], cells["DW-FCOS + box refinement"], cells["GHM RetinaNet"]
    assert dw["baseline"] == "FCOS (focal)" and ghm["baseline"] == "RetinaNet (focal)"
    assert dw[TREES] == "+2.0 [+0.8, +3.2] better (n = 5)"
    assert refine[TREES] == "-1.0 [-2.2, +0.2] no difference shown (n = 3), not converged"
    # 2 seeds: t(1) = 12.706, sd of (-1, -3) = sqrt(2): -2.0 +- 12.706 = [-14.7, +10.7]
    assert ghm[TREES] == "-2.0 [-14.7, +10.7] n < 3 seeds (n = 2)"
    # the common recipe: 1.0, 0.5, 1.5: mean 1.0, sd 0.5, [-0.2, +2.2]; DW-FCOS still rising
    assert dw[SYNTHETIC] == "+1.0 [-0.2, +2.2] no difference shown (n = 3), not converged"
    assert refine[SYNTHETIC] == "+2.0 [+2.0, +2.0] better (n = 3)"
    assert ghm[SYNTHETIC] == "-"
    # best of sweep: FCOS best at 0.005 (14.0 > 12.0), DW-FCOS at 0.01 (13.0 > 12.0);
    # 11 - 13, 12.5 - 14, 15.5 - 15 = -2, -1.5, +0.5: mean -1.0, sd 1.3229,
    # -1.0 +- 4.303 * 1.3229 / sqrt(3) = [-4.3, +2.3]
    assert dw[SWEEP] == ("-1.0 [-4.3, +2.3] no difference shown (n = 3), LR 0.01 vs 0.005, "
                         "not converged")
    assert refine[SWEEP] == "-"  # recorded at one learning rate only: not swept


def test_a_root_without_pairs_is_refused(tmp_path):
    write_record(str(tmp_path / "trees-conv600"), "fcos", 0, 10.0, flat, suite="trees")
    with pytest.raises(SystemExit, match="no recorded pair in any of"):
        E.main(["--records-root", str(tmp_path)])


def test_a_records_folder_mixing_learning_rates_is_refused(tmp_path):
    _records(str(tmp_path))
    # one DW-FCOS seed of the common-recipe folder trained at another learning rate
    write_record(str(tmp_path / "trees-conv600"), "dw_fcos", 5, 12.0, flat, lr=0.02,
                 suite="trees")
    with pytest.raises(SystemExit, match="trees-conv600: its runs have different learning rates"):
        E.main(["--records-root", str(tmp_path)])
