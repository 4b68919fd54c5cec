"""The hard synthetic Ki-67 tiles: the sweep's optional conditions, the defaults unchanged."""

from __future__ import annotations

import numpy as np

from her2score.data.synth.ki67 import (
    KI67_DAB_OD,
    render_ki67_tile,
    true_all_nuclei_index,
    true_ki67_index,
)


def test_sweep_conditions_change_only_what_they_name() -> None:
    """``strong_od`` moves the strong class (near-black positives), ``hematoxylin_scale`` pales the
    counterstain; the nuclei, their kinds and who is positive stay those of the default tile."""
    rgb, truth = render_ki67_tile(0.4, size=160, seed=5)
    again, same = render_ki67_tile(0.4, size=160, seed=5, strong_od=None, hematoxylin_scale=1.0)
    assert np.array_equal(rgb, again)
    assert truth.equals(same)

    dark, dark_truth = render_ki67_tile(0.4, size=160, seed=5, strong_od=(1.2, 2.0))
    strong = dark_truth["intensity"] == 3
    assert strong.any()
    assert dark_truth.loc[strong, "dab_od"].between(1.2, 2.0).all()
    assert truth.loc[strong, "dab_od"].between(*KI67_DAB_OD[2]).all()
    assert (dark_truth["positive"] == truth["positive"]).all()
    assert dark.mean() < rgb.mean()

    pale, _ = render_ki67_tile(0.4, size=160, seed=5, hematoxylin_scale=0.4)
    assert pale.mean() > rgb.mean()


def test_all_nuclei_truth_counts_every_kind() -> None:
    """The clinical index counts tumour nuclei only; the all-nuclei index every nucleus: positive
    (cycling) lymphocytes raise only the second, negative stroma lowers only the second."""
    _, none_cycling = render_ki67_tile(0.5, size=160, seed=2, cycling_lymphocytes=0.0)
    assert 0 < true_all_nuclei_index(none_cycling) < true_ki67_index(none_cycling)
    _, only_lymphocytes = render_ki67_tile(0.0, size=160, seed=2, cycling_lymphocytes=1.0)
    assert true_ki67_index(only_lymphocytes) == 0.0
    assert true_all_nuclei_index(only_lymphocytes) > 0.0
