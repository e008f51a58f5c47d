"""Tests for the simulator registry of the ``sbi_inn.simulators`` entry-point group (sbi_inn.registry).

The plugin test installs nothing: a ``toy_plugin-0.1.dist-info`` folder with ``METADATA`` and ``entry_points.txt``
on ``sys.path`` is what ``importlib.metadata`` finds for an installed distribution, and it registers a simulator
module written into ``tmp_path``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import simulators
from sbi_inn import hdf5_info, load_hdf5
from sbi_inn.cli import main
from sbi_inn.registry import GROUP, available_simulators, load_simulator

PACKAGE = Path(__file__).resolve().parents[1] / "sbi_inn"

TOY = '''
"""A toy simulator of a package other than sbi_inn: y = 3 x + 0.05 noise, x ~ U(-1, 1)^2."""
import torch

from sbi_inn.priors import BoxUniform


class Toy:
    name = "toy"
    param_names = ["a", "b"]
    obs_names = ["ya", "yb"]
    is_set_valued = False

    def __init__(self, scale: float = 3.0):
        self.scale = float(scale)
        self.prior = BoxUniform(-torch.ones(2), torch.ones(2))

    @property
    def param_dim(self):
        return 2

    @property
    def obs_dim(self):
        return 2

    def config(self):
        return {"scale": self.scale}

    def simulate(self, x, *, generator=None):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return self.scale * x + 0.05 * noise

    __call__ = simulate
'''


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    """Register the simulator ``toy`` (module ``toy_sim_plugin``) through a dist-info folder on ``sys.path``."""
    (tmp_path / "toy_sim_plugin.py").write_text(TOY)
    info = tmp_path / "toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\ntoy = toy_sim_plugin:Toy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_sim_plugin", raising=False)
    yield tmp_path
    sys.modules.pop("toy_sim_plugin", None)


def test_entry_points_name_the_simulators_of_the_package_registry():
    from importlib.metadata import entry_points

    ours = {ep.name: ep.value for ep in entry_points(group=GROUP) if ep.value.startswith("simulators.")}
    assert ours == simulators._REGISTRY
    assert set(simulators.list_simulators()) <= set(available_simulators())


@pytest.mark.parametrize("name", sorted(simulators._REGISTRY))
def test_load_simulator_builds_what_get_simulator_builds(name):
    a, b = load_simulator(name), simulators.get_simulator(name)
    assert type(a) is type(b) and a.config() == b.config()


def test_load_simulator_passes_the_configuration_and_rejects_unknown_names_and_keywords():
    sim = load_simulator("inverse_kinematics", noise=0.01, lengths=[1.0, 1.0, 1.0])
    assert sim.config()["noise"] == 0.01 and sim.config()["lengths"] == [1.0, 1.0, 1.0]
    with pytest.raises(KeyError, match="unknown simulator 'nope'.*inverse_kinematics"):
        load_simulator("nope")
    with pytest.raises(TypeError, match="'inverse_kinematics' takes no configuration 'nois'.*noise"):
        load_simulator("inverse_kinematics", nois=0.1)


def test_a_plugin_simulator_is_known_to_list_simulate_and_diagnose(toy_plugin, tmp_path, capsys):
    assert "toy" in available_simulators()
    assert load_simulator("toy", scale=2.0).config() == {"scale": 2.0}

    assert main(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("toy "))
    assert row.split()[1:5] == ["2", "2", "no", "a,"]

    path = tmp_path / "toy.h5"
    assert main(["simulate", "toy", "-n", "600", "-o", str(path), "--config", "scale=2", "--quiet"]) == 0
    info = hdf5_info(path)
    assert info["simulator"] == "toy" and info["simulator_config"] == {"scale": 2.0} and info["num_rows"] == 600
    data = load_hdf5(path)
    residual = data["y"].numpy() - 2.0 * data["x"].numpy()  # the toy's y = 2 x + 0.05 noise
    assert np.abs(residual.std(0) - 0.05).max() < 0.01 and np.abs(data["x"].numpy()).max() <= 1.0

    model = tmp_path / "toy.sbi"
    assert main(["train", str(path), "-o", str(model), "--epochs", "2", "--blocks", "2", "--hidden", "16",
                 "--threads", "1", "--quiet"]) == 0
    report = tmp_path / "report"
    assert main(["diagnose", str(model), "--data", str(path), "-o", str(report), "--num-obs", "20",
                 "--num-samples", "20", "--quiet"]) == 0
    capsys.readouterr()
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["simulator"] == {"name": "toy", "config": {"scale": 2.0}}  # rebuilt from the file's metadata
    assert metrics["resimulation_error_mean"] is not None

    with pytest.raises(SystemExit) as exc:
        main(["simulate", "toy", "-n", "10", "-o", str(tmp_path / "b.h5"), "--config", "scal=2"])
    assert exc.value.code == 2 and "takes no configuration 'scal'" in capsys.readouterr().err


def _imported_modules(path: Path) -> set[str]:
    """Modules a source file imports, including ``importlib.import_module("...")`` / ``__import__("...")``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                in ("import_module", "__import__"):
            names.add(node.args[0].value)
    return names


def test_sbi_inn_never_imports_simulators_or_studies():
    files = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "cli" / "models.py" in files and PACKAGE / "registry.py" in files
    offending = {str(f.relative_to(PACKAGE)): sorted(m for m in _imported_modules(f)
                                                     if m.split(".")[0] in ("simulators", "studies"))
                 for f in files}
    assert {f: m for f, m in offending.items() if m} == {}
    code = ("import sys, sbi_inn, sbi_inn.cli, sbi_inn.registry, sbi_inn.diagnostics, sbi_inn.plots; "
            "from sbi_inn.cli import build_parser; build_parser().parse_args(['list']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('simulators', 'studies')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_ast_scan_sees_lazy_and_importlib_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(textwrap.dedent("""
        import importlib
        def f():
            from simulators.base import Simulator
            return importlib.import_module("studies.end_to_end"), __import__("simulators")
    """))
    assert {"simulators.base", "studies.end_to_end", "simulators"} <= _imported_modules(source)
