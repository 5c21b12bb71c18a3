"""MAE pretraining throughput on one GPU: end-to-end from the store vs a synthetic-tensor step, same process.

For each model (ViT-B/16, ViT-L/16 at 224, bf16) and each of eager / ``torch.compile``:

- end-to-end: ``StoreDataLoader`` (decode + crop on CPU workers, or ``--gpu-augment``) → Lightning trainer from
  ``plankton_cli.train.training.make_trainer`` → ``MAEPretrainModule``: what ``plankton pretrain`` runs;
- synthetic: the same MAE, AdamW and bf16 autocast on a random tensor already on the GPU (the ceiling);

and prints img/s for both and their ratio (goal ≥ 0.95: the input pipeline keeps up).

    python bench/pretrain_gpu.py --store /tmp/bench-store [--make-store 4096] [--models vit_base_patch16_224]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "tests" / "data" / "planktonclass-demo" / "demo-images"


def make_store(store: Path, n: int, seed: int = 0) -> None:
    """A store of ``n`` distinct PNG vignettes: random crops, flips and rotations of the bundled demo images."""
    from plankton_cli.ingest import ingest
    from plankton_cli.core.records import ReadOptions
    from plankton_cli.store import Store

    if Store(store).files("objects"):
        return
    rng = np.random.default_rng(seed)
    sources = sorted(p for p in DEMO.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    folder = store.parent / f"{store.name}-images" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.open(sources[i % len(sources)]).convert("L")
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = image.crop((left, top, left + cw, top + ch)).rotate(float(rng.uniform(0, 360)), expand=True)
        image.save(folder / f"{i:06d}.png")
    ingest(Store(store), [folder.parent], options=ReadOptions(instrument="FlowCam", label_from="none"))


def synthetic(model: str, batch: int, compile_model: bool, steps: int, warmup: int) -> float:
    """img/s of MAE training steps on a random bf16-autocast batch that never leaves the GPU."""
    from plankton_cli.train.models import MAE, param_groups_weight_decay

    torch.manual_seed(0)
    mae = MAE(model).cuda()
    forward = torch.compile(mae) if compile_model else mae
    optimizer = torch.optim.AdamW(param_groups_weight_decay(mae, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=True)
    images = torch.randn(batch, 1, 224, 224, device="cuda")
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(images).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


class _Timer:
    """Times training batches after the first ``warmup`` (so compilation and worker start-up are excluded)."""

    def __init__(self, warmup: int) -> None:
        from pytorch_lightning.callbacks import Callback

        timer = self

        class _Callback(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                timer.batches += 1
                if timer.batches == warmup:
                    torch.cuda.synchronize()
                    timer.start = time.perf_counter()
                    timer.samples = 0
                elif timer.batches > warmup:
                    timer.samples += batch["image"].shape[0]

        self.callback = _Callback()
        self.batches, self.samples, self.start = 0, 0, 0.0

    def rate(self) -> float:
        torch.cuda.synchronize()
        return self.samples / (time.perf_counter() - self.start)


def end_to_end(store: Path, model: str, batch: int, compile_model: bool, steps: int, warmup: int, workers: int,
               gpu_augment: bool, run_dir: Path) -> float:
    """img/s of the real pretraining path, from the store's Parquet files to the optimizer step."""
    from plankton_cli.prepare.data import GpuAugment, ResizeTransform, StoreDataLoader, StoreDataset, TrainTransform
    from plankton_cli.prepare.data import load_or_compute_stats
    from plankton_cli.train.models import MAE
    from plankton_cli.train.pretrain import MAEPretrainModule
    from plankton_cli.train.training import make_trainer

    dataset_dir = store / "objects"
    stats = load_or_compute_stats(dataset_dir, resize=256, max_images=1000)
    mean, std = stats["mean"], stats["std"]
    transform = ResizeTransform(256) if gpu_augment else TrainTransform(256, 224, mean, std)
    data = StoreDataset(dataset_dir, transform, shuffle=True, drop_last=True)
    loader = StoreDataLoader(data, batch_size=batch, num_workers=workers, pin_memory=True, persistent_workers=True,
                             prefetch_factor=4, drop_last=True)
    torch.manual_seed(0)
    module = MAEPretrainModule(MAE(model), lr=1e-4, total_steps=10_000, warmup_steps=0, compile=compile_model,
                               gpu_augment=GpuAugment(224, mean, std) if gpu_augment else None)
    timer = _Timer(warmup)
    trainer = make_trainer(run_dir, max_steps=warmup + steps, accelerator="gpu", devices=1, precision="bf16-mixed",
                           callbacks=[timer.callback], enable_progress=False, log_every_n_steps=10_000,
                           checkpoint_every_n_steps=10_000_000)
    trainer.fit(module, train_dataloaders=loader)
    return timer.rate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--make-store", type=int, default=4096, metavar="N", help="images to generate if empty")
    parser.add_argument("--models", nargs="+", default=["vit_base_patch16_224", "vit_large_patch16_224"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--gpu-augment", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="eager only (skip the compiled runs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    make_store(args.store, args.make_store)
    print(f"device: {torch.cuda.get_device_name()}; batch {args.batch}; workers {args.workers}; "
          f"{'GPU' if args.gpu_augment else 'CPU'} augmentation", flush=True)
    results = []
    for model in args.models:
        for compile_model in ([False] if args.no_compile else [False, True]):
            synth = synthetic(model, args.batch, compile_model, args.steps, args.warmup)
            e2e = end_to_end(args.store, model, args.batch, compile_model, args.steps, args.warmup, args.workers,
                             args.gpu_augment, args.store.parent / f"bench-run-{model}-{compile_model}")
            row = {"model": model, "compile": compile_model, "batch": args.batch, "synthetic_img_s": round(synth, 1),
                   "end_to_end_img_s": round(e2e, 1), "ratio": round(e2e / synth, 3),
                   "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1)}
            results.append(row)
            print(f"{model:<24} compile={str(compile_model):<5} synthetic {synth:8.1f} img/s   "
                  f"end-to-end {e2e:8.1f} img/s   ratio {e2e / synth:.3f}   "
                  f"peak {row['peak_mem_gb']} GB", flush=True)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
