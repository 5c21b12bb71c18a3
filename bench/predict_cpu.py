"""A day of IFCB on a station's 2 CPU cores: ROIs per hour end to end, teacher vs student, fp32 vs fast paths;
and (with --quality RUN2) teacher vs distilled student macro-F1 on the same cross-validation folds.

Speed: a store of real vignettes (the UVP6 set in ../shared/data, else the bundled demo images) is ingested and
padded, then for each model `plankton predict` runs end to end from the store (decode, pad, resize, forward,
writers) with each CPU path of `--cpu-path` on `--threads` threads. The reference, measured in the same run, is
the bare fp32 forward pass of ViT-S/16 at 224 px on synthetic tensors (the issue's baseline model): each row
prints its ratio to it, so numbers from a busy machine can be compared with a quiet one. Weights are random:
speed does not depend on them (int8 quantises whatever weights there are).

    .venv/bin/python bench/predict_cpu.py                                   # speed table
    .venv/bin/python bench/predict_cpu.py --models vit_small_patch16_224:224 vit_tiny_patch16_224:112

Quality: `--quality RUN2` reads a `plankton finetune` run (teacher per fold), distils every fold's teacher into
the student (`plankton distill`, into RUN2/distill-<student>-<px>/fold-k; resumable, finished folds are reused)
and prints both models' test scores on each fold's test images, mean ± std over the folds, beside their ROIs per
hour end to end from that store (fold 0's models, `--cpu-path auto`, `--threads` threads).

    .venv/bin/python bench/predict_cpu.py --quality runs/ft --student mobilenetv3_small_100:112 --store STORE
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UVP6 = REPO.parent / "shared" / "data" / "images" / "uvp6-vignettes"
DEMO = REPO / "tests" / "data" / "planktonclass-demo" / "demo-images"
REFERENCE = ("vit_small_patch16_224", 224)


def parse_model(spec: str) -> tuple[str, int]:
    name, _, size = spec.partition(":")
    return name, int(size or 224)


def make_store(root: Path, images: int) -> tuple[object, list[str]]:
    """A padded store of up to `images` real vignettes (spread over the classes); returns it and the pad rules."""
    from plankton_cli.ingest import ingest
    from plankton_cli.prepare.pad_store import pad_dataset, padding_rules
    from plankton_cli.core.records import ReadOptions
    from plankton_cli.store import Store

    source = UVP6 if UVP6.is_dir() else DEMO
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    per_class = max(1, images // len(classes))
    folder = root / "images"
    for cls in classes:
        (folder / cls.name).mkdir(parents=True)
        for file in sorted(cls.iterdir())[:per_class]:
            shutil.copy(file, folder / cls.name / file.name)
    store = Store(root / "store")
    ingest(store, [folder], options=ReadOptions(instrument="UVP6" if source == UVP6 else "FlowCam"))
    pad_dataset(store)
    return store, padding_rules(store.root / "padded")


def forward_rate(model, batch_size: int, img_size: int, seconds: float, path: str = "fp32", slices: int = 5) -> float:
    """Images per second of the bare forward pass on synthetic tensors: the best of `slices` slices of
    `seconds / slices` each (on a shared machine other processes only ever slow a slice down)."""
    import torch

    from plankton_cli.infer.cpu_inference import prepare

    model, autocast, _ = prepare(model, path)
    x = torch.randn(batch_size, 1, img_size, img_size)
    rates = []
    with torch.inference_mode(), autocast:
        model(x)  # warm-up (allocations, oneDNN kernels)
        for _ in range(slices):
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / slices or done == 0:
                model(x)
                done += batch_size
            rates.append(done / (time.perf_counter() - start))
    return max(rates)


def end_to_end_rate(predict, path: Path, store, out: Path, cpu_path: str, args: argparse.Namespace) -> float:
    """Images per second of `plankton predict` from the store into a Parquet file: the best of `--repeat` passes,
    each counted from the end of its first batch (model loading and kernel warm-up, once a night, left out)."""
    rates = []
    for _ in range(args.repeat):
        marks: list[tuple[float, int]] = []
        predict(path, store=store, to=["parquet"], out_dir=out, batch_size=args.batch_size, force=True,
                cpu_path=cpu_path, threads=args.threads, on_batch=lambda n, marks=marks: marks.append((time.perf_counter(), n)))
        if len(marks) < 2:
            raise SystemExit("the store holds one batch only: give more --images or a smaller --batch-size")
        rates.append(sum(n for _, n in marks[1:]) / (marks[-1][0] - marks[0][0]))
    return max(rates)


def speed(args: argparse.Namespace) -> None:
    import torch

    from plankton_cli.infer.cpu_inference import set_threads
    from plankton_cli.train.models import Classifier
    from plankton_cli.train.models.checkpoints import save_model
    from plankton_cli.infer.predict import predict

    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store, rules = make_store(tmp, args.images)
        n_images = store.dataset("objects").count_rows()
        reference_model = Classifier(REFERENCE[0], 10, img_size=REFERENCE[1], drop_path_rate=0.0).eval()
        reference = forward_rate(reference_model, args.batch_size, REFERENCE[1], args.seconds)
        print(f"{n_images} real vignettes ({'UVP6' if UVP6.is_dir() else 'demo'}), {args.threads} threads; "
              f"reference: {REFERENCE[0]} {REFERENCE[1]} px fp32 forward {reference:.1f} img/s\n")
        print(f"{'model':30s} {'path':5s} {'forward img/s':>13s} {'end to end img/s':>16s} {'ROIs/h':>9s} "
              f"{'x ref':>6s} {'100k ROIs':>9s}")
        rows = []
        for name, size in map(parse_model, args.models):
            torch.manual_seed(0)
            model = Classifier(name, 10, img_size=size, drop_path_rate=0.0).eval()
            info = {**model.arch, "classes": [f"c{i}" for i in range(10)], "mean": [0.5], "std": [0.25],
                    "resize": round(size * 256 / 224), "pad_settings": rules}
            path = save_model(tmp / f"{name}-{size}", model.state_dict(), info)
            for cpu_path in args.paths:
                forward = forward_rate(model, args.batch_size, size, args.seconds, cpu_path)
                e2e = end_to_end_rate(predict, path, store, tmp / "out", cpu_path, args)
                rows.append((name, size, cpu_path, forward, e2e))
                print(f"{name + f' {size}px':30s} {cpu_path:5s} {forward:13.1f} {e2e:16.1f} {e2e * 3600:9.0f} "
                      f"{e2e / reference:6.2f} {100_000 / e2e / 3600:8.2f}h", flush=True)
        print("\nx ref: end-to-end rate / the reference forward rate measured in this run. On a quiet machine "
              "ROIs/h ≈ x ref × the quiet reference (the issue measured ViT-S/16 fp32 8.4 img/s per core).")


def student_arch(text: str | None) -> dict[str, int]:
    """``depth=2,patch_size=8`` → {"depth": 2, "patch_size": 8}: overrides of the student's timm architecture."""
    pairs = [item.split("=", 1) for item in (text or "").split(",") if item]
    return {key: int(value) for key, value in pairs}


def quality(args: argparse.Namespace) -> None:
    from plankton_cli.train.distill import DistillConfig, distill

    run = Path(args.quality)
    name, size = parse_model(args.student)
    folds = sorted(p for p in run.glob("fold-*") if (p / "result.json").exists())
    if not folds:
        raise SystemExit(f"{run} has no finished fold (fold-*/result.json)")
    rows = []
    for fold in folds:
        out = run / f"distill-{name}-{size}" / fold.name
        config = DistillConfig(store=Path(args.store), teacher=fold / "model.safetensors", out=out, student=name,
                               img_size=size, epochs=args.epochs, batch_size=args.distill_batch_size,
                               workers=args.workers, lr=args.lr, **student_arch(args.student_arch))
        summary = distill(config, echo=print)
        teacher = json.loads((fold / "result.json").read_text())
        rows.append((fold.name, teacher["macro_f1"], summary["teacher_test"]["macro_f1"],
                     summary["student_test"]["macro_f1"], summary["teacher_agreement"]))
        print(f"{fold.name}: teacher macro-F1 {rows[-1][1]:.4f} (from its cached logits {rows[-1][2]:.4f}), "
              f"student {rows[-1][3]:.4f}, agreement {rows[-1][4]:.4f}", flush=True)

    def mean_std(values: list[float]) -> str:
        return f"{statistics.mean(values) * 100:.2f} ± {statistics.stdev(values) * 100 if len(values) > 1 else 0:.2f}"

    def describe(model_json: Path) -> str:
        info = json.loads(model_json.read_text())
        shape = f" depth {info['depth']} patch {info['patch_size']}" if info.get("patch_size") else ""  # a CNN: none
        return f"{info['architecture']}{shape} width {info['embed_dim']} {info['img_size']} px"

    from plankton_cli.infer.cpu_inference import set_threads
    from plankton_cli.infer.predict import predict
    from plankton_cli.store import Store

    set_threads(args.threads)
    teacher_json, student_json = folds[0] / "model.json", run / f"distill-{name}-{size}" / folds[0].name / "model.json"
    with tempfile.TemporaryDirectory() as tmp:
        rates = [end_to_end_rate(predict, path.with_suffix(".safetensors"), Store(Path(args.store)), Path(tmp),
                                 "auto", args) for path in (teacher_json, student_json)]
    print(f"\n| model | macro-F1 (%) over {len(rows)} fold(s) | top-1 agreement with teacher (%) | "
          f"end to end img/s | ROIs/h |\n|---|---|---|---|---|")
    print(f"| teacher {describe(teacher_json)} | {mean_std([r[1] for r in rows])} | | {rates[0]:.1f} | "
          f"{rates[0] * 3600:,.0f} |")
    print(f"| student {describe(student_json)} | {mean_std([r[3] for r in rows])} | {mean_std([r[4] for r in rows])} "
          f"| {rates[1]:.1f} | {rates[1] * 3600:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", metavar="NAME:PX",
                        default=["vit_base_patch16_224:224", "vit_small_patch16_224:224", "vit_tiny_patch16_224:112",
                                 "mobilenetv3_small_100:112"])
    parser.add_argument("--paths", nargs="+", default=["fp32", "bf16", "int8"], help="CPU paths to time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=200, help="vignettes in the store (spread over classes)")
    parser.add_argument("--repeat", type=int, default=2, help="end-to-end passes over the store (the best counts)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="time per forward-pass measurement")
    parser.add_argument("--quality", metavar="RUN2", help="a finetune run: distil each fold, compare macro-F1")
    parser.add_argument("--student", default="mobilenetv3_small_100:112", metavar="NAME:PX")
    parser.add_argument("--student-arch", metavar="KEY=N,...",
                        help="student overrides (--quality): patch_size, depth, embed_dim, num_heads")
    parser.add_argument("--store", help="the store RUN2 was trained on (--quality)")
    parser.add_argument("--epochs", type=int, default=30, help="distillation epochs (--quality)")
    parser.add_argument("--lr", type=float, default=1e-3, help="distillation lr (--quality)")
    parser.add_argument("--distill-batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.quality:
        quality(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
