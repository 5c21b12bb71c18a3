"""`plankton pretrain --backend slurm` against the real one-node cluster that `.ci/slurm-up.sh` starts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import plankton, slurm_problem
from test_pretrain import TINY, make_store

pytestmark = pytest.mark.slurm



@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)
    return make_store(tmp_path_factory.mktemp("store") / "store")


def test_dry_run_prints_the_job_script_without_submitting(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = plankton("pretrain", "--store", str(store), *TINY, "--max-steps", "2", "--out", str(run),
                    "--backend", "slurm", "--accelerator", "cpu", "--devices", "2", "--time", "0:10:00",
                    "--mem", "2G", "--sbatch", "comment=plankton-test", "--dry-run", check=True)
    script = proc.stdout
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --time=10" in script
    assert "#SBATCH --comment=plankton-test" in script and "#SBATCH --mem=2GB" in script
    assert "--gpus" not in script  # a CPU job asks for no GPU
    assert not run.exists() or not any(run.iterdir())  # nothing submitted, nothing trained
    assert not (store / "jobs.jsonl").exists()


def test_submitted_pretrain_exports_an_encoder(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = plankton("pretrain", "--store", str(store), *TINY, "--batch-size", "16", "--effective-batch", "16",
                    "--max-steps", "2", "--out", str(run), "--json", "--backend", "slurm", "--accelerator", "cpu",
                    "--time", "10", "--wait", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "submitted plankton-pretrain to slurm: job" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 2
    info = json.loads((run / "encoder.json").read_text())
    assert info["source_store"] == str(store) and info["in_chans"] == 1
    assert (run / "encoder.safetensors").stat().st_size > 0

    # The tasks' results are written a moment before SLURM itself calls the job COMPLETED.
    for _ in range(30):
        jobs = json.loads(plankton("jobs", "--store", str(store), "--json", check=True).stdout)
        if jobs[0]["state"] not in ("RUNNING", "COMPLETING"):
            break
        time.sleep(1)
    assert len(jobs) == 1 and jobs[0]["backend"] == "slurm"
    assert jobs[0]["state"] == "COMPLETED" and jobs[0]["run_dir"] == str(run)
    # The job ran the same command, locally on the node, without the backend-only options.
    argv = jobs[0]["argv"]
    assert argv[0] == "pretrain" and argv[-2:] == ["--backend", "local"]
    assert "--wait" not in argv and "--time" not in argv and "--json" in argv
