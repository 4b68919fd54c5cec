"""Low-resolution whole-slide model: inference time per slide and training throughput.

1. Per slide, from the slide file to class probabilities: open, overview read at the model's µm/px,
   tissue crop, fit to the square, model forward (no cache: what ``her2score predict`` pays once).
2. Training images/s through the real pipeline (uint8 in memory -> augmentation -> normalisation ->
   forward/backward/AdamW) next to the bare model step on random tensors; the difference is the
   data pipeline's overhead (target: under 10%).

Run: .venv/bin/python benchmarks/bench_lowres.py [--size 224] [--backbone convnext_atto] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _slides(folder: Path, n: int) -> list[Path]:
    """Synthetic cohort slides when the generator is there, else pyramidal TIFFs written here."""
    try:
        from her2score.data.synth import make_cohort

        manifest = make_cohort(folder / "cohort", n=n, seed=0, kind="slides")
        import pandas as pd

        frame = pd.read_csv(manifest)
        return [manifest.parent / s for s in frame["slide"][:n]]
    except ImportError:
        return [_write_slide(folder / f"slide_{i}.tiff", i) for i in range(n)]


def _write_slide(path: Path, seed: int, size: int = 8192, mpp: float = 0.5) -> Path:
    import numpy as np
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    inside = ((xx - 0.5) / 0.3) ** 2 + ((yy - 0.5) / 0.2) ** 2 < 1
    img = np.full((size, size, 3), 240, np.uint8)
    img[inside] = rng.integers(90, 200, (int(inside.sum()), 3), dtype=np.uint8)
    res = 1e4 / mpp
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        level, factor = img, 1
        while True:
            tif.write(
                level, tile=(256, 256), photometric="rgb", compression="jpeg",
                resolution=(res / factor, res / factor), resolutionunit="CENTIMETER",
                subfiletype=0 if factor == 1 else 1,
            )  # fmt: skip
            if max(level.shape[:2]) <= 1024:
                break
            factor *= 4
            level = np.asarray(Image.fromarray(level).resize((size // factor, size // factor), Image.BOX))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input square, px")
    parser.add_argument("--mpp", type=float, default=8.0, help="low-resolution µm/px")
    parser.add_argument("--backbone", default=None, help="timm backbone (default: by device)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps (after 2 warm-up)")
    parser.add_argument("--slides", type=int, default=6)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch

    from her2score.data.augment import AugmentConfig
    from her2score.data.inputs import Prepared, create_input_kind
    from her2score.data.inputs.images import IMAGENET_MEAN, IMAGENET_STD, to_model_input
    from her2score.data.lowres import LowResParams, lowres_image
    from her2score.engine.predictor import Predictor, resolve_device
    from her2score.models.registry import create_model

    stats = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    device = resolve_device(args.device)
    model = create_model("lowres-convnext", 3, backbone=args.backbone).to(device)
    params = LowResParams(args.mpp, args.size)
    rows: list[tuple[str, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        slides = _slides(Path(tmp), args.slides)
        read_s, model_s, tta_s = [], [], []
        predictor = Predictor(
            model, create_input_kind("lowres", mpp=args.mpp, input_size=args.size), stats, device
        )
        model.eval()
        for path in slides:
            t0 = time.perf_counter()
            img = lowres_image(path, params)
            t1 = time.perf_counter()
            with torch.inference_mode():
                x = to_model_input(torch.from_numpy(img).permute(2, 0, 1)[None], stats, device)
                torch.softmax(model(x), 1).cpu()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            one = torch.from_numpy(img).permute(2, 0, 1)[None]
            predictor.predict(Prepared("lowres", one, np.arange(1)))
            if device.type == "cuda":
                torch.cuda.synchronize()
            read_s.append(t1 - t0)
            model_s.append(t2 - t1)
            tta_s.append(time.perf_counter() - t2)
        size_mb = statistics.median(p.stat().st_size for p in slides) / 1e6
    # the first slide pays one-off start-up costs (OpenSlide, kernels); report the median of the rest
    read_med, model_med = statistics.median(read_s[1:]), statistics.median(model_s[1:])
    tta_med = statistics.median(tta_s[1:])
    rows += [
        ("slides (median file size)", f"{len(slides)} ({size_mb:.1f} MB)"),
        ("overview read + tissue crop, s/slide", f"{read_med:.3f}"),
        ("model forward, s/slide", f"{model_med:.3f}"),
        ("model forward, 8 flips/rotations (TTA), s/slide", f"{tta_med:.3f}"),
        ("slide file -> probabilities, s/slide", f"{read_med + model_med:.3f}"),
        ("slide file -> probabilities with TTA, s/slide", f"{read_med + tta_med:.3f}"),
    ]

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch * 4, 3, args.size, args.size), dtype=torch.uint8)
    labels = torch.randint(0, 3, (args.batch,), device=device)
    # the bare step sees the same kind of values (normalised images, computed once): random normal
    # inputs ran several times slower through convnext on CPU, which would flatter the pipeline
    bare_x = to_model_input(images[: args.batch], stats, device)

    def step(x: torch.Tensor) -> None:
        loss = loss_fn(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(make_x) -> float:
        for _ in range(2):
            step(make_x(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(args.steps):
            step(make_x(i))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.batch * args.steps / (time.perf_counter() - t)

    def pipeline_x(i: int) -> torch.Tensor:
        idx = torch.randint(0, len(images), (args.batch,), generator=gen)
        return to_model_input(images[idx], stats, device, AugmentConfig(), gen)

    # interleave the two measurements so that load from other processes hits both alike
    bare, full = [], []
    for _ in range(2):
        bare.append(timed(lambda i: bare_x))
        full.append(timed(pipeline_x))
    bare_ips, full_ips = max(bare), max(full)
    rows += [
        ("training, bare model step, images/s", f"{bare_ips:.1f}"),
        ("training, full pipeline, images/s", f"{full_ips:.1f}"),
        ("data pipeline overhead", f"{100 * (bare_ips / full_ips - 1):.1f}%"),
    ]

    title = (
        f"lowres-convnext ({getattr(model, 'backbone_name', '?')}), {args.size} px at {args.mpp:g} µm/px, "
        f"batch {args.batch}, {device} ({torch.get_num_threads()} threads)"
    )
    width = max(len(k) for k, _ in rows)
    print(title)
    for key, value in rows:
        print(f"  {key:<{width}}  {value:>14}")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
