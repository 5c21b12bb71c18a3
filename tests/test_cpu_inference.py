"""The CPU paths of `plankton predict`: int8 and bf16 agree with fp32 on real UVP6 vignettes; --threads, --cpu-path."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from conftest import BUNDLED, plankton, shared_data
from plankton_cli.infer import cpu_inference
from plankton_cli.train.finetune import FinetuneConfig, finetune
from plankton_cli.ingest import ingest
from plankton_cli.train.models import Classifier
from plankton_cli.train.models.checkpoints import save_model
from plankton_cli.infer.predict import predict
from plankton_cli.core.records import ReadOptions
from plankton_cli.store import Store

TINY = dict(patch_size=8, depth=2, embed_dim=64, num_heads=2)


@pytest.fixture(scope="module")
def uvp6_model(tmp_path_factory):
    """All 1,250 UVP6 vignettes in a store, and a tiny ViT fine-tuned on them (trained weights: the logits have
    the margins of a real model, which is what quantisation error is measured against)."""
    images = shared_data("images", "uvp6-vignettes")
    work = tmp_path_factory.mktemp("uvp6-cpu")
    store = Store(work / "store")
    ingest(store, [images], options=ReadOptions(instrument="UVP6"))
    config = FinetuneConfig(store=store.root, init="scratch", out=work / "ft", model="vit_small_patch16_224",
                            img_size=32, **TINY, labels="all", folds=1, epochs=4, batch_size=32, warmup_epochs=1,
                            workers=0, drop_path=0.0)
    finetune(config)
    return store, work / "ft" / "fold-0" / "model.safetensors"


def _top1(path) -> dict[str, str]:
    table = pq.read_table(path, columns=["object_id", "label_auto"]).to_pydict()
    return dict(zip(table["object_id"], table["label_auto"]))


@pytest.mark.slow
@pytest.mark.parametrize("cpu_path", ["int8", "bf16"])
def test_fast_paths_agree_with_fp32_on_uvp6(uvp6_model, cpu_path, tmp_path):
    if cpu_path == "bf16" and not cpu_inference.bf16_supported():
        pytest.skip("this CPU has no native bf16")
    store, model = uvp6_model
    runs = {}
    for path in ("fp32", cpu_path):
        summary = predict(model, store=store, to=["parquet"], out_dir=tmp_path / path, force=True, cpu_path=path,
                          threads=2)
        assert summary.predicted == 1250 and summary.cpu_path == path
        runs[path] = _top1(tmp_path / path / "predictions.parquet")
    assert runs["fp32"].keys() == runs[cpu_path].keys()
    agree = sum(runs["fp32"][i] == runs[cpu_path][i] for i in runs["fp32"]) / len(runs["fp32"])
    assert agree >= 0.99, f"{cpu_path} agrees with fp32 on {agree:.2%} of the UVP6 vignettes"
    assert len(set(runs["fp32"].values())) > 1  # a trained model, not one constant answer


def test_auto_is_int8_exactly_where_the_cpu_has_vnni(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu_inference, "Path", lambda _: cpuinfo)
    for flags, expected in (("fpu avx2 fma", "fp32"), ("avx2 avx512f avx512_vnni", "int8"), ("avx2 avx_vnni", "int8")):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_inference.auto_path() == expected
    model = Classifier("vit_tiny_patch16_224", 3, img_size=32, drop_path_rate=0.0, **TINY).eval()
    assert cpu_inference.prepare(model, "auto")[2] == "int8"
    cnn = Classifier("mobilenetv3_small_050", 3, img_size=32).eval()  # int8 would reach only its head
    assert cpu_inference.prepare(cnn, "auto")[2] == "fp32"


def test_int8_quantises_every_linear_layer_and_keeps_the_rest():
    model = Classifier("vit_tiny_patch16_224", 3, img_size=32, drop_path_rate=0.0, **TINY).eval()
    fast, autocast, path = cpu_inference.prepare(model, "int8")
    assert path == "int8"
    assert not any(type(m) is nn.Linear for m in fast.modules())
    assert isinstance(fast.encoder.patch_embed.proj, nn.Conv2d)  # the convolution stays fp32
    x = torch.randn(4, 1, 32, 32)
    with torch.inference_mode(), autocast:
        assert fast(x).shape == model(x).shape == (4, 3)
    with pytest.raises(ValueError, match="unknown CPU path"):
        cpu_inference.prepare(model, "fp8")


def test_threads_and_cpu_path_from_the_command_line(tmp_path):
    classes = ["Actinoptychus", "Bacillariophyceae", "Ciliophora", "Dinoflagellata", "Noctilucales", "Tripos"]
    model = Classifier("vit_tiny_patch16_224", len(classes), img_size=32, hidden_dim=32, **TINY)
    path = save_model(tmp_path / "m", model.state_dict(), {**model.arch, "classes": classes, "mean": [0.5],
                                                            "std": [0.25], "resize": 36})
    images = BUNDLED / "planktonclass-demo" / "demo-images"
    for cpu_path in ("fp32", "int8"):
        proc = plankton("predict", "--model", str(path), str(images), "--to", "csv", "--out", str(tmp_path / cpu_path),
                        "--store", str(tmp_path / "none"), "--threads", "1", "--cpu-path", cpu_path, "--json")
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["predicted"] == 105 and summary["cpu_path"] == cpu_path
    bad = plankton("predict", "--model", str(path), str(images), "--threads", "0", "--store", str(tmp_path / "none"))
    assert bad.returncode == 2 and "--threads" in bad.stderr
