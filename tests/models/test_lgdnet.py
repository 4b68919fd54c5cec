"""LGD-Net: trained on H&E/IHC pairs through the engine, saved as its H&E path, predicting from H&E
alone; its auxiliary targets; its options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from her2score.data.manifest import load_manifest
from her2score.data.synth import make_cohort, render_pair
from her2score.engine.checkpoint import read_metadata
from her2score.engine.config import load_config
from her2score.engine.predict import predict_slides
from her2score.engine.train import train_run
from her2score.errors import ConfigError
from her2score.models.nets.lgdnet import (
    KNOWLEDGE_NAMES,
    LGDNet,
    LGDNetHE,
    auxiliary_targets,
    nuclear_statistics,
)
from her2score.models.registry import create_model, get_model_spec


def _rgb(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def test_auxiliary_targets_follow_nuclei_and_membrane_stain() -> None:
    he0, ihc0, _ = render_pair("0", size=(128, 128), seed=1)
    he3, ihc3, _ = render_pair("3+", size=(128, 128), seed=1)
    targets = auxiliary_targets(
        torch.cat([_rgb(he0), _rgb(he3)]), torch.cat([_rgb(ihc0), _rgb(ihc3)]), grid=8
    )
    assert targets["nuclei_map"].shape == targets["membrane_map"].shape == (2, 8, 8)
    assert targets["membrane_mean"].shape == (2,)
    assert 0 < float(targets["nuclei_map"].mean()) < 1
    assert float(targets["membrane_mean"][1]) > 2 * float(targets["membrane_mean"][0])  # 3+ browner than 0
    blank = torch.ones(1, 3, 32, 32)  # white glass: no nuclei, no stain
    empty = auxiliary_targets(blank, blank, grid=4)
    assert float(empty["nuclei_map"].sum()) == 0
    assert float(empty["membrane_mean"][0]) == 0


def test_nuclear_statistics_count_hematoxylin() -> None:
    white = torch.ones(1, 3, 64, 64)
    purple = white.clone()
    purple[:, :, :16] = torch.tensor([0.35, 0.2, 0.55]).view(1, 3, 1, 1)  # hematoxylin-dark top quarter
    stats = nuclear_statistics(torch.cat([white, purple]), grid=4)
    assert stats.shape == (2, len(KNOWLEDGE_NAMES))
    assert float(stats[0, 0]) == 0  # glass: no nuclei
    assert float(stats[1, 0]) == pytest.approx(0.25, abs=0.01)  # a quarter of the image nuclear
    assert float(stats[1, 1]) > 0.4  # all in some cells, none in others: a large spread
    assert float(stats[1, 5]) > float(stats[0, 5])  # 99th hematoxylin percentile


def test_the_knowledge_head_is_optional() -> None:
    with_knowledge = create_model("lgd-net-he", 4, backbone="resnet18")
    without = create_model("lgd-net-he", 4, backbone="resnet18", knowledge=False)
    assert with_knowledge.knowledge_classifier is not None
    assert without.knowledge_classifier is None
    assert with_knowledge.build_kwargs()["knowledge"] is True
    x = torch.rand(2, 3, 64, 64)
    assert with_knowledge(x).shape == without(x).shape == (2, 4)


def test_the_fitted_knowledge_head_is_mixed_and_old_checkpoints_add_its_logits() -> None:
    model = create_model("lgd-net-he", 4, backbone="resnet18").eval()
    x = torch.rand(2, 3, 64, 64)
    knowledge = torch.softmax(model.knowledge_classifier(model.knowledge_features(x)), 1)
    model.fusion_weight.fill_(0.0)  # the knowledge head alone
    assert model.mixes
    assert torch.allclose(torch.softmax(model(x), 1), knowledge, atol=1e-5)
    state = {k: v for k, v in model.state_dict().items() if k != "fusion_weight"}
    model.load_state_dict(state)  # a checkpoint from before the mixture: the logits add, as trained
    assert not model.mixes
    assert float(model.fusion_weight) == -1
    cnn = model.fused_logits(*model.streams(x))
    expected = cnn + model.knowledge_classifier(model.knowledge_features(x))
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_lgd_net_options_and_its_h_and_e_path() -> None:
    spec = get_model_spec("lgd-net")
    assert spec.input_kind == "pair"
    options = spec.options()
    for key in ("align_weight", "nuclei_weight", "membrane_weight", "teacher_mode", "align_loss"):
        assert key in options
    model = create_model("lgd-net", 4, backbone="resnet18", align_weight=0.0)
    assert isinstance(model, LGDNet)
    student = model.inference_module()
    assert isinstance(student, LGDNetHE)
    assert student.registry_name == "lgd-net-he"
    assert get_model_spec("lgd-net-he").input_kind == "lowres"
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 4)
    with pytest.raises(ConfigError, match="teacher_mode"):
        create_model("lgd-net", 4, teacher_mode="never")
    with pytest.raises(ConfigError, match="align_loss"):
        create_model("lgd-net", 4, align_loss="l1")


def test_every_loss_is_logged_and_weights_switch_terms_off() -> None:
    model = create_model("lgd-net", 3, backbone="resnet18", nuclei_weight=0.0, membrane_weight=0.0)
    batch = {"image": torch.randn(2, 3, 64, 64), "teacher_image": torch.randn(2, 3, 64, 64)}
    batch["label"] = torch.tensor([0, 2])
    loss, logs = model.training_step(batch, torch.nn.functional.cross_entropy)
    assert set(logs) == {"hallucinated_ce", "fused_ce", "teacher_ce", "align"}
    expected = logs["hallucinated_ce"] + logs["fused_ce"] + logs["teacher_ce"] + logs["align"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)


def _saved_ihc_classifier(path: Path, num_classes: int = 3) -> Path:
    from her2score.engine.checkpoint import save_model

    model = create_model("lowres-resnet", num_classes, backbone="resnet18")
    meta = {
        "task": "her2-3way", "classes": [str(c) for c in range(num_classes)], "model": "lowres-resnet",
        "model_kwargs": model.build_kwargs(), "input_kind": "lowres", "data": {},
        "stats": {"mean": [0.8, 0.7, 0.75], "std": [0.1, 0.2, 0.15]},
    }  # fmt: skip
    return save_model(path, model, meta)


def test_a_loaded_ihc_teacher_is_frozen_and_distilled(tmp_path: Path) -> None:
    teacher = _saved_ihc_classifier(tmp_path / "ihc.safetensors")
    model = create_model("lgd-net", 3, backbone="resnet18", teacher=str(teacher), kd_temperature=3.0)
    assert model.teacher_frozen
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert torch.allclose(model.teacher_std, torch.tensor([0.1, 0.2, 0.15]))  # the teacher's own scale
    model.train()
    assert not model.teacher.training  # BatchNorm statistics stay those the teacher was trained with
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    batch = {
        "image": torch.randn(2, 3, 64, 64), "teacher_image": torch.randn(2, 3, 64, 64),
        "label": torch.tensor([0, 2]),
    }  # fmt: skip
    loss, logs = model.training_step(batch, torch.nn.functional.cross_entropy)
    assert "kd" in logs
    assert logs["kd"] >= 0
    assert "teacher_ce" not in logs  # a frozen teacher is not trained
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.teacher.state_dict().items())
    without = create_model("lgd-net", 3, backbone="resnet18", teacher=str(teacher), kd_weight=0.0)
    assert "kd" not in without.training_step(batch, torch.nn.functional.cross_entropy)[1]
    with pytest.raises(ConfigError, match="classes"):
        create_model("lgd-net", 4, backbone="resnet18", teacher=str(teacher))
    with pytest.raises(ConfigError, match="kd_temperature"):
        create_model("lgd-net", 3, kd_temperature=0)


@pytest.fixture(scope="module")
def pair_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairs")
    manifest = make_cohort(out, n=12, kind="pairs", patch_size=256, patches_per_patient=2, workers=1)
    frame = pd.read_csv(manifest, dtype=str)
    frame["mpp"] = "0.5"  # PNGs carry no resolution
    frame.to_csv(manifest, index=False)
    return manifest


def _config(tmp_path: Path, **model_args: object) -> object:
    return load_config(
        None, model="lgd-net", task="her2-4way", model_args=model_args, epochs=2, batch_size=4, n_boot=10,
        device="cpu", cache_dir=str(tmp_path / "cache"), mpp=2.0, input_size=64,
    )  # fmt: skip


@pytest.mark.slow
def test_lgd_net_trains_on_pairs_and_predicts_from_h_and_e_alone(tmp_path: Path, pair_cohort: Path) -> None:
    logs: list[str] = []
    result = train_run(
        load_manifest(pair_cohort, "her2-4way"), _config(tmp_path, backbone="resnet18"), tmp_path / "run",
        quiet=True, log=logs.append, heatmaps=1,
    )  # fmt: skip
    assert any("auxiliary targets on" in line for line in logs)  # computed before the first epoch
    assert any("knowledge head: a logistic regression fitted and frozen" in line for line in logs)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    for name in ("hallucinated_ce", "fused_ce", "teacher_ce", "align", "nuclei", "membrane"):
        assert f"train_{name}" in history.columns
        assert history[f"train_{name}"].notna().all()
    path = result.model_paths[0]
    saved = load_file(str(path))
    assert not any(k.startswith(("teacher", "nuclei_head", "membrane")) for k in saved)  # H&E path only
    assert float(saved["knowledge_std"].min()) > 0
    assert float(saved["knowledge_mean"].abs().sum()) > 0
    assert 0 <= float(saved["fusion_weight"]) <= 1  # the mixture of fused classifier and knowledge head
    assert not torch.equal(saved["input_std"], torch.ones(3))  # the normalisation travels with the model
    meta = read_metadata(path)
    assert (meta["model"], meta["trained_as"], meta["input_kind"], meta["input_stain"]) == (
        "lgd-net-he", "lgd-net", "lowres", "he",
    )  # fmt: skip
    he_only = sorted((pair_cohort.parent / "HE").glob("*.png"))[:3]
    frame, failures = predict_slides(path, he_only, tmp_path / "he.csv", mpp=0.5, quiet=True)
    assert not failures
    assert set(frame["status"]) == {"ok"}
    probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    pytest.importorskip("onnxruntime")
    from her2score.export.onnx import export_onnx

    report = export_onnx(path, tmp_path / "he.onnx")  # the H&E path, nuclear statistics included
    onnx_frame, _ = predict_slides(
        tmp_path / "he.onnx", he_only, tmp_path / "he_onnx.csv", mpp=0.5, quiet=True, backend="onnxruntime"
    )
    onnx_probs = onnx_frame[[c for c in onnx_frame.columns if c.startswith("prob_")]].to_numpy()
    assert np.abs(onnx_probs - probs).max() < 1e-4, report


@pytest.mark.slow
def test_a_teacher_frozen_after_warmup_stays_fixed(tmp_path: Path, pair_cohort: Path) -> None:
    logs: list[str] = []
    cfg = _config(tmp_path, backbone="resnet18", teacher_mode="frozen-after-warmup", teacher_warmup_epochs=1)
    cfg.epochs = 1
    train_run(load_manifest(pair_cohort, "her2-4way"), cfg, tmp_path / "run", quiet=True, log=logs.append)
    assert any("then frozen" in line for line in logs)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert "train_teacher_ce" not in history.columns
    assert "train_align" in history.columns


@pytest.mark.slow
def test_the_benchmark_hands_lgd_net_the_ihc_only_classifier_as_teacher(
    tmp_path: Path, pair_cohort: Path
) -> None:
    from her2score.cli.benchmark import run_bci_benchmark

    logs: list[str] = []
    frame = run_bci_benchmark(
        pair_cohort.parent, tmp_path / "out", size=64, epochs=1, models=["lgd-net-ihc-teacher"],
        batch_size=4, n_boot=10, log=logs.append,
    )  # fmt: skip
    # the teacher was trained although not asked
    assert list(frame["model"]) == ["ihc-only", "lgd-net-ihc-teacher"]
    teacher = tmp_path / "out" / "runs" / "ihc-only" / "model.safetensors"
    assert any(f"IHC teacher: {teacher} (frozen)" in line for line in logs)
    assert any("loaded IHC teacher (frozen) agrees with" in line for line in logs)
    history = pd.read_csv(tmp_path / "out" / "runs" / "lgd-net-ihc-teacher" / "history.csv")
    assert "train_kd" in history.columns
    assert "train_teacher_ce" not in history.columns
