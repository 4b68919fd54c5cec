"""predict flags inputs in the wrong stain: an IHC model's probabilities mean nothing on H&E, and an
H&E model's nothing on IHC."""

from her2score.data.synth import render_pair
from her2score.engine.predict import stain_status


def test_he_input_is_flagged_for_an_ihc_model_and_ihc_for_an_he_model() -> None:
    he, ihc, _ = render_pair("2+", size=(384, 384), seed=4)
    assert stain_status(he).startswith("warning: looks like H&E")
    assert stain_status(ihc) == "ok"
    assert stain_status(he, expected="he") == "ok"
    assert stain_status(ihc, expected="he").startswith("warning: does not look like H&E")
    assert stain_status(None) == "ok"  # inputs without a picture (feature bags)
