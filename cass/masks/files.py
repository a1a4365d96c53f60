"""Masks read from files named after the image: CorrCLIP's .npz archives or user-made label maps.

A folder holds one file per image, ``<image stem>.<ext>``:

* ``.npz``: CorrCLIP's pre-generated archives (``np.savez_compressed`` with
  key ``instance_mask``, the release's ``data/region_masks/<dataset>``; also
  what ``scripts/make_masks.py`` writes);
* ``.png``: a single-channel 8- or 16-bit label image (grey ``L``, palette
  ``P``: its indices, 16-bit ``I;16``, 32-bit ``I``, 1-bit);
* ``.npy``: a 2-D integer array.

Each is an instance label map whose smallest value marks the unsegmented
pixels; it must have the image's size. Masks of generators that need
packages not installed here (EntitySeg/CropFormer: detectron2) come this way.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .labels import NPZ_KEY, MaskError, as_label_map, check_image

SUFFIXES = (".npz", ".png", ".npy")
PNG_MODES = ("1", "L", "P", "I;16", "I;16B", "I;16L", "I")


def _read_npz(file: Path, key: str) -> np.ndarray:
    try:
        with np.load(file, allow_pickle=False) as archive:
            if key not in archive.files:
                raise MaskError(f"{file}: no {key!r} array in the archive (it holds "
                                f"{', '.join(map(repr, archive.files)) or 'nothing'})")
            return archive[key]
    except MaskError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise MaskError(f"{file}: not a readable .npz archive ({type(err).__name__})") from None


def _read_npy(file: Path) -> np.ndarray:
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise MaskError(f"{file}: not a readable .npy array ({type(err).__name__})") from None


def _read_png(file: Path) -> np.ndarray:
    try:
        with Image.open(file) as image:
            image.load()
            mode = image.mode
            if mode not in PNG_MODES:
                raise MaskError(f"{file}: a label image must be single-channel (8- or 16-bit grey or palette), "
                                f"found mode {mode}")
            return np.array(image)
    except MaskError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise MaskError(f"{file}: not a readable image ({type(err).__name__})") from None


def read_mask_file(path: str | os.PathLike, shape: tuple[int, int] | None = None,
                   key: str = NPZ_KEY) -> np.ndarray:
    """An instance label map from a ``.npz`` (array ``key``), ``.png`` or ``.npy`` file.

    Args:
        path: the file.
        shape: the image's (H, W), which the map must have (None: not checked).
        key: the array's name in a ``.npz`` archive.

    Returns:
        (H, W) int32 labels.

    Raises:
        MaskError: one line naming the file: missing, unreadable, no such key,
            not a 2-D integer map, or not of the image's size.
    """
    file = Path(path)
    if not file.is_file():
        raise MaskError(f"mask file not found: {file}")
    suffix = file.suffix.lower()
    if suffix == ".npz":
        array = _read_npz(file, key)
    elif suffix == ".npy":
        array = _read_npy(file)
    elif suffix == ".png":
        array = _read_png(file)
    else:
        raise MaskError(f"{file}: unsupported mask file type {suffix!r} (use {', '.join(SUFFIXES)})")
    return as_label_map(array, shape, str(file))


@dataclass
class FileMasks:
    """The ``files`` generator: ``folder/<image stem>.npz`` (or ``.png``, ``.npy``), as CorrCLIP's
    ``instance_mask_path``.

    Args:
        folder: where the files are.
        suffix: ``'.npz'``, ``'.png'`` or ``'.npy'``; ``'auto'`` (default)
            takes the first of those that exists for the image.
        key: the array's name in the ``.npz`` archives (CorrCLIP's ``instance_mask``).
    """

    folder: str
    suffix: str = "auto"
    key: str = NPZ_KEY

    def __post_init__(self) -> None:
        from ..config import ConfigError

        if self.suffix != "auto" and self.suffix not in SUFFIXES:
            raise ConfigError(f"mask generator 'files': suffix {self.suffix!r} is not one of auto, "
                              f"{', '.join(SUFFIXES)}")
        if not Path(self.folder).expanduser().is_dir():
            raise MaskError(f"mask folder not found: {Path(self.folder).expanduser()}")

    def settings_key(self) -> str:
        folder = str(Path(self.folder).expanduser().resolve())
        return "files " + json.dumps(dict(folder=folder, suffix=self.suffix, key=self.key), sort_keys=True)

    def file_for(self, path: str | os.PathLike) -> Path:
        """The mask file of the image at ``path`` (the first existing one with ``suffix='auto'``)."""
        folder, stem = Path(self.folder).expanduser(), Path(path).stem
        suffixes = SUFFIXES if self.suffix == "auto" else (self.suffix,)
        for suffix in suffixes:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
        if len(suffixes) == 1:
            raise MaskError(f"mask file not found: {folder / (stem + suffixes[0])} (for image {path})")
        raise MaskError(f"mask file not found for image {path}: no {stem}{{{','.join(suffixes)}}} in {folder}")

    def __call__(self, image: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
        shape = check_image(image)
        if path is None:
            raise MaskError("mask generator 'files' reads <image stem>.npz/.png/.npy files: it needs the image's "
                            "path, and was given an array alone")
        return read_mask_file(self.file_for(path), shape, self.key)
