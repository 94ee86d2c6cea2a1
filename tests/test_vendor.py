"""The chat page's committed libraries (relay/frontend/vendor/) are what frontend/ pins."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLING = ROOT / "frontend"
VENDOR = ROOT / "relay" / "frontend" / "vendor"


def vendored_libraries() -> dict[str, tuple[str, str, list[str]]]:
    """library -> (version, licence, files), from the table in vendor/README.md."""
    libraries = {}
    for line in (VENDOR / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "library":
            name, version, licence, files = cells
            libraries[name] = (version, licence, files.split(", "))
    return libraries


def test_the_vendored_versions_and_licences_are_the_pinned_and_locked_ones() -> None:
    pins = json.loads((TOOLING / "package.json").read_text())["dependencies"]
    locked = json.loads((TOOLING / "package-lock.json").read_text())["packages"]
    libraries = vendored_libraries()
    assert {name: version for name, (version, _, _) in libraries.items()} == pins
    for name, (version, licence, _) in libraries.items():
        assert (version, licence) == (
            locked[f"node_modules/{name}"]["version"], locked[f"node_modules/{name}"]["license"])


def test_every_vendored_file_is_listed_with_its_library_and_licence() -> None:
    libraries = vendored_libraries()
    listed = {file for _, _, files in libraries.values() for file in files}
    assert {path.name for path in VENDOR.iterdir()} == listed | {"README.md"}
    for name, (_, _, files) in libraries.items():
        assert any(file.startswith("LICENSE") for file in files), f"{name} has no licence"


def test_the_vendored_files_are_what_vendor_mjs_copies_from_node_modules(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (TOOLING / "node_modules").is_dir():
        pytest.skip("needs node and frontend/node_modules (make frontend)")
    fresh = tmp_path / "vendor"
    subprocess.run([node, str(TOOLING / "vendor.mjs"), str(fresh)], check=True,
                   capture_output=True, timeout=30)
    assert sorted(path.name for path in fresh.iterdir()) == sorted(
        path.name for path in VENDOR.iterdir())
    changed = [path.name for path in fresh.iterdir()
               if path.read_bytes() != (VENDOR / path.name).read_bytes()]
    assert not changed, f"run `npm run vendor` in frontend/ and commit: {changed} differ"
