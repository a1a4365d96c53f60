"""What the comparisons with the authors' released code share.

``scripts/compare_released.py`` (CASS) and ``scripts/compare_trident.py``
(Trident) run a patched copy of a released checkout on scikit-image's photos
and compare its class scores and labels with this code's.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np


class ReleasedCodeError(RuntimeError):
    """The released checkout is missing, changed, or failed to run."""


def apply_patches(source: Path, target: Path, patches: Mapping[str, Sequence[tuple[str, str]]]) -> None:
    """Replace, in the copy ``target`` of ``source``, each ``(old, new)`` literal of each file of ``patches``;
    a pattern that is not found means the checkout is not the one the script knows (one-line error)."""
    for name, replacements in patches.items():
        path = target / name
        text = path.read_text()
        for old, new in replacements:
            if old not in text:
                raise ReleasedCodeError(f"{source / name}: expected {old!r}; this released version is not supported")
            text = text.replace(old, new)
        path.write_text(text)


def released_env(work: Path, threads: int, **extra: str) -> dict:
    """The environment of a subprocess running released code: torch hub's cache in ``work``, no GPU,
    ``threads`` CPU threads, and ``extra`` variables."""
    return dict(os.environ, TORCH_HOME=str(work / "torch_home"), CUDA_VISIBLE_DEVICES="",
                OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **extra)


def run_release_process(args: list[str], cwd: Path, env: dict, timeout: float,
                        log: Callable[[str], None] | None = None, tail: int = 20) -> None:
    """Run released code as a subprocess; its ``released:`` lines go to ``log``. Running past ``timeout``
    seconds or failing is a :class:`ReleasedCodeError` (with the last ``tail`` lines of its stderr)."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ReleasedCodeError(f"the released code ran past {timeout} s") from None
    for line in out.splitlines():
        if line.startswith("released:") and log:
            log(line)
    if proc.returncode != 0:
        lines = "\n".join(err.strip().splitlines()[-tail:])
        raise ReleasedCodeError(f"the released code failed:\n{lines}")


def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo shipped with scikit-image."""
    from skimage import data
    image = getattr(data, name)()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"scikit-image's {name!r} is not an RGB photo")
    return image


def agreement(ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Share of pixels with the same label, the largest class-probability difference, and the share of
    pixels where some class's probability differs by more than 1e-3 (with SAM refinement a pixel where a
    mask logit is within rounding of 0 can fall inside the mask on one side only)."""
    if ours["probs"].shape != theirs["probs"].shape:
        raise ValueError(f"probability maps differ in shape: {ours['probs'].shape} vs {theirs['probs'].shape}")
    if ours["labels"].shape != theirs["labels"].shape:
        raise ValueError(f"label maps differ in shape: {ours['labels'].shape} vs {theirs['labels'].shape}")
    diff = np.abs(ours["probs"].astype(np.float64) - theirs["probs"])
    return dict(label_agreement=float((ours["labels"] == theirs["labels"]).mean()), max_prob_diff=float(diff.max()),
                prob_diff_share=float((diff.max(axis=0) > 1e-3).mean()))


def run_comparison(script: str, compute: Callable[[Path], list[dict]], format_table: Callable[[list[dict]], str],
                   keep: Path | None = None, json_path: Path | None = None,
                   argv: Sequence[str] | None = None) -> int:
    """A comparison script's ``main``: ``compute(work)`` in ``keep`` (else a temporary folder), the
    table printed, the rows and the command written to ``json_path``; a failure is one line on
    stderr and exit status 1."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = keep or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            rows = compute(work)
    except (ReleasedCodeError, ValueError, OSError) as err:
        print(f"{script}: {err}", file=sys.stderr)
        return 1
    print(format_table(rows))
    if json_path:
        command = f"python scripts/{script} " + " ".join(sys.argv[1:] if argv is None else argv)
        json_path.write_text(json.dumps(dict(command=command, rows=rows), indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------- the released copies
DINO_HUB_DIR = "facebookresearch_dino_main"  # torch.hub's cache folder of 'facebookresearch/dino:main'


def _git(source: Path, *args: str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(["git", "--git-dir", str(source), *args], input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise ReleasedCodeError(f"{source}: git {' '.join(args[:2])} failed: {proc.stderr.decode().strip()}")
    return proc.stdout


def _is_git_dir(source: Path) -> bool:
    return (source / "HEAD").is_file() and (source / "objects").is_dir()


def export_folder(source: Path, target: Path, folder: str, marker: str) -> str:
    """Copy ``source/folder`` of a checkout, or export ``folder`` of a git directory's ``HEAD``
    (the files whose blobs it holds), to ``target`` (replaced); ``marker`` must be in it.
    Returns the commit exported ('' when unknown)."""
    source = Path(source)
    if target.exists():  # a kept work folder of an earlier run
        shutil.rmtree(target)
    inner = source / folder if folder else source
    if (inner / marker).is_file():
        shutil.copytree(inner, target, ignore=shutil.ignore_patterns(".git"))
        proc = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""
    gitdir = source / ".git" if (source / ".git").is_dir() else source
    if not _is_git_dir(gitdir):
        raise ReleasedCodeError(f"{source}: neither a checkout with {folder + '/' if folder else ''}{marker} "
                                "nor a git directory")
    commit = _git(gitdir, "rev-parse", "HEAD").decode().strip()
    listing = _git(gitdir, "ls-tree", "-r", "-z", "HEAD", *([folder] if folder else []))
    entries = [line.split(b"\t", 1) for line in listing.split(b"\0") if line]
    entries = [e for e in entries if e[0].split()[1] == b"blob"]  # no submodules
    if not entries:
        raise ReleasedCodeError(f"{source}: its HEAD has no {folder or 'files'}")
    present = _git(gitdir, "cat-file", "--batch-check",
                   stdin=b"".join(e[0].split()[2] + b"\n" for e in entries)).splitlines()
    paths = [path.decode() for (_, path), check in zip(entries, present) if not check.endswith(b" missing")]
    archive = _git(gitdir, "archive", "--format=tar", "HEAD", "--", *paths)
    staging = target.parent / (target.name + ".export")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(staging)], input=archive, check=True)
    shutil.move(str(staging / folder) if folder else str(staging), str(target))
    shutil.rmtree(staging, ignore_errors=True)
    if not (target / marker).is_file():
        raise ReleasedCodeError(f"{source}: its HEAD has no {folder + '/' if folder else ''}{marker}")
    return commit


def check_expected(source: Path, copy: Path, expected: Mapping[str, Sequence[str]], folder: str = "") -> None:
    """Every pattern of ``expected`` (file -> texts) is in ``copy`` (before patching); a missing one means
    the checkout is not the one the comparison knows (one-line :class:`ReleasedCodeError`)."""
    prefix = f"{folder}/" if folder else ""
    for name, patterns in expected.items():
        path = copy / name
        text = path.read_text() if path.is_file() else ""
        for pattern in patterns:
            if pattern not in text:
                raise ReleasedCodeError(f"{source}: {prefix}{name}: expected {pattern!r}; this released "
                                        "version is not supported")


def link_or_copy(file: Path, target: Path) -> None:
    file = Path(file).resolve()
    if target.is_symlink() or target.exists():
        if target.resolve() == file:
            return
        target.unlink()
    try:
        target.symlink_to(file)
    except OSError:
        shutil.copyfile(file, target)


def prepare_dino_hub(dino_repo: Path, torch_home: Path, weights: Path, checkpoint: str) -> None:
    """torch.hub's cache as ``torch.hub.load('facebookresearch/dino:main', ...)`` leaves it: the DINO code
    (a checkout or a git directory) and ``weights`` as its downloaded ``checkpoint`` file (linked)."""
    hub = Path(torch_home) / "hub"
    export_folder(Path(dino_repo), hub / DINO_HUB_DIR, "", "hubconf.py")
    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    link_or_copy(Path(weights), hub / "checkpoints" / checkpoint)
