"""``torchrun`` training (DistributedDataParallel over gloo on the CPU) takes the same steps as one process.

Two processes, each with half of the global batch of 4: DDP averages their two half-batch gradients,
which is the single process's full-batch gradient (a plain mean loss: ``balance: none``, LayerNorm,
no augmentation or dropout, so nothing else depends on how the batch is split). The epoch order is the
same (DistributedSampler shares out the single process's permutation), so the two runs differ only by
float32 summation order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_slides import make_tiny_cohort

import her2score
from her2score.data.manifest import load_manifest
from her2score.engine.config import load_config
from her2score.engine.train import train_run

CONFIG = """\
model: lowres-convnext
backbone: convnext_atto
norm: layer
input_size: 32
batch_size: 4
epochs: 2
ema: 0.9
stain_head: false
balance: none
warmup_epochs: 0
device: cpu
amp: false
tta: false
n_boot: 10
patience: 0
cache_dir: {cache}
augment: {{flip: false, rot90: false, affine_degrees: 0, affine_scale: 0, affine_translate: 0,
  stain_jitter: 0, stain_shift: 0, blur_prob: 0, brightness: 0}}
"""


def _cohort(folder: Path) -> Path:
    """12 tiny slides with fixed splits: 8 train (two global batches of 4), 2 validation, 2 test."""
    manifest = make_tiny_cohort(folder, n=12, size=512)
    lines = manifest.read_text().splitlines()
    parts = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    rows = [lines[0] + ",split"] + [f"{line},{part}" for line, part in zip(lines[1:], parts, strict=True)]
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.mark.slow
def test_two_torchrun_processes_train_like_one(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from her2score.engine.predictor import Predictor

    manifest = _cohort(tmp_path / "cohort")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(cache=tmp_path / "cache"))
    cfg = load_config(config)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same kernels' sum order
    try:
        one = train_run(
            load_manifest(manifest, cfg.task, cfg.equivocal), cfg, tmp_path / "one", quiet=True,
            log=lambda s: None, heatmaps=0,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    src = str(Path(her2score.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "her2score", "train", "-m", str(manifest), "-c", str(config), "--out", str(tmp_path / "two"),
        "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # one voice and one writer: rank 1 printed nothing and its scratch run folder is gone
    assert done.stderr.count("rank 0 writes") == 1, done.stderr[-3000:]
    assert done.stderr.count("12 slides for task") == 1
    assert [p for p in scratch.iterdir() if p.name.startswith("her2score-rank")] == []

    a, b = load_file(one.model_paths[0]), load_file(tmp_path / "two" / "model.safetensors")
    assert set(a) == set(b)
    # One AdamW step moves a weight by up to lr (2e-3); batches split or averaged wrongly shift many
    # weights by that much. Summation order alone differs by ~5e-5 here (measured), so 5e-4 tells them apart.
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"largest weight difference {worst:.2e}")
    assert worst < 5e-4, worst
    h1 = np.genfromtxt(tmp_path / "one" / "history.csv", delimiter=",", names=True)
    h2 = np.genfromtxt(tmp_path / "two" / "history.csv", delimiter=",", names=True)
    np.testing.assert_allclose(h2["train_loss"], h1["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(h2["val_loss"], h1["val_loss"], rtol=1e-4)

    # the rank-0 checkpoint is a plain single-process model
    predictor, meta = Predictor.from_checkpoint(tmp_path / "two" / "model.safetensors", "cpu")
    assert meta["classes"] == ["0", "low", "high"]
    assert predictor is not None
