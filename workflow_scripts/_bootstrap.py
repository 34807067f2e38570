"""Make the ``mammoclip`` package beside this folder importable in jobs where it is not installed
(e.g. ``--sdm conda`` environments built from envs/mammoclip.yaml)."""

import sys
from pathlib import Path

_repository = str(Path(__file__).resolve().parent.parent)
if _repository not in sys.path:
    sys.path.insert(0, _repository)
