"""``compare``: the low-res model, the stain baseline and patch-based models on identical splits, one
table with accuracy (95 % CIs) and per-slide cost, a plot, heatmaps and a report; the tile-map helper."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2score.engine.compare import COLUMNS, split_rule
from her2score.engine.train import Split
from her2score.report.heatmap import tile_map

sys.path.insert(0, str(Path(__file__).parent))
from tiny_slides import make_tiny_cohort

CONFIG = "batch_size: 4\nn_boot: 20\ninput_size: 64\ntest_fraction: 0.34\nval_fraction: 0.25\ntta: false\n"


def test_tile_map_paints_each_tile_at_its_place_and_leaves_the_rest_empty() -> None:
    coords = np.array([[0, 0], [200, 0], [0, 200]], dtype=np.float32)  # level-0 px, tiles of 200 px
    heat = tile_map(coords, np.array([0.1, 0.9, 0.5]), tile_px=200, overview_shape=(50, 60), scale=0.1)
    assert heat.shape == (50, 60)
    assert heat[5, 5] == pytest.approx(0.1)
    assert heat[5, 25] == pytest.approx(0.9)
    assert heat[25, 5] == pytest.approx(0.5)
    assert np.isnan(heat[25, 25])
    assert np.isnan(heat[45, 55])
    with pytest.raises(ValueError):
        tile_map(coords, np.ones(2), 200, (50, 60), 0.1)


def test_split_rule_gives_every_readable_cohort_the_master_splits() -> None:
    class Readable:
        frame = pd.DataFrame({"slide": ["/f/b.feat", "/f/d.feat", "/f/a.feat"]})  # c unreadable here

    keys = ["/s/a", "/s/b", "/s/c", "/s/d"]
    master = [Split("main", np.array([0, 1]), np.array([2]), np.array([3]))]
    back = {"/f/a.feat": "/s/a", "/f/b.feat": "/s/b", "/f/d.feat": "/s/d"}
    (split,) = split_rule(master, keys, back.__getitem__)(Readable())
    assert split.name == "main"
    assert sorted(Readable.frame["slide"][split.train]) == ["/f/a.feat", "/f/b.feat"]
    assert len(split.val) == 0
    assert list(Readable.frame["slide"][split.test]) == ["/f/d.feat"]


@pytest.mark.slow
def test_compare_writes_a_row_per_method_on_identical_test_slides(tmp_path: Path) -> None:
    from her2score.cli.main import main

    manifest = make_tiny_cohort(tmp_path / "cohort", n=12, size=768)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as exit_info:
        main([
            "compare", "--manifest", str(manifest), "--out", str(out),
            "--methods", "lowres,stain,abmil,patch-classifier",
            "--epochs", "1", "--config", str(config), "--device", "cpu", "--encoder", "stain", "--quiet",
            "--heatmaps", "1",
        ])  # fmt: skip
    assert exit_info.value.code in (0, None)
    table = pd.read_csv(out / "comparison.csv")
    assert list(table.columns) == list(COLUMNS)
    assert list(table["method"]) == ["lowres", "stain", "abmil", "patch-classifier"]
    assert list(table["mpp"]) == [8.0, 8.0, 1.0, 1.0]
    for column in ("auc_macro", "auc_macro_low", "auc_macro_high", "f1_macro", "accuracy", "kappa_qw",
                   "prep_s_per_slide", "cache_mb_per_slide", "peak_rss_mb"):  # fmt: skip
        assert table[column].notna().all(), column
    assert (table["prep_s_per_slide"] > 0).all()
    assert (table["cache_mb_per_slide"] > 0).all()
    assert table.loc[table["method"] != "stain", "infer_s_per_slide"].gt(0).all()

    def test_slides(run: str) -> list[str]:
        splits = pd.read_csv(out / run / "splits.csv")
        frame = pd.read_csv(out / run / "predictions.csv")
        assert set(frame["slide"]) == set(splits.loc[splits["part"] == "test", "slide"])
        return sorted(Path(s).name.split(".")[0] for s in frame["slide"])

    assert test_slides("runs/lowres-8") == test_slides("runs/abmil-1")
    master = pd.read_csv(out / "splits.csv")
    assert sorted(Path(s).stem for s in master.loc[master["part"] == "test", "slide"]) == test_slides(
        "runs/lowres-8"
    )
    assert (out / "report.html").stat().st_size > 0
    assert (out / "accuracy_vs_cost.png").is_file()
    assert list((out / "heatmaps" / "abmil-1").glob("*.attention.png"))
    assert list((out / "heatmaps" / "patch-classifier-1").glob("*.tile-probability.png"))
    report = (out / "report.html").read_text()
    assert "Grad-CAM" in report
    assert "attention" in report
    assert "tile probability" in report
    # like for like: no test-time augmentation on the low-res side unless asked for
    assert "tta: false" in (out / "runs" / "lowres-8" / "config.yaml").read_text()
    assert list((out / "heatmaps" / "lowres-8").glob("*.heatmap.png"))
    # the feature table keeps each slide's extraction time, which a rerun reports for its cached slides
    features = pd.read_csv(next((out / "cache" / "features").glob("*/features.csv")))
    assert (features["status"] == "extracted").all()
    assert (features["seconds"] > 0).all()


def test_cached_features_and_overviews_keep_their_first_preparation_time(tmp_path: Path) -> None:
    from her2score.engine.compare import CompareOptions, lowres_costs, patch_features
    from her2score.engine.config import load_config
    from her2score.features.encoders import make_encoder

    manifest = make_tiny_cohort(tmp_path / "cohort", n=2, size=768)
    frame = pd.DataFrame({"slide": [str(p) for p in sorted((manifest.parent / "slides").glob("*.tiff"))]})
    options, folder = CompareOptions(), tmp_path / "features"
    first = patch_features(frame, options, 1.0, folder, make_encoder("stain"), quiet=True)
    again = patch_features(frame, options, 1.0, folder, make_encoder("stain"), quiet=True)
    assert list(again["status"]) == ["cached", "cached"]
    assert list(again["seconds"]) == pytest.approx(list(first["seconds"]))

    cfg = load_config(None, input_size=64)
    read = lowres_costs(frame, cfg, tmp_path / "lowres")
    reused = lowres_costs(frame, cfg, tmp_path / "lowres")
    assert list(read["status"]) == ["read", "read"]
    assert list(reused["status"]) == ["cached", "cached"]
    assert list(reused["seconds"]) == pytest.approx(list(read["seconds"]))
    assert (reused["cache_bytes"] > 0).all()


def test_methods_are_checked_and_the_patch_classifier_takes_a_fusion_rule() -> None:
    from her2score.engine.compare import DEFAULT_METHODS, _check_methods
    from her2score.errors import ConfigError

    assert _check_methods(DEFAULT_METHODS) == ["abmil", "clam-sb", "transmil", "patch-classifier"]
    assert _check_methods(("lowres", "patch-classifier:majority")) == ["patch-classifier:majority"]
    with pytest.raises(ConfigError, match="fusion rule is one of"):
        _check_methods(("patch-classifier:max",))
    with pytest.raises(ConfigError, match="only patch-classifier"):
        _check_methods(("abmil:mean",))
    with pytest.raises(ConfigError, match="not a patch-based"):
        _check_methods(("lowres-resnet",))
