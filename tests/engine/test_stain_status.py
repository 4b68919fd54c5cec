"""predict flags inputs that look like H&E: an IHC model's probabilities mean nothing there."""

import torch

from her2score.data.synth import render_pair
from her2score.engine.predict import stain_status


def _chw(rgb):
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def test_he_input_is_flagged_and_ihc_is_not() -> None:
    he, ihc, _ = render_pair("2+", size=(384, 384), seed=4)
    assert stain_status(_chw(he)).startswith("warning: looks like H&E")
    assert stain_status(_chw(ihc)) == "ok"
