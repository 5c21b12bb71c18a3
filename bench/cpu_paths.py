"""Which arithmetic runs a model fastest on this CPU: forward img/s and top-1 agreement with fp32, all paths in one run.

Paths: `fp32` and `int8` (predict's own, `plankton_cli.infer.cpu_inference.prepare`), `bf16` (only where the CPU has it),
`compile` (`torch.compile` of the fp32 model, mode default; its compile time is timed apart and left out of the
rate), `ort` (the model exported with `torch.onnx.export` and run by ONNX Runtime fp32 on `--threads` intra-op
threads) and `ort-int8` (that graph through `onnxruntime.quantization.quantize_dynamic`). Each rate is the best of
5 slices of `--seconds / 5` on one synthetic batch, every model and path of the run taking turns slice by slice;
"x fp32" divides it by the same model's torch fp32 rate, so a busy machine still gives comparable ratios.
Agreement: top-1 of each path vs the torch fp32 model on `--images` real UVP6 vignettes (preprocessed by predict's
own `Preprocessor`), or the bundled demo images.

Speed rows (`--models`, `--cnn`) have random weights: speed does not depend on them, and a random head answers
one class for every image, so their agreement would say nothing; it is measured on trained model files
(`--model PATH`, each with its own preprocessing and, when it has one, its feature input, fed synthetic values
that every path gets alike). `--cnn NAME` adds a timm CNN (1 channel, 10 classes, `--cnn-px`) to compare with the
ViT student.

The ort paths need `onnxruntime`, `onnx` and `onnxscript` (`.venv/bin/python -m pip install ...`; not project
dependencies, since predict does not use them); without them those rows say "failed" and the rest runs.

    .venv/bin/python bench/cpu_paths.py                        # ViT-Ti/16 112 px and ViT-S/16 224 px, every path
    .venv/bin/python bench/cpu_paths.py --models vit_tiny_patch16_224:112 --paths fp32 int8 \
        --cnn mobilenetv3_small_100 efficientnet_b0 resnet18
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
UVP6 = REPO.parent / "shared" / "data" / "images" / "uvp6-vignettes"
DEMO = REPO / "tests" / "data" / "planktonclass-demo" / "demo-images"
PATHS = ("fp32", "int8", "bf16", "compile", "ort", "ort-int8")

Run = Callable[[np.ndarray, np.ndarray | None], np.ndarray]  # (images, features or None) -> logits


def vignettes(count: int) -> list[tuple[Path, str]]:
    """Up to `count` real vignettes spread over the classes, with their instrument (for the pad preset)."""
    source, instrument = (UVP6, "UVP6") if UVP6.is_dir() else (DEMO, "FlowCam")
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    per_class = -(-count // len(classes))
    files = [f for cls in classes for f in sorted(cls.iterdir())[:per_class]]
    return [(f, instrument) for f in files[:count]]


def preprocess(files: list[tuple[Path, str]], info) -> np.ndarray:
    """The vignettes as predict feeds them to the model of `info` (its crop, padding, resize, mean/std)."""
    from types import SimpleNamespace

    from plankton_cli.infer.predict import Preprocessor

    prepare = Preprocessor(info)
    items = (SimpleNamespace(image=file.read_bytes(), instrument=instrument, object_id=file.name)
             for file, instrument in files)
    return np.stack([prepare(item).numpy() for item in items]).astype(np.float32)


def torch_run(model, autocast) -> Run:
    import torch

    def run(images: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        args = [torch.from_numpy(images)] + ([torch.from_numpy(features)] if features is not None else [])
        with torch.inference_mode(), autocast:
            return model(*args).float().numpy()

    return run


def export_onnx(model, images: np.ndarray, features: np.ndarray | None, out: Path) -> Path:
    """The fp32 model as an ONNX graph with a dynamic batch axis (predict's last batch is smaller)."""
    import torch

    args = (torch.from_numpy(images),) + ((torch.from_numpy(features),) if features is not None else ())
    names = ["images", "features"][: len(args)]
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, args, out, input_names=names, output_names=["logits"], dynamo=True,
                      dynamic_shapes=tuple({0: batch} for _ in args), optimize=True, verbose=False)
    return out


def ort_run(onnx_file: Path, threads: int) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(images: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        feeds = dict(zip(names, [images] + ([features] if features is not None else [])))
        return session.run(None, feeds)[0]

    return run


def build(path: str, model, example: tuple[np.ndarray, np.ndarray | None], work: Path,
          threads: int) -> tuple[Run, float]:
    """(run, seconds spent preparing it) for one path; preparing includes torch.compile's first call or the
    ONNX export and quantisation."""
    import torch

    from plankton_cli.infer.cpu_inference import prepare

    start = time.perf_counter()
    if path in ("fp32", "int8", "bf16"):
        prepared, autocast, _ = prepare(model, path)
        run = torch_run(prepared, autocast)
    elif path == "compile":
        from contextlib import nullcontext

        run = torch_run(torch.compile(model), nullcontext())
        run(*example)  # the compile happens here, at the timed batch shape
    elif path in ("ort", "ort-int8"):
        onnx_file = work / "model.onnx"
        if not onnx_file.exists():
            export_onnx(model, *example, onnx_file)
        if path == "ort-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = work / "model-int8.onnx"
            # Same scheme as torch's int8 path: int8 weights, uint8 activations quantised on the fly.
            quantize_dynamic(onnx_file, quantized, weight_type=QuantType.QInt8)
            onnx_file = quantized
        run = ort_run(onnx_file, threads)
    else:
        raise ValueError(f"unknown path {path!r}; choose from {', '.join(PATHS)}")
    return run, time.perf_counter() - start


def rates(runs: dict, seconds: float, slices: int = 5) -> dict:
    """Images per second of each `(run, example batch)` of `runs`, the best of `slices` slices of
    `seconds / slices`. The runs take turns slice by slice, every model and path of this bench alike, so whatever
    else the shared machine does falls on all of them (one timed alone during a busy minute would look slow), and
    the best slice is the one least slowed down."""
    for run, example in runs.values():
        run(*example)  # warm-up: allocations, kernel selection
    best = dict.fromkeys(runs, 0.0)
    for _ in range(slices):
        for key, (run, example) in runs.items():
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / slices or done == 0:
                run(*example)
                done += len(example[0])
            best[key] = max(best[key], done / (time.perf_counter() - start))
    return best


def top1(run: Run, images: np.ndarray, features: np.ndarray | None, batch: int) -> np.ndarray:
    """Top-1 class of every image, in full batches (the tail that does not fill one is left out, so compiled
    graphs keep one shape)."""
    out = []
    for start in range(0, len(images) - batch + 1, batch):
        feats = None if features is None else features[start:start + batch]
        out.append(run(images[start:start + batch], feats).argmax(1))
    return np.concatenate(out)


class Subject:
    """One model of the bench with its paths built: `runs[path]`, their preparing seconds, the example batch they
    are timed on, and the vignettes (None: random weights, no agreement) with the features fed beside them."""

    def __init__(self, label: str, model, img_size: int, images: np.ndarray | None, feature_dim: int,
                 args: argparse.Namespace, work: Path) -> None:
        import torch

        from plankton_cli.infer.cpu_inference import bf16_supported

        rng = np.random.default_rng(0)
        count = args.batch_size if images is None else len(images)
        self.label, self.images, self.batch = label, images, args.batch_size
        self.features = rng.standard_normal((count, feature_dim)).astype(np.float32) if feature_dim else None
        self.example = (rng.standard_normal((args.batch_size, 1, img_size, img_size)).astype(np.float32),
                        None if self.features is None else self.features[: args.batch_size])
        model_dir = work / label.replace(" ", "-").replace("/", "-")
        model_dir.mkdir(parents=True, exist_ok=True)
        self.runs: dict[str, Run] = {}
        self.prep: dict[str, float] = {}
        for path in args.paths:
            if path == "bf16" and not bf16_supported():
                print(f"{label:34s} {path:9s} skipped: this CPU has no native bf16", flush=True)
                continue
            torch.manual_seed(0)
            try:
                self.runs[path], self.prep[path] = build(path, model, self.example, model_dir, args.threads)
            except Exception as error:  # an exporter or compiler that fails is a result too
                print(f"{label:34s} {path:9s} failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}")

    def rows(self, speeds: dict) -> list[tuple]:
        """(label, path, img/s, × fp32, agreement or None, prep s) per path."""
        rows, reference = [], None
        for path, run in self.runs.items():
            agree = None
            if self.images is not None:
                answers = top1(run, self.images, self.features, self.batch)
                reference = answers if reference is None else reference  # fp32 comes first
                agree = float((answers == reference).mean())
            speed = speeds[self.label, path]
            rows.append((self.label, path, speed, speed / speeds[self.label, "fp32"], agree, self.prep[path]))
            print(f"{self.label:34s} {path:9s} {speed:9.1f} {rows[-1][3]:7.2f} {percent(agree):>9s} "
                  f"{self.prep[path]:8.1f}", flush=True)
        return rows


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", metavar="NAME:PX",
                        default=["vit_tiny_patch16_224:112", "vit_small_patch16_224:224"])
    parser.add_argument("--model", nargs="*", default=[], metavar="PATH", help="trained model files to add")
    parser.add_argument("--cnn", nargs="*", default=[], metavar="NAME", help="timm CNNs to add (at --cnn-px)")
    parser.add_argument("--cnn-px", type=int, default=112)
    parser.add_argument("--paths", nargs="+", default=["fp32", "int8", "compile", "ort", "ort-int8"],
                        choices=PATHS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=640, help="real vignettes for the agreement")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="timing per model and path (5 slices, all taking turns)")
    args = parser.parse_args()
    if args.paths[0] != "fp32":
        args.paths = ["fp32"] + [p for p in args.paths if p != "fp32"]  # the reference of every ratio

    import tempfile

    import timm
    import torch

    from plankton_cli.infer.cpu_inference import set_threads
    from plankton_cli.train.models import Classifier
    from plankton_cli.train.models.checkpoints import load_model

    set_threads(args.threads)
    files = vignettes(args.images)
    print(f"{len(files)} real vignettes ({'UVP6' if UVP6.is_dir() else 'demo'}) for the agreement, "
          f"{args.threads} threads, batch {args.batch_size}, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    print(f"{'model':34s} {'path':9s} {'img/s':>9s} {'x fp32':>7s} {'agree %':>9s} {'prep s':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subjects = []
        for name, _, px in (spec.partition(":") for spec in args.models):
            size = int(px or 224)
            torch.manual_seed(0)
            model = Classifier(name, 10, img_size=size, drop_path_rate=0.0).eval()
            subjects.append(Subject(f"{name} {size}px", model, size, None, 0, args, work))
        for file in args.model:
            model, info = load_model(Path(file))
            label = f"{Path(file).parent.name} {info.img_size}px trained"[-34:]
            subjects.append(Subject(label, model, info.img_size, preprocess(files, info), info.feature_dim, args,
                                    work))
        for name in args.cnn:
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, in_chans=1, num_classes=10).eval()
            subjects.append(Subject(f"{name} {args.cnn_px}px", model, args.cnn_px, None, 0, args, work))
        runs = {(s.label, path): (run, s.example) for s in subjects for path, run in s.runs.items()}
        speeds = rates(runs, args.seconds)
        rows = [row for s in subjects for row in s.rows(speeds)]

    print("\n| model | path | forward img/s | × fp32 | top-1 agreement with fp32 (%) | prep s |\n"
          "|---|---|---|---|---|---|")
    for label, path, speed, ratio, agree, prep_s in rows:
        print(f"| {label} | {path} | {speed:.1f} | {ratio:.2f} | {percent(agree)} | {prep_s:.1f} |")
    print("\nx fp32: the rate over the same model's torch fp32 rate in this run. prep s: preparing the path "
          "(quantisation, torch.compile's first call, ONNX export + session), left out of the rate. Agreement: "
          "top-1 vs the torch fp32 model on the vignettes, for trained model files only (-: random weights).")


if __name__ == "__main__":
    main()
