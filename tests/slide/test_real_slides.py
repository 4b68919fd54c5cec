"""The reader on the real images in ../shared/data/real (skipped when that folder is absent)."""

from __future__ import annotations

import re

import pytest
from slide_fixtures import REAL

from her2score.errors import MissingMPPError
from her2score.slide import open_slide, sniff_format

pytestmark = pytest.mark.realdata

SVS = REAL / "slides" / "CMU-1-Small-Region.svs"
BCI = REAL / "bci-her2-pairs"


def test_svs_reports_its_resolution_and_vendor() -> None:
    if not SVS.exists():
        pytest.skip(f"real data not present: {SVS}")
    with open_slide(SVS) as slide:
        assert slide.mpp == pytest.approx(0.499, abs=0.001)
        assert slide.vendor == "aperio"
        assert (slide.width, slide.height) == (2220, 2967)
        info = slide.info()
        assert info.objective_power == 20
        overview, used = slide.read_overview(max_size=512)
        assert max(overview.shape[:2]) == 512
        assert used == pytest.approx(0.499 * 2967 / 512, rel=1e-3)


def test_every_bci_pair_opens_despite_the_wrong_extension() -> None:
    if not BCI.is_dir():
        pytest.skip(f"real data not present: {BCI}")
    names = sorted(p.name for p in (BCI / "HE").glob("*.png"))
    assert len(names) == 13
    for name in names:
        for stain in ("HE", "IHC"):
            path = BCI / stain / name
            assert sniff_format(path) == "jpeg"  # JPEG bytes behind a .png name
            with pytest.raises(MissingMPPError, match=re.escape(name)):
                open_slide(path).require_mpp()
            with open_slide(path, mpp=0.5) as slide:
                assert (slide.width, slide.height) == (1024, 1024)
                patch = slide.read_region((256, 256), (128, 128), mpp=1.0)
                assert patch.shape == (128, 128, 3)
                assert 50 < patch.mean() < 250
