"""The RocketMQ test server stays a test tool: nothing installed can import it."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

SERVER = Path(__file__).resolve().parent / "rocketmq_test_server.py"


def test_test_server_is_not_importable_from_the_installed_packages(tmp_path: Path) -> None:
    # A fresh interpreter outside the checkout sees only what is installed.
    code = (
        "import importlib.util, json, sys\n"
        "names = ['rocketmq_test_server', 'tests.rocketmq.rocketmq_test_server',\n"
        "         'mqkit_rocketmq.rocketmq_test_server', 'mqkit.rocketmq_test_server']\n"
        "found = {}\n"
        "for n in names:\n"
        "    try:\n"
        "        found[n] = importlib.util.find_spec(n) is not None\n"
        "    except ModuleNotFoundError:\n"
        "        found[n] = False\n"
        "print(json.dumps(found))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert json.loads(done.stdout) == dict.fromkeys(json.loads(done.stdout), False)


def test_no_installed_file_is_the_test_server() -> None:
    package = Path(str(importlib.import_module("mqkit_rocketmq").__file__)).resolve().parent
    shipped = [p.name for p in package.rglob("*.py")]
    assert "rocketmq_test_server.py" not in shipped
    for path in package.rglob("*.py"):
        assert "rocketmq_test_server" not in path.read_text(), path
    for dist in ("mqkit-rocketmq", "mqkit"):
        files = metadata.files(dist) or []
        assert not [f for f in files if "rocketmq_test_server" in str(f)], dist
    assert SERVER.is_file()  # it lives in the checkout's tests/ only
