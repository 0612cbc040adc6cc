"""What make_manifest.py and build_ms.py both do to ship a DR checkpoint: drop the training state,
replace the list of training stores (local paths) by a note, save it, and describe licences."""

import hashlib
from collections import Counter
from pathlib import Path

import torch


def ship_checkpoint(src: Path, dest: Path, stores_note: str) -> tuple[dict, str]:
    """``src`` (a best.pt) -> ``dest``, without optimizer / rng / aux state and with the training
    stores replaced by ``stores_note``; returns the checkpoint dict and the file's SHA-256."""
    ck = torch.load(src, map_location="cpu", weights_only=True)
    for k in ("optimizer", "rng", "aux"):      # training state: not needed to run the model
        ck.pop(k, None)
    ck["config"]["train"]["train_stores"] = [stores_note]
    torch.save(ck, dest)
    return ck, hashlib.sha256(dest.read_bytes()).hexdigest()


def licences(rows: list[dict]) -> str:
    """"CC-BY x3, MIT x2" over manifest.csv rows."""
    return ", ".join(f"{k} x{v}" for k, v in sorted(Counter(r["licence"] for r in rows).items()))
