"""The command line as a user meets it: help, fast start, config file, environment, plugins, exit codes."""

import json
import sys
import textwrap

import pytest

from conftest import REPO, plankton
from plankton_cli.cli import _SUMMARIES, COMMANDS, cli


def test_help_lists_every_command_with_its_summary():
    proc = plankton("--help", check=True)
    for name in COMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_with_examples(name):
    proc = plankton(name, "--help", check=True)
    assert "Examples:" in proc.stdout
    command = cli.get_command(None, name)
    # the root help shows a hand-kept summary (so it need not import every command): keep it true
    assert command.get_short_help_str(limit=200) == _SUMMARIES[name]


@pytest.mark.parametrize("args", [["--help"], ["info", "--store", "nowhere"], ["ingest", "--help"]])
def test_light_commands_never_import_torch(args, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from plankton_cli.cli import main
        try:
            main({args!r})
        except SystemExit:
            pass
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.strip().endswith("ok"), proc.stderr


def test_store_from_environment_and_config_file(tmp_path, demo_images):
    store = tmp_path / "env-store"
    proc = plankton("ingest", str(demo_images), "--json", env={"PLANKTON_STORE": str(store)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["store"] == str(store)

    config_store = tmp_path / "config-store"
    (tmp_path / "plankton.toml").write_text(f'store = "{config_store}"\nlock-timeout = 5\n'
                                            '[ingest]\ninstrument = "FlowCam"\nformat = "folders"\n')
    proc = plankton("ingest", str(demo_images), "--json", cwd=tmp_path)  # ./plankton.toml is read by default
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["store"] == str(config_store)
    info = json.loads(plankton("info", "--json", cwd=tmp_path, check=True).stdout)
    assert info["datasets"]["objects"]["by_instrument"] == {"FlowCam": 105}
    # the command line beats the config file
    proc = plankton("info", "--json", "--store", str(store), cwd=tmp_path, check=True)
    assert json.loads(proc.stdout)["store"] == str(store)


def test_broken_config_file_exits_78(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("store = [unterminated")
    proc = plankton("--config", str(bad), "info")
    assert proc.returncode == 78 and "cannot read config" in proc.stderr


def test_a_bad_value_from_the_config_file_names_the_file_and_key(tmp_path):
    """Not `Invalid value for '--taxon-map'`: the user never typed that option (issue 21)."""
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")  # never read: the config's values fail first
    config = tmp_path / "station.toml"
    config.write_text('batch_size = "big"\n[predict]\ntaxon_map = "/data/plankton/taxon-map.tsv"\n')
    proc = plankton("--config", str(config), "predict", "--model", str(model), "--batch-size", "8")
    assert proc.returncode == 78
    assert proc.stderr.strip() == (f'Error: {config}: [predict] taxon_map = "/data/plankton/taxon-map.tsv": not '
                                   f'found; fix or remove it there, or give --taxon-map on the command line')
    proc = plankton("--config", str(config), "predict", "--model", str(model), "--taxon-map", str(model))
    assert proc.returncode == 78 and f'{config}: batch_size = "big": ' in proc.stderr  # a top-level key
    proc = plankton("predict", "--model", str(model), "--taxon-map", "typed.tsv", cwd=tmp_path)  # typed: Click is right
    assert proc.returncode == 2 and "Invalid value for '--taxon-map'" in proc.stderr


def test_info_counts(tmp_path, demo_images):
    store = tmp_path / "s"
    plankton("ingest", str(demo_images), "--store", str(store), check=True)
    data = json.loads(plankton("info", "--store", str(store), "--json", check=True).stdout)
    objects = data["datasets"]["objects"]
    assert objects["rows"] == 105 and objects["labels"] == 6 and objects["sources"] == 105
    assert objects["schema_version"] == "objects.v1"
    assert data["sources_by_reader"] == {"folders": 105}
    human = plankton("info", "--store", str(store), check=True).stdout
    assert "105 rows" in human and "Tripos" in human


def _fake_distribution(site, name, group, entry):
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")


def test_broken_plugin_is_listed_and_named_when_used_but_never_breaks_the_cli(tmp_path, demo_images):
    site = tmp_path / "site"
    _fake_distribution(site, "plankton-broken", "plankton.readers", "broken = plankton_does_not_exist:Reader")
    env = {"PYTHONPATH": str(site)}
    listing = json.loads(plankton("plugins", "--json", env=env, check=True).stdout)
    broken = [p for p in listing if p["name"] == "broken"]
    assert broken and "No module named 'plankton_does_not_exist'" in broken[0]["broken"]
    assert any(p["name"] == "ifcb" and p["broken"] is None for p in listing)
    # other readers keep working, --format auto included
    assert plankton("ingest", str(demo_images), "--store", str(tmp_path / "s"), env=env).returncode == 0
    proc = plankton("ingest", str(demo_images), "--store", str(tmp_path / "s"), "--format", "broken", env=env)
    assert proc.returncode == 2 and "broken" in proc.stderr and "failed to load" in proc.stderr


def test_third_party_reader_from_examples_installs_and_ingests(tmp_path):
    import subprocess

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(REPO / "examples" / "plankton-list-reader")], check=True)
    env = {"PYTHONPATH": str(site)}
    listing = json.loads(plankton("plugins", "--json", env=env, check=True).stdout)
    assert {"name": "image-list", "package": "plankton-list-reader"}.items() <= next(
        p for p in listing if p["name"] == "image-list").items()
    store = tmp_path / "s"
    demo = REPO / "tests" / "data" / "planktonclass-demo"
    proc = plankton("ingest", str(demo), "--store", str(store), "--json", env=env, check=True)  # sniffed
    summary = json.loads(proc.stdout)
    assert summary["stored"] == 105 and summary["rejected"] == 0  # 82 train + 15 val + 8 test lines
    info = json.loads(plankton("info", "--store", str(store), "--json", check=True).stdout)
    assert info["sources_by_reader"] == {"image-list": 3}
