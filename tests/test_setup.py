"""scripts/setup.sh stops with a one-line message when a prerequisite is missing.

These checks run before anything is installed, so the tests take milliseconds
and never touch the real environment (CASS_VENV points into tmp_path).
"""
import os
import stat
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"


def run_setup(tmp_path, **env):
    full = {**os.environ, "CASS_VENV": str(tmp_path / "venv"), **env}
    return subprocess.run(["bash", str(SETUP)], env=full, capture_output=True, text=True, timeout=60)


def fake_python(tmp_path, version):
    path = tmp_path / "python-fake"
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.parametrize("env, message", [
    (dict(PYTHON="no-such-python3"), "no 'no-such-python3' on PATH"),
    (dict(CXX="no-such-g++"), "no C++ compiler (no-such-g++)"),
])
def test_missing_prerequisite(tmp_path, env, message):
    result = run_setup(tmp_path, **env)
    assert result.returncode != 0
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]  # one line
    assert message in result.stderr
    assert not (tmp_path / "venv").exists()


def test_unsupported_python(tmp_path):
    result = run_setup(tmp_path, PYTHON=fake_python(tmp_path, "3.8"))
    assert result.returncode != 0 and "Python 3.8 is not supported" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
