"""The package as a whole: its public API, and imports that flow one way (no cycle, nothing from simulators)."""

import ast
from pathlib import Path

import sbi_inn

PACKAGE = Path(sbi_inn.__file__).parent


def _imports(path: Path) -> set[str]:
    """The ``sbi_inn`` modules a file imports anywhere in it (module level, inside functions, importlib strings)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("sbi_inn."):
            found.add(node.value.split(":")[0])
    return {m for m in found if m.startswith("sbi_inn")}


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycle_among_the_package_modules():
    graph = _graph()
    assert len(graph) > 20 and "sbi_inn.simulation" in graph["sbi_inn.hdf5_writer"]  # the scan sees the imports
    # packages (sbi_inn, sbi_inn.diagnostics) re-export their modules: only cycles among modules count
    edges = {m: {d for d in deps if not graph.get(d) or d not in ("sbi_inn", "sbi_inn.diagnostics")}
             for m, deps in graph.items() if m not in ("sbi_inn", "sbi_inn.diagnostics")}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(edges.get(m, ())):
            assert state.get(d) != 1, f"import cycle: {' -> '.join([*path, m, d])}"
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])


def test_a_cycle_would_be_found():
    """The cycle check above is not vacuous: the graph holds the one-way chain simulation <- hdf5_writer <- data <-
    training_data <- fit, and posterior imports both model classes directly (no importlib registry)."""
    graph = _graph()
    assert "sbi_inn.hdf5_writer" in graph["sbi_inn.data"] and "sbi_inn.hdf5_format" in graph["sbi_inn.hdf5_writer"]
    assert "sbi_inn.data" in graph["sbi_inn.training_data"] and "sbi_inn.training_data" in graph["sbi_inn.fit"]
    assert {"sbi_inn.cinn", "sbi_inn.inn"} <= graph["sbi_inn.posterior"]
    assert "sbi_inn.posterior" not in graph["sbi_inn.inn"] and "sbi_inn.fit" not in graph["sbi_inn.inn"]


def test_the_public_api():
    for name in ("fit_posterior", "load_posterior", "Posterior", "FitConfig", "INNConfig", "FlowConfig",
                 "TrainConfig", "DataConfig", "SeedTree", "simulate_to_hdf5", "HDF5Dataset", "BoxUniform"):
        assert name in sbi_inn.__all__ and getattr(sbi_inn, name) is not None
    from sbi_inn.config import DataConfig, FitConfig
    from sbi_inn.inn import INNConfig

    assert sbi_inn.DataConfig is DataConfig and sbi_inn.FitConfig is FitConfig and sbi_inn.INNConfig is INNConfig
