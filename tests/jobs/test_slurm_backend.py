"""The SLURM backend, against the real one-node cluster that `.ci/slurm-up.sh` starts.

Jobs run the real `plankton` CLI where it has a fitting command. The requeue and cancel tests need a command
that runs for a while and takes `--resume`, so they submit a small Click group written to a module the SLURM
task can import (sbatch passes PYTHONPATH on to the job).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import slurm_problem
from plankton_cli.jobs import EXIT_NOT_FINISHED, JOBS_FILE, Backend, Job, Resources, list_jobs, record

submitit = pytest.importorskip("submitit")
from plankton_plugins.slurm.backend import PlanktonCommand, SlurmBackend  # noqa: E402

pytestmark = pytest.mark.slurm

DEMO_IMAGES = Path(__file__).resolve().parents[1] / "data" / "planktonclass-demo" / "demo-images"

TRAINER = textwrap.dedent(
    '''
    """A stand-in for a long training command: notes each start in a file, then sleeps unless resumed."""
    import time
    from pathlib import Path

    import click


    @click.group()
    def cli():
        pass


    @cli.command()
    @click.option("--marker", type=click.Path(path_type=Path), required=True)
    @click.option("--resume", is_flag=True)
    def train(marker, resume):
        with marker.open("a") as f:
            f.write(f"start resume={resume}\\n")
        if not resume:
            time.sleep(300)


    @cli.command()
    def evaluate():
        pass
    '''
)



@pytest.fixture(scope="module")
def cluster() -> None:
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture
def trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The stand-in training CLI, importable here and in SLURM tasks; returns its "module:attribute"."""
    package = tmp_path / "pythonpath"
    package.mkdir()
    (package / "standin_trainer.py").write_text(TRAINER)
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setenv("PYTHONPATH", str(package))
    return "standin_trainer:cli"


def _wait_for(predicate, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)


def test_dry_run_renders_submitits_sbatch_script(tmp_path):
    if shutil.which("srun") is None:
        pytest.skip("SLURM is not installed (no srun); run .ci/slurm-up.sh")
    resources = Resources(nodes=1, devices=2, accelerator="gpu", cpus_per_task=4, mem_gb=8, time_min=90,
                          partition="debug", extra_sbatch={"constraint": "h100"}, setup=["module load cuda"])
    job = Job(["pretrain", "--store", "S"], resources, run_dir=tmp_path, name="mae")

    script = SlurmBackend().dry_run(job)

    for line in ["#SBATCH --ntasks-per-node=2", "#SBATCH --partition=debug", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8GB", "#SBATCH --time=90", "#SBATCH --nodes=1",
                 "#SBATCH --job-name=mae", "#SBATCH --constraint=h100", "#SBATCH --signal=USR2@90",
                 "module load cuda"]:
        assert line in script.splitlines(), line
    assert f"{tmp_path}/slurm/%j_%t_log.out" in script
    assert "srun --unbuffered" in script and "-m submitit.core._submit" in script
    assert not list(tmp_path.rglob("*.pkl")), "a dry run must not submit anything"


def test_cpu_job_asks_for_no_gpus(tmp_path):
    if shutil.which("srun") is None:
        pytest.skip("SLURM is not installed (no srun); run .ci/slurm-up.sh")
    script = SlurmBackend().dry_run(Job(["info"], Resources(devices=3), run_dir=tmp_path))
    flags = {line.split("=")[0] for line in script.splitlines() if line.startswith("#SBATCH")}
    assert "#SBATCH --ntasks-per-node" in flags
    assert not flags & {"#SBATCH --gpus-per-node", "#SBATCH --partition", "#SBATCH --mem", "#SBATCH --account"}


def test_checkpoint_resumes_only_commands_that_can(trainer):
    resumed = PlanktonCommand(["train", "--marker", "m"], trainer).checkpoint()
    assert resumed.function.argv == ["train", "--marker", "m", "--resume"]
    assert resumed.function.cli == trainer
    # Already resuming: unchanged. A command without --resume starts again as it was.
    assert PlanktonCommand(["train", "--resume"], trainer).checkpoint().function.argv == ["train", "--resume"]
    assert PlanktonCommand(["evaluate"], trainer).checkpoint().function.argv == ["evaluate"]
    assert PlanktonCommand(["ingest", "d"]).checkpoint().function.argv == ["ingest", "d"]  # the real CLI


def test_ingest_runs_on_the_cluster_and_is_recorded(cluster, tmp_path):
    store = tmp_path / "store"
    backend = SlurmBackend()
    assert isinstance(backend, Backend)
    job = Job(["ingest", str(DEMO_IMAGES), "--store", str(store), "--json"], Resources(time_min=5),
              run_dir=tmp_path, name="ingest-demo")

    handle = backend.submit(job)
    entry = record(store, job, handle, backend.name)

    assert handle.wait() == 0
    assert handle.state() == "COMPLETED"
    out, err = (Path(p) for p in entry.log_paths)
    assert out == tmp_path / "slurm" / f"{handle.job_id}_0_log.out" and err.exists()
    summary = json.loads(out.read_text()[out.read_text().index("{"): out.read_text().rindex("}") + 1])
    assert summary["stored"] == summary["read"] > 0 and summary["store"] == str(store)

    line = json.loads((store / JOBS_FILE).read_text())
    assert line["job_id"] == handle.job_id and line["backend"] == "slurm"
    assert line["argv"] == job.argv and line["run_dir"] == str(tmp_path.resolve())
    assert line["exit_code"] is None  # submitted, not finished, when recorded
    [listed] = list_jobs(store, backends={"slurm": backend})
    assert (listed.job_id, listed.state) == (handle.job_id, "COMPLETED")


def test_every_task_runs_the_command(cluster, tmp_path):
    handle = SlurmBackend().submit(Job(["plugins", "--json"], Resources(devices=2, time_min=5), run_dir=tmp_path))

    assert handle.wait() == 0
    outs = [Path(p) for p in handle.log_paths if p.suffix == ".out"]
    assert [p.name for p in outs] == [f"{handle.job_id}_0_log.out", f"{handle.job_id}_1_log.out"]
    for rank, out in enumerate(outs):
        text = out.read_text()
        assert f"global_rank={rank}(2)" in text  # SLURM gave each task its rank
        assert '"ifcb"' in text  # and each ran `plankton plugins --json`


def test_failing_command_returns_its_exit_status(cluster, tmp_path):
    handle = SlurmBackend().submit(Job(["no-such-command"], Resources(time_min=5), run_dir=tmp_path))
    assert handle.wait() == 2  # Click's usage error, carried back from the task
    assert handle.state() == "FAILED"
    assert "No such command" in Path(handle.log_paths[1]).read_text()


def test_cancelled_job_does_not_hang_wait(cluster, tmp_path, trainer):
    marker = tmp_path / "starts.txt"
    handle = SlurmBackend(cli=trainer).submit(Job(["train", "--marker", str(marker)], Resources(time_min=5),
                                                  run_dir=tmp_path))
    _wait_for(marker.exists, "the job to start")

    handle.cancel()

    assert handle.wait() == EXIT_NOT_FINISHED
    assert handle.state() == "CANCELLED"


@pytest.mark.timeout(180)
def test_timeout_requeues_the_command_with_resume(cluster, tmp_path, trainer):
    marker = tmp_path / "starts.txt"
    backend = SlurmBackend(cli=trainer)
    handle = backend.submit(Job(["train", "--marker", str(marker)], Resources(time_min=10), run_dir=tmp_path))
    _wait_for(marker.exists, "the job to start")

    # What SLURM does 90 s before the time limit: USR2 to the job. submitit checkpoints and requeues it.
    submitit.SlurmJob(tmp_path / "slurm", handle.job_id)._interrupt(timeout=True)
    _wait_for(lambda: handle.state() == "PENDING" or marker.read_text().count("start") == 2, "the requeue")
    # SLURM 22.05 holds a requeued job for 120 s (Reason=BeginTime); let it start now so the test stays short.
    # (No check: a SLURM without the hold may have started it already.)
    subprocess.run(["scontrol", "update", f"JobId={handle.job_id}", "StartTime=now"], capture_output=True)

    assert handle.wait() == 0
    assert marker.read_text().splitlines() == ["start resume=False", "start resume=True"]
    log = Path(handle.log_paths[0]).read_text()
    assert "Requeued job" in log and "this job is timed-out" in log
