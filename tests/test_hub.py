"""`--init hf-hub:ORG/NAME[@REV]` and `timm:NAME` through a real huggingface_hub cache prepared here (no network):
the cached weights load exactly, a repository not in the cache offline is one line, and `plankton export --format hf`
round-trips through the cache into `--init` and `timm.create_model("hf-hub:...")`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from conftest import BUNDLED, plankton
from plankton_cli.train import hub
from plankton_cli.train.distill import DistillConfig, build_student, student_overrides
from plankton_cli.core.errors import UsageError
from plankton_cli.train.finetune import FinetuneConfig, build_classifier
from plankton_cli.train.models import Classifier, load_model
from plankton_cli.train.models.checkpoints import save_model

TINY = dict(patch_size=8, depth=2, embed_dim=64, num_heads=2)


def put_in_hub_cache(cache: Path, repo: str, files: Path, revision: str = "main", commit: str = "0" * 40) -> Path:
    """``files`` (a folder) as ``repo`` at ``revision`` in a Hugging Face hub cache: the layout huggingface_hub reads
    offline (refs/<revision> → snapshots/<commit>/<file>)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    shutil.copytree(files, snapshot, dirs_exist_ok=True)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, offline, for this process (huggingface_hub reads its settings at import) and for the
    `plankton` subprocesses (through the environment)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.resolve.cache_clear()
    yield cache
    hub.resolve.cache_clear()


def timm_repo(folder: Path, architecture: str, **model_args) -> dict[str, torch.Tensor]:
    """A timm encoder (no head) as timm pushes one to the Hub: model.safetensors + config.json; its weights."""
    torch.manual_seed(1)
    model = timm.create_model(architecture, pretrained=False, num_classes=0, **model_args)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    config = {"architecture": architecture, "num_classes": 0, "num_features": model.num_features,
              "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "num_classes": 0, "first_conv": "patch_embed.proj",
                                 "classifier": "head"}}
    if model_args:
        config["model_args"] = model_args
    (folder / "config.json").write_text(json.dumps(config))
    return state


def test_hf_hub_init_loads_exactly_the_cached_weights_at_a_revision(offline_cache, tmp_path):
    state = timm_repo(tmp_path / "repo", "vit_small_patch16_224", img_size=32, in_chans=1, **TINY)
    put_in_hub_cache(offline_cache, "plankton-lab/tiny-mae", tmp_path / "repo", revision="v1", commit="1" * 40)

    config = FinetuneConfig(store=tmp_path, init="hf-hub:plankton-lab/tiny-mae@v1", out=tmp_path / "ft")
    model, inherited = build_classifier(config, num_classes=3)  # no --model: config.json names the architecture
    encoder = model.encoder.state_dict()
    loaded = [k for k in state if k in encoder]
    assert len(loaded) == len(encoder) - 2  # all but fc_norm (MAE's fine-tuning: norm is not copied into it)
    assert all(torch.equal(encoder[k], state[k]) for k in loaded)
    assert model.arch["depth"] == 2 and model.arch["embed_dim"] == 64
    assert inherited["source"] == "fine-tuned from hf-hub:plankton-lab/tiny-mae@v1"

    # distill: a ViT student from the same encoder; a CNN student refuses --init in one line
    student = build_student(DistillConfig(store=tmp_path, teacher=tmp_path, out=tmp_path / "d", student="vit_small_patch16_224",
                                          img_size=32, init="hf-hub:plankton-lab/tiny-mae@v1", **TINY), 3)
    assert torch.equal(student.encoder.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
    with pytest.raises(UsageError, match="--init loads ViT encoders"):
        student_overrides(DistillConfig(store=tmp_path, teacher=tmp_path, out=tmp_path / "d", init="hf-hub:x/y"))


def test_timm_tag_resolves_to_timm_hub_repository_and_adapts_rgb(offline_cache, tmp_path):
    """`timm:NAME` → timm's repository for that tag (here a randomly initialised stand-in of the real shape: the test
    has no network); its RGB kernel is summed into our 1-channel, 32 px ViT and its position embedding resampled."""
    state = timm_repo(tmp_path / "repo", "vit_tiny_patch16_224")
    put_in_hub_cache(offline_cache, "timm/vit_tiny_patch16_224.augreg_in21k", tmp_path / "repo")
    encoder = hub.resolve("timm:vit_tiny_patch16_224.augreg_in21k")
    assert encoder.architecture == "vit_tiny_patch16_224" and encoder.repo == "timm/vit_tiny_patch16_224.augreg_in21k"
    model, _ = build_classifier(FinetuneConfig(store=tmp_path, init="timm:vit_tiny_patch16_224.augreg_in21k",
                                               out=tmp_path / "ft", img_size=32), num_classes=2)
    assert torch.allclose(model.encoder.patch_embed.proj.weight, state["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert torch.equal(model.encoder.blocks[11].attn.qkv.weight, state["blocks.11.attn.qkv.weight"])
    assert model.encoder.pos_embed.shape[1] == 1 + 2 * 2
    with pytest.raises(UsageError, match="timm has no pretrained weights called 'vit_nonesuch'"):
        hub.resolve("timm:vit_nonesuch")


def test_a_repository_not_in_the_cache_offline_is_one_line_saying_how_to_fetch_it(offline_cache, tmp_path):
    store = tmp_path / "store"
    plankton("ingest", str(BUNDLED / "planktonclass-demo" / "demo-images"), "--store", str(store), check=True)
    for command in (["pretrain", "--out", str(tmp_path / "mae")],
                    ["finetune", "--out", str(tmp_path / "ft"), "--folds", "1", "--workers", "0"]):
        proc = plankton(*command, "--init", "hf-hub:plankton-lab/not-downloaded@v2", "--store", str(store))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: --init hf-hub:plankton-lab/not-downloaded@v2"), lines
        assert "HF_HUB_OFFLINE is set" in lines[0] and "hf download plankton-lab/not-downloaded --revision v2" in lines[0]
        assert str(offline_cache) in lines[0]
    bad = plankton("pretrain", "--init", "no/such/file.safetensors", "--out", str(tmp_path / "x"), "--store", str(store))
    assert bad.returncode == 2 and "hf-hub:ORG/NAME" in bad.stderr


def test_export_hf_round_trips_through_the_cache_into_init_and_timm(offline_cache, tmp_path):
    classes = ["Acantharea", "Copepoda", "detritus"]
    torch.manual_seed(2)
    model = Classifier("vit_small_patch16_224", len(classes), img_size=32, hidden_dim=16, **TINY)
    weights = save_model(tmp_path / "run" / "fold-0", model.state_dict(), {
        **model.arch, "classes": classes, "mean": [0.6], "std": [0.2], "resize": 36, "instruments": ["UVP6"],
        "pad_settings": ["UVP6: pad-v1 crop=0,0,0,0+scale-bar size=keep"], "thresholds": {"Copepoda": 0.5}})
    (tmp_path / "run" / "fold-0" / "result.json").write_text(json.dumps({
        "labels": "5%", "protocol": "budget", "n_labelled": 60, "n_train": 50, "n_val": 10, "n_test": 40, "fold": 0,
        "head": "finetune", "accuracy": 0.8, "balanced_accuracy": 0.7, "macro_f1": 0.65,
        "baselines": {"pixel_logreg": {"accuracy": 0.5, "balanced_accuracy": 0.4, "macro_f1": 0.3}}}))
    out = tmp_path / "hf-export"
    proc = plankton("export", str(weights), "--format", "hf", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["files"]) == sorted(p.name for p in out.iterdir())

    card = (out / "README.md").read_text()
    for text in ("library_name: timm", "Copepoda", "UVP6", "`--labels 5%`", "| **this model** (head `finetune`) | 80.00",
                 "baseline `pixel_logreg` | 50.00", "plankton predict --model NAME/classifier.safetensors",
                 "--init hf-hub:ORG/NAME"):
        assert text in card, text
    reloaded, info = load_model(out / "classifier.safetensors")  # the whole model, for `plankton predict`
    assert info.classes == classes and torch.equal(reloaded.head[3].weight, model.head[3].weight)

    put_in_hub_cache(offline_cache, "plankton-lab/uvp6-vit", out)
    tuned, inherited = build_classifier(FinetuneConfig(store=tmp_path, init="hf-hub:plankton-lab/uvp6-vit",
                                                       out=tmp_path / "ft"), num_classes=5)
    assert all(torch.equal(tuned.encoder.state_dict()[k], v) for k, v in model.encoder.state_dict().items())
    assert inherited["mean"] == [0.6] and inherited["pad_settings"] == info.pad_settings  # our encoder info travels

    encoder = timm.create_model("hf-hub:plankton-lab/uvp6-vit", pretrained=True).eval()
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder(images), model.eval().forward_features(images), atol=1e-6)



def test_export_hf_of_a_distilled_cnn_student_loads_in_timm(offline_cache, tmp_path):
    """A CNN student's encoder is timm's own layout too (no ViT shape, no --init: that takes ViTs)."""
    model = Classifier("mobilenetv3_small_050", 2, img_size=32, hidden_dim=16).eval()
    weights = save_model(tmp_path / "student", model.state_dict(), {**model.arch, "classes": ["a", "b"],
                                                                    "mean": [0.5], "std": [0.25]})
    proc = plankton("export", str(weights), "--format", "hf", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    put_in_hub_cache(offline_cache, "plankton-lab/student", tmp_path / "out")
    encoder = timm.create_model("hf-hub:plankton-lab/student", pretrained=True).eval()
    images = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(encoder(images), model.forward_features(images), atol=1e-6)


def test_pretrain_from_a_hub_encoder_takes_its_architecture(offline_cache, tmp_path):
    timm_repo(tmp_path / "repo", "vit_small_patch16_224", img_size=32, in_chans=1, **TINY)
    put_in_hub_cache(offline_cache, "plankton-lab/tiny-mae", tmp_path / "repo")
    store = tmp_path / "store"
    plankton("ingest", str(BUNDLED / "planktonclass-demo" / "demo-images"), "--store", str(store), check=True)
    proc = plankton("-v", "pretrain", "--init", "hf-hub:plankton-lab/tiny-mae", "--img-size", "32", "--epochs", "1",
                    "--max-steps", "1", "--batch-size", "8", "--effective-batch", "8", "--workers", "0",
                    "--decoder-depth", "1", "--decoder-dim", "32", "--decoder-heads", "2", "--store", str(store),
                    "--out", str(tmp_path / "mae"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "encoder initialised from hf-hub:plankton-lab/tiny-mae" in proc.stderr
    encoder = json.loads((tmp_path / "mae" / "encoder.json").read_text())
    assert (encoder["architecture"], encoder["depth"], encoder["embed_dim"], encoder["patch_size"]) == \
        ("vit_small_patch16_224", 2, 64, 8)  # no --model: the repository's config.json said so
