"""Inference speed of a low-resolution classifier in torch and in ONNX Runtime (the same exported graph).

Trains nothing: a randomly initialised model of the default recipe (ResNet-18 + stain head, 192 px) is
saved as a her2score checkpoint, exported with ``her2score.export.onnx.export_onnx`` and timed on the
same normalised batches.

    .venv/bin/python benchmarks/bench_onnx.py [--size 192] [--batch 16] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--model", default="lowres-resnet")
    args = parser.parse_args()

    import torch

    from her2score.engine.checkpoint import save_model
    from her2score.export.onnx import OnnxModel, export_onnx
    from her2score.models.registry import create_model

    model = create_model(args.model, 3, stain_head=True).eval()
    meta = {
        "task": "her2-3way", "classes": ["0", "low", "high"], "model": args.model,
        "model_kwargs": model.build_kwargs(), "input_kind": "lowres",
        "data": {"mpp": 8.0, "input_size": args.size, "margin": 0.02},
        "stats": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_model(Path(tmp) / "model.safetensors", model, meta)
        t = time.perf_counter()
        check = export_onnx(ckpt, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - t
        onnx_model = OnnxModel(Path(tmp) / "model.onnx")
        x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

        def timed(fn) -> float:
            fn()
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t0)
            return statistics.median(runs) / args.batch * 1000

        with torch.inference_mode():
            torch_ms = timed(lambda: model.predict_step({"image": x}))
        ort_ms = timed(lambda: onnx_model.predict_step({"image": x}))
        with torch.inference_mode():
            diff = float(
                (model.predict_step({"image": x}) - onnx_model.predict_step({"image": x})).abs().max()
            )
    threads = torch.get_num_threads()
    print(f"{args.model} + stain head, {args.size} px, batch {args.batch}, CPU ({threads} threads)")
    print(f"  export (with its check)        {export_s:8.1f} s   (check diff {check['max_abs_diff']:.1e})")
    print(f"  torch, ms per image            {torch_ms:8.2f}")
    print(f"  ONNX Runtime, ms per image     {ort_ms:8.2f}")
    print(f"  largest probability difference {diff:8.1e}")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
