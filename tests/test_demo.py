"""The README's first command: the whole pipeline on the bundled data runs and leaves every output it promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from conftest import REPO


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PLANKTON": str(Path(sys.executable).parent / "plankton")}
    proc = subprocess.run(["bash", str(REPO / "examples" / "demo.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Outputs:" in proc.stdout

    assert (out / "pad-preview.png").stat().st_size > 0
    assert (out / "pretrain" / "encoder.safetensors").exists()
    assert list((out / "pretrain" / "reconstructions").glob("*.png"))
    summary = json.loads((out / "finetune" / "summary.json").read_text())
    assert len(list((out / "finetune").glob("fold-*/model.safetensors"))) == 2

    from plankton_plugins.ecotaxa.checker import check_import_zip

    zips = sorted((out / "predictions" / "ecotaxa").glob("*.zip"))
    assert zips and all(check_import_zip(z) == [] for z in zips)
    (h5,) = (out / "predictions" / "ifcb-h5").rglob("*_class.h5")
    with h5py.File(h5) as f:
        assert f["output_scores"].shape[0] == 19
    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text())
    accuracy = evaluation["runs"][0]["summary"]["accuracy"]["mean"]
    assert accuracy > 1 / 6, f"demo accuracy {accuracy:.2f} is not above chance for 6 classes ({summary})"
