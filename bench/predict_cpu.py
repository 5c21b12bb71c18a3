"""CPU prediction speed per core for ViT-S/16 and ViT-B/16 at 224 px.

For each model: (a) the bare forward pass on synthetic tensors (the reference) and (b) `plankton predict` end to end
from a store (decode, pad, resize, forward, writers), both on one core in this process, and their ratio (how much
the pipeline around the model costs). Weights are random: speed does not depend on them.

    python bench/predict_cpu.py [--models vit_small_patch16_224 vit_base_patch16_224] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "tests/data/planktonclass-demo/demo-images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--repeat", type=int, default=2, help="end-to-end passes over the 105 demo images")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch

    torch.set_num_threads(1)
    from plankton_cli.ingest import ingest
    from plankton_cli.models import Classifier
    from plankton_cli.models.checkpoints import save_model
    from plankton_cli.predict import predict
    from plankton_cli.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = Store(tmp / "store")
        ingest(store, [DEMO])
        for name in args.models:
            model = Classifier(name, 6, img_size=224, drop_path_rate=0.0).eval()
            x = torch.randn(args.batch_size, 1, 224, 224)
            with torch.inference_mode():
                model(x)  # warm up
                t0 = time.perf_counter()
                reps = max(1, 128 // args.batch_size)
                for _ in range(reps):
                    model(x)
                synthetic = reps * args.batch_size / (time.perf_counter() - t0)
            info = {**model.arch, "classes": [f"c{i}" for i in range(6)], "mean": [0.5], "std": [0.25],
                    "resize": 256, "pad_settings": ["unknown: pad-v1 crop=0,0,0,0 size=keep"]}
            path = save_model(tmp / name, model.state_dict(), info)
            t0 = time.perf_counter()
            done = sum(predict(path, store=store, to=["parquet"], out_dir=tmp / f"out-{name}",
                               batch_size=args.batch_size, force=True).predicted for _ in range(args.repeat))
            e2e = done / (time.perf_counter() - t0)
            day = 100_000 / (2 * e2e) / 3600
            print(f"{name:24s} forward {synthetic:6.1f} img/s/core   predict end to end {e2e:6.1f} img/s/core "
                  f"(ratio {e2e / synthetic:.2f})   100k ROIs on 2 cores: {day:.1f} h")


if __name__ == "__main__":
    main()
