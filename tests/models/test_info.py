"""`ModelInfo`: the typed encoder.json / model.json, backwards compatible, validated with errors naming the file."""

from __future__ import annotations

import json

import pytest

from plankton_cli.train.model_info import MODEL_FORMAT, ModelInfo, ModelInfoError

# An encoder.json exactly as `plankton pretrain` wrote it before ModelInfo existed: scalar mean/std, provenance keys.
OLD_ENCODER = {
    "architecture": "vit_base_patch16_224", "created": "2026-11-30T10:00:00+00:00", "crop": 32, "depth": 2,
    "embed_dim": 64, "epochs": 3, "format": "plankton-cli/encoder", "format_version": 1, "global_step": 12,
    "img_size": 32, "in_chans": 1, "init": None, "mask_ratio": 0.75, "mean": 0.31, "num_heads": 2,
    "pad_settings": ["UVP6: pad-v1 crop=0,0,0,0+scale-bar size=keep"], "patch_size": 8,
    "plankton_cli_version": "0.1.0", "recipe": "mae", "resize": 37, "source": "MAE pretraining, 3 epochs",
    "source_dataset": "padded", "source_run": "/runs/mae", "source_store": "/store", "std": 0.12,
}
# A model.json as `plankton finetune` wrote it: null thresholds, the encoder's source, a plug-in's own key.
OLD_MODEL = {
    **{k: v for k, v in OLD_ENCODER.items() if k not in ("epochs", "global_step", "mask_ratio", "recipe", "init")},
    "format": "plankton-cli/model", "classes": ["Copepoda", "detritus"], "num_classes": 2, "hidden_dim": 512,
    "mean": [0.31], "std": [0.12], "thresholds": None, "threshold_target_precision": 0.9,
    "thresholds_unreached": ["Copepoda", "detritus"], "dataset": "padded", "encoder_source": "MAE pretraining",
    "pad_mode": "edge-mode-noise",
}


def test_files_written_before_load_and_keep_every_key(tmp_path):
    path = tmp_path / "encoder.json"
    path.write_text(json.dumps(OLD_ENCODER))
    info = ModelInfo.load(path)
    assert info.mean == [0.31] and info.std == [0.12]  # per channel now
    assert info.data_config() == {"resize": 37, "crop": 32, "mean": [0.31], "std": [0.12]}
    assert info.extra["source_run"] == "/runs/mae" and info.extra["epochs"] == 3 and not info.is_model
    assert info.pad_settings == OLD_ENCODER["pad_settings"] and info.features == [] and info.feature_dim == 0
    written = info.to_dict()
    assert written == {**OLD_ENCODER, "mean": [0.31], "std": [0.12]}  # nothing lost, nothing invented

    model = ModelInfo.from_dict(OLD_MODEL)
    assert model.is_model and model.format == MODEL_FORMAT and model.thresholds is None
    assert model.extra["pad_mode"] == "edge-mode-noise"
    assert ModelInfo.from_dict(model.to_dict()) == model


def test_save_is_atomic_and_round_trips(tmp_path):
    info = ModelInfo.from_dict(OLD_MODEL)
    path = info.save(tmp_path / "model.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]  # no temporary file left
    assert ModelInfo.load(path) == info


@pytest.mark.parametrize("change, message", [
    ({"img_size": 0}, "img_size must be a positive integer"),
    ({"img_size": "32"}, "img_size must be a positive integer"),
    ({"classes": ["Copepoda"]}, "classes must list exactly num_classes"),
    ({"std": [0.0]}, "std must be positive"),
    ({"mean": [0.1, 0.2, 0.3]}, "need 1 or in_chans"),
    ({"thresholds": {"Cnidaria": 0.5}}, "thresholds name classes the model does not have: Cnidaria"),
    ({"features": ["object_area"], "feature_center": [1.0], "feature_scale": []}, "one value per feature"),
    ({"features": ["object_area"], "feature_center": [1.0], "feature_scale": [2.0]}, "feature_clip"),
    ({"format": "something/else"}, "format is 'something/else'"),
    ({"extra_table": {"a": 1}}, "must be flat; 'extra_table' is a mapping"),
    ({"architecture": None}, "lacks required key"),
])
def test_bad_descriptions_fail_with_one_line_naming_the_file_and_key(tmp_path, change, message):
    path = tmp_path / "fold-0" / "model.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**OLD_MODEL, **change}))
    with pytest.raises(ModelInfoError, match=message) as error:
        ModelInfo.load(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_not_json_is_named(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("{not json")
    with pytest.raises(ModelInfoError, match="not valid JSON"):
        ModelInfo.load(path)
