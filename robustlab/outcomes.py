"""Per-image outcomes of a cell: which images were correct (clean or corrupted) or robust (attacked), the class
predicted (of the adversarial image under attack; -1 for non-finite logits) and, where Algorithm 1 chose one per
batch or image, the lambda each image was evaluated at. One compressed .npz per cell under RUN/outcomes/, named
by the cell's identity, written and synced before the cell's row (a row never exists without its outcomes).

Each file also holds the cell's identity and the fingerprint of the image set it was evaluated on (the clean
images and labels at the indices used), so that two cells are paired only when they saw the same images, and a
file moved to another cell or run is refused."""
from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from robustlab.errors import RobustlabError
from robustlab.files import write_below

OUTCOMES_DIR = "outcomes"
OUTCOMES_FORMAT = 1
_FIELDS = {"format", "key", "image_set", "n", "index", "ok", "pred", "lambdas", "attacked"}


@dataclass(frozen=True)
class Outcomes:
    """Per image, in the dataset's image order: its index in the dataset, ok (correct or robust), the predicted
    class, for adaptive lambda the lambda it was evaluated at (None otherwise) and, in the worst-case mode, whether
    it was attacked (None: every image was; one not attacked was broken before and is not ok, prediction -1)."""
    index: np.ndarray
    ok: np.ndarray
    pred: np.ndarray
    lambdas: np.ndarray | None = None
    attacked: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.index)
        if any(a is not None and len(a) != n for a in (self.ok, self.pred, self.lambdas, self.attacked)):
            raise ValueError("outcome arrays of different lengths")

    @property
    def n(self) -> int:
        return len(self.index)

    @property
    def correct(self) -> int:
        return int(self.ok.sum())

    @staticmethod
    def joined(parts: Sequence[Outcomes]) -> Outcomes:
        """The parts of one cell (batches, or torchrun ranks' shards) as one, in image order."""
        parts = [p for p in parts if p.n] or list(parts[:1])  # a rank without batches has nothing to say
        index = np.concatenate([p.index for p in parts]) if parts else np.zeros(0, np.int64)
        order = np.argsort(index, kind="stable")
        lambdas = attacked = None
        if parts and all(p.lambdas is not None for p in parts):
            lambdas = np.concatenate([p.lambdas for p in parts])[order]
        if any(p.attacked is not None for p in parts):
            attacked = np.concatenate([np.ones(p.n, bool) if p.attacked is None else p.attacked for p in parts])[order]
        return Outcomes(index=index[order].astype(np.int64),
                        ok=np.concatenate([p.ok for p in parts])[order] if parts else np.zeros(0, bool),
                        pred=np.concatenate([p.pred for p in parts])[order] if parts else np.zeros(0, np.int64),
                        lambdas=lambdas, attacked=attacked)

    def to_bytes(self, key: Sequence[str], image_set: str) -> bytes:
        """The npz file: ok as packed bits, the indices as a range where they are one, predictions in the
        smallest integer type that holds them."""
        contiguous = self.n > 0 and bool(np.array_equal(self.index, np.arange(self.index[0], self.index[0] + self.n)))
        index = np.array([self.index[0], self.index[0] + self.n, -1], np.int64) if contiguous else self.index
        high = int(self.pred.max()) if self.n else 0
        pred = (self.pred + 1).astype(np.uint8 if high < 255 else np.uint16 if high < 65535 else np.int64)
        arrays = {"format": np.array(OUTCOMES_FORMAT), "key": np.array(_joined(key)),
                  "image_set": np.array(image_set), "n": np.array(self.n), "index": index,
                  "ok": np.packbits(self.ok.astype(bool)), "pred": pred}
        if self.lambdas is not None:
            arrays["lambdas"] = self.lambdas.astype(np.float32)
        if self.attacked is not None:
            arrays["attacked"] = np.packbits(self.attacked.astype(bool))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, allow_pickle=False, **arrays)  # no object arrays: the reader refuses them
        return buffer.getvalue()


def outcomes_name(key: Sequence[str]) -> str:
    """The file of a cell's outcomes, relative to the run directory (the `outcomes` column)."""
    digest = hashlib.sha256(_joined(key).encode()).hexdigest()[:24]
    return f"{OUTCOMES_DIR}/{digest}.npz"


def _joined(key: Sequence[str]) -> str:
    """A cell's identity as one text, numbers spelled one way (a row as written says 0, read back 0.0)."""
    return "\x1f".join(_canonical(str(v)) for v in key)


def _canonical(text: str) -> str:
    try:
        return repr(float(text))
    except ValueError:
        return text


def write_outcomes(run_dir: Path, key: Sequence[str], image_set: str, outcomes: Outcomes) -> str:
    """Write (atomically, synced, never through a link below the run directory) and return the file's name."""
    name = outcomes_name(key)
    write_below(run_dir, run_dir / name, outcomes.to_bytes(key, image_set))
    return name


def read_outcomes(run_dir: Path, name: str, *, key: Sequence[str], image_set: str, n: int, correct: int) -> Outcomes:
    """A row's outcomes, refused in one line naming the file when missing, not a regular file inside the run
    directory, unreadable, of another cell or image set, or of the wrong length."""
    path = run_dir / name
    fix = "re-run that cell (remove its row from results.csv and resume) or restore the file"
    if Path(name).is_absolute() or ".." in Path(name).parts or name != outcomes_name(key):
        raise RobustlabError(f"{run_dir / 'results.csv'}: the outcomes column {name!r} does not name this cell's "
                             f"file ({outcomes_name(key)}); {fix}")
    if path.is_symlink() or not path.is_file():
        raise RobustlabError(f"{path} (a cell's per-image outcomes) is missing or not a regular file; {fix}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if set(npz.files) - _FIELDS or not {"format", "key", "image_set", "n", "index", "ok", "pred"} <= \
                    set(npz.files):
                raise ValueError(f"fields {sorted(npz.files)}")
            data = {f: npz[f] for f in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise RobustlabError(f"{path} is not a robustlab outcomes file ({str(e).splitlines()[0][:120]}); {fix}") \
            from None
    if int(data["format"]) != OUTCOMES_FORMAT or str(data["key"]) != _joined(key):
        raise RobustlabError(f"{path} holds the outcomes of another cell or format; {fix}")
    if str(data["image_set"]) != image_set:
        raise RobustlabError(f"{path} was evaluated on another image set ({str(data['image_set'])[:16]}, the row "
                             f"says {image_set[:16]}); {fix}")
    index = data["index"].astype(np.int64)
    if len(index) == 3 and index[2] == -1:
        index = np.arange(index[0], index[1], dtype=np.int64)
    ok = np.unpackbits(data["ok"].astype(np.uint8), count=n).astype(bool) if len(data["ok"]) == (n + 7) // 8 \
        else None
    lambdas = data.get("lambdas")
    attacked = data.get("attacked")
    if attacked is not None:
        attacked = np.unpackbits(attacked.astype(np.uint8), count=n).astype(bool) \
            if len(attacked) == (n + 7) // 8 else None
    if int(data["n"]) != n or len(index) != n or ok is None or len(data["pred"]) != n or \
            (lambdas is not None and len(lambdas) != n) or ("attacked" in data and attacked is None):
        raise RobustlabError(f"{path} does not hold {n} images' outcomes (the row's n); {fix}")
    if int(ok.sum()) != correct:
        raise RobustlabError(f"{path} counts {int(ok.sum())} correct images, its row {correct}; {fix}")
    if attacked is not None and (ok & ~attacked).any():
        raise RobustlabError(f"{path} counts an image it did not attack as robust; {fix}")
    return Outcomes(index=index, ok=ok, pred=data["pred"].astype(np.int64) - 1,
                    lambdas=None if lambdas is None else lambdas.astype(np.float32), attacked=attacked)
