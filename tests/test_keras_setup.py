"""The README's test command (.ci/run) on a machine with only python3: it never calls `python`, and
a system-managed python3 (Debian 12: "externally-managed-environment") gets a virtualenv. Checked
with CI_RUN_DRY_RUN=1 (the commands printed, not run) and stand-in python3 / id commands."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CI_RUN = os.path.join(ROOT, ".ci", "run")

SYSTEM_PYTHON = """#!/bin/sh
# a Debian-12-like python3: system-managed, and (unless VENV_OK is set) without the venv module
case "$*" in
  *EXTERNALLY-MANAGED*) exit 0 ;;
  *"import ensurepip, venv"*) [ -n "$VENV_OK" ] && exit 0; exit 1 ;;
esac
exit 3
"""


def dry_run(tmp_path, *args, python=None, uid=None, extra_env=None):
    """Run .ci/run with CI_RUN_DRY_RUN=1 and a PATH whose python3 (and id) may be stand-ins."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if python is not None:
        (bin_dir / "python3").write_text(python)
        (bin_dir / "python3").chmod(0o755)
    else:
        (bin_dir / "python3").symlink_to(sys.executable)
    if uid is not None:
        (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
        (bin_dir / "id").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", CI_RUN_DRY_RUN="1", **(extra_env or {}))
    return subprocess.run(["bash", CI_RUN, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)


def commands(result):
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_never_calls_a_bare_python():
    with open(CI_RUN) as f:
        code = [line for line in f if not line.lstrip().startswith("#")]
    assert not any(line.lstrip().startswith("python ") or " python -m" in line for line in code)


def test_an_ordinary_python3_runs_pip_and_pytest(tmp_path):
    result = dry_run(tmp_path, "tests/test_losses.py", "-q")
    assert result.returncode == 0, result.stderr
    python = str(tmp_path / "bin" / "python3")
    assert commands(result)[-2:] == [f"{python} -m pip install -q --disable-pip-version-check -e .[test,mpi]",
                                     f"{python} -m pytest tests/test_losses.py -q"]


def test_a_system_managed_python3_gets_a_virtualenv(tmp_path):
    result = dry_run(tmp_path, python=SYSTEM_PYTHON, uid=1000, extra_env={"VENV_OK": "1"})
    assert result.returncode == 0, result.stderr
    run = commands(result)
    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")):  # else it is reused
        assert run[0] == f"{tmp_path / 'bin' / 'python3'} -m venv .venv"
    assert run[-2:] == [".venv/bin/python -m pip install -q --disable-pip-version-check -e .[test,mpi]",
                        ".venv/bin/python -m pytest"]


@pytest.mark.skipif(os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")), reason="a .venv exists")
def test_without_venv_as_root_it_installs_python3_venv(tmp_path):
    if shutil.which("apt-get") is None:
        pytest.skip("no apt-get")
    result = dry_run(tmp_path, python=SYSTEM_PYTHON, uid=0)
    assert result.returncode == 0, result.stderr
    run = commands(result)
    install = next(c for c in run if "apt-get install" in c)
    assert install.endswith("python3-venv") and run.index(install) < run.index(f"{tmp_path / 'bin' / 'python3'} "
                                                                               f"-m venv .venv")


@pytest.mark.skipif(os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")), reason="a .venv exists")
def test_without_venv_and_not_root_it_says_what_to_install(tmp_path):
    result = dry_run(tmp_path, python=SYSTEM_PYTHON, uid=1000)
    assert result.returncode == 1 and commands(result) == []
    assert "apt install python3-venv" in result.stderr
