"""What the benchmark scripts share: the machine description written into every JSON, single-threaded workers in
fresh processes, a frozen snapshot of the code under test, peak-memory readings, table formatting and writing the
results file.

Import it as ``from _common import ...``: a script's own folder is first on ``sys.path`` when it runs, and the
snapshot a script freezes holds a copy of this file next to the script.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` where that is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict:
    """CPU, platform, versions of the numerical stack (and of ``sbi``, ``None`` when absent), whether CUDA is there,
    and the load average now (the machines are shared: a reader needs it to judge a wall time)."""
    import sklearn

    try:
        import sbi
        sbi_version = sbi.__version__
    except ImportError:
        sbi_version = None
    return {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "sbi": sbi_version,
            "numpy": np.__version__, "sklearn": sklearn.__version__, "gpu": torch.cuda.is_available(),
            "load_average": os.getloadavg()}


def code_digest(root: Path, patterns: Sequence[str] = ("sbi_inn/**/*.py", "simulators/**/*.py")) -> str:
    """SHA-256 (first 12 hex digits) of the files under ``root`` matching ``patterns`` (paths and contents)."""
    h = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in root.glob(pattern)})
    for path in files:
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def single_thread() -> None:
    """One intra-op and one inter-op torch thread (workers are timed one at a time on a shared machine)."""
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def rerun_on_snapshot(script: Path, env_var: str, argv: Sequence[str], *, packages=("sbi_inn", "simulators"),
                      benchmark_files: Sequence[str] = ()) -> int:
    """Copy ``packages`` (and ``benchmarks/<benchmark_files>``, this file included) from the repository to a temporary
    folder, run ``script`` again with ``env_var`` naming that folder, and return its exit code.

    Other people may edit the working tree during a long run; the rerun imports the frozen copy (the script puts
    ``$env_var`` first on ``sys.path``) and writes its results under the repository as usual.
    """
    snap = Path(tempfile.mkdtemp(prefix=f"{script.stem}_src_"))
    try:
        for pkg in packages:
            shutil.copytree(ROOT / pkg, snap / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if benchmark_files:
            (snap / "benchmarks").mkdir()
            for f in {*benchmark_files, Path(__file__).name}:
                shutil.copy2(ROOT / "benchmarks" / f, snap / "benchmarks" / f)
        return subprocess.run([sys.executable, str(script.resolve()), *argv],
                              env={**os.environ, env_var: str(snap)}).returncode
    finally:
        shutil.rmtree(snap, ignore_errors=True)


def run_worker(script: Path, spec: dict, spec_path: Path, timeout: float, *, src: Path,
               env: dict | None = None) -> dict:
    """Run ``script --worker SPEC`` in a fresh single-threaded process importing ``src`` first; return the JSON it
    wrote to ``spec_path``'s ``.out.json`` sibling, with ``worker_wall_seconds``, or ``{"error": ...}``."""
    out_path = spec_path.with_name(spec_path.stem + ".out.json")
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result": str(out_path)}))
    env = {**os.environ, **THREAD_ENV, **(env or {}),
           "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script), "--worker", str(spec_path)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not out_path.is_file():
        return {"error": f"worker failed (rc {proc.returncode}): {proc.stderr.strip()[-2000:]}"}
    res = json.loads(out_path.read_text())
    res["worker_wall_seconds"] = time.perf_counter() - t0
    return res


def write_json(path: Path, result: dict, prefix: str = "") -> None:
    """Write ``result`` to ``path`` as indented JSON (creating its folder), then print ``<prefix>wrote <path>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{prefix}wrote {path}")


def fmt(v, spec: str) -> str:
    """``format(v, spec)``, or a dash for a missing or non-finite number."""
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


class PeakRSS:
    """Peak resident set size of this process during a phase, in MiB (``VmHWM`` reset per phase where Linux allows;
    otherwise ``getrusage``'s running maximum, which cannot be reset)."""

    def __init__(self):
        self.method = "proc_vmhwm_reset"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "getrusage_maxrss"

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status") as f:
            return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) / 1024

    def current(self) -> float:
        try:
            return self._status("VmRSS")
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def peak(self) -> float:
        if self.method == "getrusage_maxrss":
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self._status("VmHWM")

    def start(self) -> float:
        """Reset the high-water mark (where possible); return the RSS now."""
        if self.method == "proc_vmhwm_reset":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return self.current()
        return self.peak()  # getrusage cannot be reset: deltas are against the running maximum
