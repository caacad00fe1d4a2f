"""provision.py checks every hospital name (and IP) before it writes any key or certificate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROVISION = Path(__file__).resolve().parents[2] / "scripts" / "deploy" / "provision.py"


@pytest.mark.parametrize("args, message", [
    (["--hospitals", "hospital_a,../../etc/x"], "hospital name(s) '../../etc/x': use letters"),
    (["--hospitals", "hospital_a,hospital_a"], "hospital name(s) given twice: hospital_a"),
    (["--ip", "10.0.0.300"], "does not appear to be an IPv4 or IPv6 address"),
    (["node-key", "--name", ".hidden"], "hospital name(s) '.hidden': use letters"),
])
def test_bad_input_writes_nothing(tmp_path, args, message):
    out = tmp_path / "keys"
    argv = ["node-key", "--out", str(out), *args[1:]] if args[0] == "node-key" else ["--out", str(out), *args]
    res = subprocess.run([sys.executable, str(PROVISION), *argv], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
