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


BUILD_MMCV = SETUP.parent / "build_mmcv.sh"


def fake_cuda_python(tmp_path):
    """A 'python' on which mmcv is missing and torch sees a GPU; 'pip install' records its environment."""
    log = tmp_path / "pip.log"
    path = tmp_path / "python-cuda"
    path.write_text(f"""#!/bin/sh
case "$*" in
  *"import mmcv.ops"*) exit 1 ;;
  *"cuda.is_available"*) echo 1 ;;
  *"pip install"*) echo "$* CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-unset}} FORCE_CUDA=$FORCE_CUDA \
MMCV_WITH_OPS=$MMCV_WITH_OPS" >> {log} ;;
esac
""")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path), log


@pytest.mark.parametrize("mmcv_cuda, visible, force", [("0", "", "0"), ("1", "unset", "1")])
def test_mmcv_cuda_0_hides_the_gpus_from_the_build(tmp_path, mmcv_cuda, visible, force):
    python, log = fake_cuda_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    result = subprocess.run(["bash", str(BUILD_MMCV), python], env={**env, "MMCV_CUDA": mmcv_cuda},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    build = [line for line in log.read_text().splitlines() if "mmcv==2.1.0" in line]
    assert len(build) == 1 and "--no-build-isolation" in build[0]
    assert f"CUDA_VISIBLE_DEVICES={visible} FORCE_CUDA={force} MMCV_WITH_OPS=1" in build[0]


def test_unknown_option_is_a_usage_error():
    bad = subprocess.run(["bash", str(SETUP), "--fast"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown option '--fast'" in bad.stderr
