"""Tests for the ``sbi-inn`` command line (sbi_inn.cli)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sbi_inn import hdf5_info, load_hdf5
from sbi_inn.cli import SUBCOMMANDS, _parse_config, build_parser, main


def simulate_args(path, *extra):
    return ["simulate", "inverse_kinematics", "-n", "500", "-o", str(path), "--chunk-size", "200", *extra]


def test_simulate_then_info(tmp_path, capsys):
    path = tmp_path / "out" / "ik.h5"
    assert main(simulate_args(path, "--config", "noise=0.01", "lengths=[0.5, 0.5, 1.0]", "--seed", "4",
                              "--quiet")) == 0
    assert capsys.readouterr().out == ""
    info = hdf5_info(path)
    assert info["num_rows"] == 500 and info["seed"] == 4 and info["chunk_size"] == 200
    assert info["simulator_config"]["noise"] == 0.01 and info["completed"]

    assert main(simulate_args(path, "--config", "noise=0.01", "--seed", "4")) == 0  # resumes: nothing to do
    assert "nothing to do" in capsys.readouterr().out

    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("inverse_kinematics", "500 of 500 requested, complete", "rail", "angle3", "end_y", "min", "max"):
        assert text in out

    assert main(["info", str(path), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["num_rows"] == 500 and parsed["param_stats"]["rail"]["max"] > 0


def test_simulate_matches_the_python_api_and_no_resume_overwrites(tmp_path, capsys):
    path = tmp_path / "gm.h5"
    assert main(["simulate", "gaussian_mixture", "-n", "300", "-o", str(path), "--seed", "1", "--quiet"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # a different seed is refused ...
        main(["simulate", "gaussian_mixture", "-n", "300", "-o", str(path), "--seed", "2", "--quiet"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "different seed" in err and "--no-resume" in err
    # ... unless asked to overwrite
    assert main(["simulate", "gaussian_mixture", "-n", "300", "-o", str(path), "--seed", "2", "--no-resume",
                 "--quiet"]) == 0
    assert hdf5_info(path)["seed"] == 2 and load_hdf5(path)["y"].shape == (300, 4)


@pytest.mark.parametrize("argv, message", [
    (["simulate", "no_such_simulator", "-n", "10", "-o", "{tmp}/a.h5"], "unknown simulator"),
    (["simulate", "inverse_kinematics", "-n", "0", "-o", "{tmp}/a.h5"], "-n must be"),
    (["simulate", "inverse_kinematics", "-n", "10", "-o", "{tmp}/a.h5", "--config", "noise"], "key=value"),
    (["simulate", "inverse_kinematics", "-n", "10", "-o", "{tmp}/a.h5", "--config", "nois=1"], "nois"),
    (["simulate", "inverse_kinematics", "-n", "10", "-o", "{tmp}/a.h5", "--config", "noise=-1"], "noise"),
    (["simulate", "inverse_kinematics", "-n", "10", "-o", "{tmp}/a.h5", "--chunk-size", "0"], "--chunk-size must"),
    (["simulate", "inverse_kinematics", "-n", "10", "-o", "{tmp}"], "directory"),
    (["info", "{tmp}/missing.h5"], "no such simulation file"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_argparse_errors_exit_2(capsys):
    for argv in ([], ["simulate"], ["simulate", "inverse_kinematics", "-n", "ten", "-o", "a.h5"], ["bogus"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_list_prints_registered_simulators(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "inverse_kinematics" in out and "gaussian_mixture" in out and "rail" in out


def test_parser_is_extensible():
    parser = build_parser()
    names = set(parser.subcommands.choices)
    assert {"list", "simulate", "info"} <= names and len(SUBCOMMANDS) >= 3
    parser.subcommands.add_parser("extra")  # another module can add a subcommand here
    assert parser.parse_args(["extra"]).command == "extra"
    assert _parse_config(["a=1", "b=[1, 2]", "c=text", "d=true", "e=x=y"]) == {
        "a": 1, "b": [1, 2], "c": "text", "d": True, "e": "x=y"}


def test_module_help_runs_in_a_subprocess(capsys):
    result = subprocess.run([sys.executable, "-m", "sbi_inn.cli", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert "simulate" in result.stdout and "info" in result.stdout
    for command in ("simulate", "info", "list"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0 and "usage: sbi-inn " + command in capsys.readouterr().out


def test_a_closed_pipe_ends_quietly():
    """``sbi-inn info FILE | head``: when the reader has gone, the command stops without a traceback and with exit
    status 141, as Unix tools do (the pipe's read end is closed before the command writes)."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "sbi_inn.cli", "list"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 141
