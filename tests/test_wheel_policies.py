"""The shipped policies load by name from an installed wheel and from a zip import, not only from a checkout.

They used to sit in the repository's root ``policies/`` folder, which no wheel contains; they are package data
now. The wheel is built from a copy of the source (so the build writes nothing into the working tree), without
network or build isolation, and probed in a fresh ``python -I`` whose ``sys.path`` starts with the install
(the editable install of the checkout is still on the path behind it: the probe checks which one it imported).
About 4 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from synfundus_guard.fsutil import sha256_bytes

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("internal", "public")

PROBE = """\
import json, sys
sys.path.insert(0, sys.argv[1])
from synfundus_guard.policies import load_policy, shipped
policies = {name: load_policy(name) for name in ("public", "internal")}
print(json.dumps({"module": shipped.__file__, "names": list(shipped.shipped_policy_names()),
                  "loaded": {name: [p.name, p.sha256, p.source] for name, p in policies.items()}}))
"""


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of the current source, built from a copy of pyproject.toml, README.md and synfundus_guard/."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "synfundus_guard", src / "synfundus_guard",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(root / "dist"), str(src))
    (built,) = (root / "dist").glob("synfundus_guard-*.whl")
    return built


def _probe(entry: Path, cwd: Path) -> dict:
    """Load both shipped policies by name in a fresh interpreter whose ``sys.path`` starts with ``entry``."""
    proc = subprocess.run([sys.executable, "-I", "-c", PROBE, str(entry)], capture_output=True, text=True,
                          cwd=cwd, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _expected() -> dict[str, list[str]]:
    data = ROOT / "synfundus_guard" / "policies" / "data"
    return {name: [name, sha256_bytes((data / f"{name}.yaml").read_bytes()), f"shipped:{name}"] for name in SHIPPED}


def test_wheel_holds_the_policies_as_package_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"synfundus_guard/policies/data/{n}.yaml" for n in SHIPPED} <= set(names)
    assert not [n for n in names if n.startswith("policies/")]  # nothing outside the package


def test_installed_wheel_loads_shipped_policies_by_name(wheel, tmp_path):
    target = tmp_path / "target"
    _pip("install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel))
    result = _probe(target, cwd=tmp_path)
    assert Path(result["module"]).resolve().is_relative_to(target.resolve())  # the install, not the checkout
    assert result["names"] == list(SHIPPED)
    assert result["loaded"] == _expected()


def test_zip_import_loads_shipped_policies_by_name(wheel, tmp_path):
    result = _probe(wheel, cwd=tmp_path)  # a pure-Python wheel is a zip archive Python imports from
    assert result["module"].startswith(str(wheel) + "/")
    assert result["names"] == list(SHIPPED)
    assert result["loaded"] == _expected()
