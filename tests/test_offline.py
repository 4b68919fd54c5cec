"""Nothing reaches for the network, and importing the package or its CLI does not import torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

NO_NETWORK = """
import socket

def _refuse(*args, **kwargs):
    raise RuntimeError("NETWORK ACCESS ATTEMPTED")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_import_and_help_do_not_import_torch() -> None:
    proc = _python(
        """
        import sys
        import her2score
        import her2score.cli.main
        import her2score.slide
        import her2score.stain
        from her2score.cli.main import app
        from typer.testing import CliRunner
        result = CliRunner().invoke(app, ["--help"])
        assert result.exit_code == 0, result.output
        heavy = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
        print("HEAVY", heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


def test_info_and_doctor_work_without_network(tmp_path: Path) -> None:
    image = tmp_path / "patch.png"
    rng = np.random.default_rng(0)
    rgb = np.full((512, 512, 3), 240, np.uint8)
    rgb[128:384, 128:384] = np.clip(rng.normal((170, 120, 150), 12, (256, 256, 3)), 0, 255)
    Image.fromarray(rgb).save(image)
    proc = _python(
        NO_NETWORK
        + f"""
import os, sys
os.environ["HER2SCORE_CACHE"] = {str(tmp_path / "cache")!r}
from her2score.cli.main import main
for args in (["info", {str(image)!r}, "--mpp", "0.5", "--json"], ["doctor", "--json"]):
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), (args, exc.code)
    print("---")
"""
    )
    assert "NETWORK ACCESS ATTEMPTED" not in proc.stderr + proc.stdout
    assert proc.returncode == 0, proc.stderr
    info_json = proc.stdout.split("---")[0]
    assert 0.15 < json.loads(info_json)["tissue_fraction"] < 0.4
