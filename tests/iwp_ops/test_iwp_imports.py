"""iwp_ops stays a pure-PyTorch library: importing it pulls in neither Ray nor transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_import_pulls_in_neither_ray_nor_transformers():
    code = "import sys, iwp_ops; print(sorted(m for m in ('ray', 'transformers') if m in sys.modules))"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert done.stdout.strip() == "[]"
