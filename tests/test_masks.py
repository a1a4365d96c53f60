"""cass.masks: the registry, the file-based and SAM2 / Mask2Former generators, the disk cache,
the stacking of SAM2's masks, and scripts/make_masks.py."""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cass.config import ConfigError
from cass.masks import (MASK_GENERATORS, CachedMasks, MaskError, build_mask_generator, read_mask_file,
                        register_mask_generator, write_npz)
from cass.masks.labels import _paint_by_area
from cass.weights import WeightsError
from conftest import REPO, load_script, one_line_error
from fake_datasets import NAMES, voc_layout


def astronaut(height: int = 80, width: int = 104) -> np.ndarray:
    """scikit-image's astronaut downscaled: a real photo, (height, width, 3) uint8 RGB."""
    from skimage import data

    return np.array(Image.fromarray(data.astronaut()).resize((width, height), Image.BILINEAR))


def release_stacking(records: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """CorrCLIP's ``generate_mask`` (SAM2 branch), as written there."""
    instance_mask = np.zeros(shape, dtype=int)
    if len(records) != 0:
        sorted_anns = sorted(records, key=(lambda x: x["area"]))
        instance_id = 1
        for ann in sorted_anns:
            instance_mask[ann["segmentation"]] = instance_id
            instance_id += 1
    return instance_mask


class Counting:
    """A mask generator that counts its calls; ``offset`` is its one setting."""

    def __init__(self, offset: int = 0):
        self.offset = offset
        self.calls = 0

    def settings_key(self) -> str:
        return f"counting offset={self.offset}"

    def __call__(self, image, path=None):
        self.calls += 1
        return (image[..., 0] // 64).astype(np.int32) + self.offset


# --- registry ----------------------------------------------------------------------------------

def test_unknown_generator_is_one_line_listing_the_names():
    one_line_error(lambda: build_mask_generator("sam3"), "'sam3'", "sam2", "files", "mask2former",
                   error=ConfigError)


def test_unknown_or_missing_setting_is_one_line(tmp_path):
    one_line_error(lambda: build_mask_generator("files", folder=str(tmp_path), treshold=1),
                   "'files'", "'treshold'", "folder, suffix, key", error=ConfigError)
    one_line_error(lambda: build_mask_generator("sam2", modle="sam2_hiera_tiny"), "'modle'", "points_per_side",
                   error=ConfigError)
    one_line_error(lambda: build_mask_generator("files"), "'files'", "'folder'", error=ConfigError)
    one_line_error(lambda: build_mask_generator("sam2", model="sam2_hiera_huge"), "sam2_hiera_huge",
                   "sam2_hiera_large, sam2_hiera_base_plus, sam2_hiera_small, sam2_hiera_tiny", error=ConfigError)
    one_line_error(lambda: build_mask_generator("sam2", device="cpu", precision="float16"), "float16", "CUDA",
                   error=ConfigError)


def test_register_a_generator(monkeypatch):
    monkeypatch.setattr("cass.masks.registry.MASK_GENERATORS", dict(MASK_GENERATORS))
    register_mask_generator("counting", Counting)
    generator = build_mask_generator("counting", offset=3)
    assert isinstance(generator, Counting) and generator.offset == 3
    one_line_error(lambda: register_mask_generator("counting", Counting), "already registered", error=ValueError)
    one_line_error(lambda: build_mask_generator("counting", offsett=3), "'offsett'", "offset", error=ConfigError)


# --- stacking SAM2's masks -----------------------------------------------------------------------

def test_paint_by_area_is_the_release_loop():
    rng = np.random.default_rng(0)
    masks = [rng.random((20, 30)) < p for p in rng.uniform(0.05, 0.7, 12)]
    masks.append(rng.permutation(masks[4].ravel()).reshape(20, 30))  # another mask of mask 4's area: a tie
    records = [{"segmentation": m, "area": int(m.sum())} for m in masks]
    areas = [r["area"] for r in records]
    out = _paint_by_area(masks, areas, (20, 30))
    assert out.dtype == np.int32 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, release_stacking(records, (20, 30)))
    # the data tell the orders apart: generator order, or larger masks painted first, give other maps
    in_order = np.zeros((20, 30), np.int32)
    for label, m in enumerate(masks, start=1):
        in_order[m] = label
    assert not np.array_equal(out, in_order)
    assert not np.array_equal(out, _paint_by_area(masks, [-a for a in areas], (20, 30)))
    np.testing.assert_array_equal(_paint_by_area([], [], (4, 5)), np.zeros((4, 5), np.int32))


def test_paint_by_area_keeps_the_generators_order_on_ties():
    first, second = np.zeros((2, 3), bool), np.zeros((2, 3), bool)
    first[0, :2] = True
    second[0, 1:] = True  # the same area, overlapping in pixel (0, 1)
    big = np.zeros((2, 3), bool)
    big[1] = True
    big[0, 0] = True  # larger: painted last
    records = [{"segmentation": m, "area": int(m.sum())} for m in (big, first, second)]
    expected = release_stacking(records, (2, 3))
    assert expected[0, 1] == 2  # the second of the tie, painted after the first
    np.testing.assert_array_equal(_paint_by_area([big, first, second], [4, 2, 2], (2, 3)), expected)


# --- the files generator -------------------------------------------------------------------------

def test_files_generator_reads_the_release_and_user_formats(tmp_path):
    image = astronaut(12, 16)
    rng = np.random.default_rng(1)
    release = rng.integers(0, 9, (12, 16)).astype(int)  # the release's archives: np.zeros(..., dtype=int)
    np.savez_compressed(tmp_path / "ADE_val_1.npz", instance_mask=release)
    other = rng.integers(0, 9, (12, 16))  # another array stored first: the key picks the map
    np.savez_compressed(tmp_path / "two_arrays.npz", scores=other, instance_mask=release, masks=other + 1)
    labels8 = rng.integers(0, 255, (12, 16)).astype(np.uint8)
    Image.fromarray(labels8).save(tmp_path / "photo8.png")
    labels16 = rng.integers(0, 60000, (12, 16)).astype(np.uint16)
    Image.fromarray(labels16).save(tmp_path / "photo16.png")
    palette = Image.frombytes("P", (16, 12), labels8.tobytes())
    palette.putpalette(list(range(256)) * 3)
    palette.save(tmp_path / "photoP.png")
    labels_npy = rng.integers(-1, 40, (12, 16)).astype(np.int64)
    np.save(tmp_path / "photo_npy.npy", labels_npy)

    files = build_mask_generator("files", folder=str(tmp_path))
    for stem, expected in (("ADE_val_1", release), ("two_arrays", release), ("photo8", labels8),
                           ("photo16", labels16), ("photoP", labels8), ("photo_npy", labels_npy)):
        out = files(image, f"/data/images/{stem}.jpg")
        assert out.dtype == np.int32, stem
        np.testing.assert_array_equal(out, expected, err_msg=stem)
    assert Image.open(tmp_path / "photo16.png").mode.startswith("I;16")
    # one suffix only; with 'auto' the .npz comes first
    np.save(tmp_path / "ADE_val_1.npy", release + 1)
    np.testing.assert_array_equal(files(image, "ADE_val_1.jpg"), release)
    np.testing.assert_array_equal(build_mask_generator("files", folder=str(tmp_path), suffix=".npy")(
        image, "ADE_val_1.jpg"), release + 1)
    np.testing.assert_array_equal(build_mask_generator("files", folder=str(tmp_path), key="masks")(
        image, "two_arrays.jpg"), other + 1)


def _bad_files(tmp_path):
    """(what, write the bad file, path given, fragments of the message)."""
    h, w = 12, 16

    def npz_garbage():
        (tmp_path / "a.npz").write_bytes(b"this is no zip archive")

    def npz_truncated():
        np.savez_compressed(tmp_path / "a.npz", instance_mask=np.zeros((h, w), int))
        data = (tmp_path / "a.npz").read_bytes()
        (tmp_path / "a.npz").write_bytes(data[: len(data) // 2])

    def npz_wrong_key():
        np.savez_compressed(tmp_path / "a.npz", masks=np.zeros((h, w), int))

    def npz_wrong_size():
        np.savez_compressed(tmp_path / "a.npz", instance_mask=np.zeros((h + 1, w), int))

    def npz_float():
        np.savez_compressed(tmp_path / "a.npz", instance_mask=np.zeros((h, w), np.float32))

    def png_garbage():
        (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    def png_rgb():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "a.png")

    def png_wrong_size():
        Image.fromarray(np.zeros((h, w + 2), np.uint8)).save(tmp_path / "a.png")

    def npy_garbage():
        (tmp_path / "a.npy").write_bytes(b"garbage")

    def npy_3d():
        np.save(tmp_path / "a.npy", np.zeros((h, w, 2), np.int32))

    def nothing():
        pass

    folder = str(tmp_path)
    return [
        ("npz garbage", npz_garbage, "a.jpg", ["a.npz", "not a readable .npz archive"]),
        ("npz truncated", npz_truncated, "a.jpg", ["a.npz", "not a readable .npz archive"]),
        ("npz wrong key", npz_wrong_key, "a.jpg", ["a.npz", "no 'instance_mask' array", "'masks'"]),
        ("npz wrong size", npz_wrong_size, "a.jpg", ["a.npz", "13x16", "12x16"]),
        ("npz float", npz_float, "a.jpg", ["a.npz", "integers", "float32"]),
        ("png garbage", png_garbage, "a.jpg", ["a.png", "not a readable image"]),
        ("png rgb", png_rgb, "a.jpg", ["a.png", "single-channel", "RGB"]),
        ("png wrong size", png_wrong_size, "a.jpg", ["a.png", "12x18", "12x16"]),
        ("npy garbage", npy_garbage, "a.jpg", ["a.npy", "not a readable .npy"]),
        ("npy 3-D", npy_3d, "a.jpg", ["a.npy", "2-D"]),
        ("missing", nothing, "b.jpg", ["mask file not found", "b.jpg", folder]),
        ("no path", nothing, None, ["needs the image's path"]),
    ]


@pytest.mark.parametrize("case", range(12))
def test_files_generator_bad_input_is_one_line_naming_the_file(tmp_path, case):
    what, write, path, fragments = _bad_files(tmp_path)[case]
    write()
    files = build_mask_generator("files", folder=str(tmp_path))
    message = one_line_error(lambda: files(astronaut(12, 16), path), *fragments, error=MaskError)
    assert "Traceback" not in message, what


def test_files_generator_missing_folder_and_explicit_suffix(tmp_path):
    one_line_error(lambda: build_mask_generator("files", folder=str(tmp_path / "nope")), "mask folder not found",
                   str(tmp_path / "nope"), error=MaskError)
    one_line_error(lambda: build_mask_generator("files", folder=str(tmp_path), suffix="jpg"), "'jpg'", ".npz",
                   error=ConfigError)
    files = build_mask_generator("files", folder=str(tmp_path), suffix=".png")
    one_line_error(lambda: files(astronaut(12, 16), "x/a.jpg"), str(tmp_path / "a.png"), error=MaskError)
    one_line_error(lambda: read_mask_file(tmp_path / "a.tif"), "mask file not found", error=MaskError)


def test_generators_refuse_non_images(tmp_path):
    files = build_mask_generator("files", folder=str(tmp_path))
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8)):
        one_line_error(lambda: files(bad, "a.jpg"), "(H, W, 3) uint8 RGB", error=ValueError)


# --- the disk cache ------------------------------------------------------------------------------

def test_cache_reuses_entries_across_instances_and_misses_on_a_new_setting(tmp_path):
    image, other = astronaut(), astronaut(81, 104)
    generator = Counting()
    cache = CachedMasks(generator, tmp_path / "masks")
    first = cache(image)
    np.testing.assert_array_equal(cache(image), first)
    assert generator.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    entry = cache.entry(image)
    assert entry.parent == tmp_path / "masks" and entry.suffix == ".npz"
    np.testing.assert_array_equal(np.load(entry)["instance_mask"], first)  # a release-format archive
    # a later run: a new generator object and cache, the same settings
    later = Counting()
    np.testing.assert_array_equal(CachedMasks(later, tmp_path / "masks")(image), first)
    assert later.calls == 0
    # another image, another setting: misses
    cache(other)
    assert generator.calls == 2
    changed = Counting(offset=5)
    np.testing.assert_array_equal(CachedMasks(changed, tmp_path / "masks")(image), first + 5)
    assert changed.calls == 1
    # the same pixels in another shape are another image, with an entry of its own
    flat = np.ascontiguousarray(image.reshape(image.shape[1], image.shape[0], 3))
    assert cache.entry(flat) != cache.entry(image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a corrupt entry of the other shape
        CachedMasks(later, tmp_path / "masks")(flat)
    assert later.calls == 1


def test_cache_default_folder_is_under_cass_cache_dir(tmp_path):
    # conftest points CASS_CACHE_DIR at tmp_path / "cache"
    cache = CachedMasks(Counting())
    cache(astronaut(8, 8))
    assert cache.entry(astronaut(8, 8)).parent == tmp_path / "cache" / "masks"
    assert cache.entry(astronaut(8, 8)).is_file()


@pytest.mark.parametrize("damage", ["garbage", "wrong size", "wrong key"])
def test_cache_regenerates_a_corrupt_entry_with_a_warning(tmp_path, damage):
    image = astronaut()
    generator = Counting()
    cache = CachedMasks(generator, tmp_path)
    expected = cache(image)
    entry = cache.entry(image)
    if damage == "garbage":
        entry.write_bytes(b"\x00" * 10)
    elif damage == "wrong size":
        write_npz(entry, np.zeros((3, 3), np.int32))
    else:
        np.savez_compressed(entry, other=expected)
    with pytest.warns(RuntimeWarning, match="corrupt mask cache entry"):
        np.testing.assert_array_equal(cache(image), expected)
    assert generator.calls == 2
    np.testing.assert_array_equal(read_mask_file(entry, image.shape[:2]), expected)  # repaired on disk
    cache(image)
    assert generator.calls == 2


# --- SAM2 ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sam2(tmp_path_factory):
    pytest.importorskip("sam2", reason="the sam2 generator needs the sam2 package (scripts/setup.sh installs it)")
    from cass.masks.random_sam2 import write_random_sam2

    return write_random_sam2(tmp_path_factory.mktemp("sam2") / "sam2_hiera_tiny.pt", "sam2_hiera_tiny", tiny=True)


def test_sam2_defaults_are_the_release_settings():
    from cass.masks.sam2_masks import RELEASE_SETTINGS

    generator = build_mask_generator("sam2", device="cpu")
    assert generator.model == "sam2_hiera_large" and generator.checkpoint is None
    assert {k: generator.generator_settings()[k] for k in RELEASE_SETTINGS} == RELEASE_SETTINGS
    assert not generator.half and '"precision": "float32"' in generator.settings_key()


def test_sam2_tiny_random_equals_sam2s_own_generator_and_stacking(tiny_sam2):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    from cass.masks.random_sam2 import TINY_SAM2_OVERRIDES

    image = astronaut()
    # box NMS off (a setting like any other): random masks are scattered, their boxes all the whole image
    ours = build_mask_generator("sam2", model="sam2_hiera_tiny", checkpoint=str(tiny_sam2), device="cpu",
                                overrides=TINY_SAM2_OVERRIDES, box_nms_thresh=1.0)
    labels = ours(image, "astronaut.png")
    assert labels.shape == image.shape[:2] and labels.dtype == np.int32

    # the release's path: sam2's own builder and checkpoint loader, CorrCLIP's arguments, its stacking
    sam = build_sam2("sam2_hiera_t.yaml", str(tiny_sam2), device="cpu", apply_postprocessing=False,
                     hydra_overrides_extra=list(TINY_SAM2_OVERRIDES))
    reference = SAM2AutomaticMaskGenerator(model=sam, points_per_side=8, pred_iou_thresh=0.4,
                                           stability_score_thresh=0.4, multimask_output=False, box_nms_thresh=1.0)
    with torch.inference_mode():
        records = reference.generate(np.array(image))
    # the thresholds keep some of the 64 masks and drop others, and the kept ones differ in area
    assert 5 <= len(records) < 64
    assert len({r["area"] for r in records}) >= 5
    np.testing.assert_array_equal(labels, release_stacking(records, image.shape[:2]))
    assert len(np.unique(labels)) >= 3


def test_sam2_checkpoint_errors_are_one_line_naming_the_file(tmp_path, tiny_sam2):
    missing = tmp_path / "sam2_hiera_large.pt"
    one_line_error(lambda: build_mask_generator("sam2", checkpoint=str(missing)), "not found", str(missing))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_sam2.read_bytes()[:100_000])
    one_line_error(build_mask_generator("sam2", checkpoint=str(corrupt), device="cpu").load, str(corrupt),
                   "not a readable SAM2 checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(tiny_sam2, weights_only=True)["model"], plain)  # a bare state dict, not {"model": ...}
    one_line_error(build_mask_generator("sam2", checkpoint=str(plain), device="cpu").load, str(plain),
                   "not a SAM2 release checkpoint")
    # the tiny file is no full-size hiera-tiny
    one_line_error(build_mask_generator("sam2", model="sam2_hiera_tiny", checkpoint=str(tiny_sam2),
                                        device="cpu").load, str(tiny_sam2), "does not fit the model")
    # no checkpoint: Meta's file, which cannot be downloaded here
    one_line_error(build_mask_generator("sam2", model="sam2_hiera_small", device="cpu").load,
                   "sam2_hiera_small.pt",
                   "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_small.pt")


def test_sam2_settings_key_changes_with_settings_and_weights(tmp_path, tiny_sam2):
    base = build_mask_generator("sam2", model="sam2_hiera_tiny", checkpoint=str(tiny_sam2), device="cpu")
    same = build_mask_generator("sam2", model="sam2_hiera_tiny", checkpoint=str(tiny_sam2), device="cpu")
    assert base.settings_key() == same.settings_key()
    assert build_mask_generator("sam2", model="sam2_hiera_tiny", checkpoint=str(tiny_sam2), device="cpu",
                                pred_iou_thresh=0.5).settings_key() != base.settings_key()
    copy = tmp_path / "copy.pt"
    copy.write_bytes(tiny_sam2.read_bytes())
    assert build_mask_generator("sam2", model="sam2_hiera_tiny", checkpoint=str(copy),
                                device="cpu").settings_key() != base.settings_key()


# --- Mask2Former (transformers, optional) --------------------------------------------------------

def test_mask2former_tiny_random_equals_transformers_post_processing(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the mask2former generator needs transformers")
    swin = transformers.SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                                   out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.Mask2FormerConfig(backbone_config=swin, hidden_dim=32, num_queries=10, encoder_layers=1,
                                            decoder_layers=2, feature_size=32, mask_feature_size=32,
                                            encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2,
                                            num_labels=5)
    torch.manual_seed(0)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        model.class_predictor.bias[0] = 10.0  # random class scores would all fall under the 0.8 threshold
    model.save_pretrained(tmp_path)
    transformers.Mask2FormerImageProcessor(size={"shortest_edge": 128, "longest_edge": 256}).save_pretrained(tmp_path)

    # the defaults are transformers' (which the release uses)
    defaults = inspect.signature(transformers.Mask2FormerImageProcessor.post_process_panoptic_segmentation).parameters
    generator = build_mask_generator("mask2former", model=str(tmp_path), device="cpu")
    for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold"):
        assert getattr(generator, name) == defaults[name].default, name

    image = astronaut()
    # the release's processor: transformers 4.47.1's default, the PIL/numpy one (5.x: Mask2FormerImageProcessorPil)
    numpy_processor = getattr(transformers, "Mask2FormerImageProcessorPil", transformers.Mask2FormerImageProcessor)
    processor = numpy_processor.from_pretrained(tmp_path)
    assert type(generator.load()[0]) is numpy_processor
    loaded = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        outputs = loaded(**processor(Image.fromarray(image), return_tensors="pt"))
    for settings in ({}, dict(overlap_mask_area_threshold=0.3)):
        expected = processor.post_process_panoptic_segmentation(outputs, target_sizes=[image.shape[:2]],
                                                                 **settings)[0]["segmentation"].numpy()
        labels = build_mask_generator("mask2former", model=str(tmp_path), device="cpu", **settings)(image)
        assert labels.dtype == np.int32 and labels.shape == image.shape[:2]
        np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) >= 3  # with the lower overlap threshold: two segments and unsegmented pixels


def test_mask2former_unreachable_model_is_one_line(tmp_path):
    pytest.importorskip("transformers", reason="the mask2former generator needs transformers")
    generator = build_mask_generator("mask2former", model=str(tmp_path / "no-model"), device="cpu")
    one_line_error(generator.load, "cannot load Mask2Former", "no-model")


# --- scripts/make_masks.py -----------------------------------------------------------------------

@pytest.fixture()
def make_masks(monkeypatch):
    """The script as a module, with a ``counting`` generator registered whose calls are counted."""
    monkeypatch.setattr("cass.masks.registry.MASK_GENERATORS", dict(MASK_GENERATORS))
    made: list[Counting] = []

    def counting(offset: int = 0) -> Counting:
        made.append(Counting(offset))
        return made[-1]

    register_mask_generator("counting", counting)
    module = load_script("scripts/make_masks.py", "make_masks_script")
    module.made = made
    return module


def test_make_masks_writes_release_archives_and_resumes(tmp_path, make_masks, capsys):
    images = tmp_path / "images"
    images.mkdir()
    photos = {"a": astronaut(40, 52), "b": astronaut(36, 30)}
    Image.fromarray(photos["a"]).save(images / "a.png")
    Image.fromarray(photos["b"]).save(images / "b.png")
    out = tmp_path / "out"
    argv = ["--images", str(images), "--out", str(out), "--generator", "counting", "--set", "offset=2"]

    assert make_masks.main(argv) == 0
    assert make_masks.made[-1].calls == 2
    for stem, photo in photos.items():
        with np.load(out / f"{stem}.npz") as archive:
            assert archive.files == ["instance_mask"]
            np.testing.assert_array_equal(archive["instance_mask"], Counting(2)(photo))
    assert "2 images: 2 written, 0 skipped" in capsys.readouterr().out

    assert make_masks.main(argv) == 0  # a second run: nothing to do
    assert make_masks.made[-1].calls == 0
    assert "0 written, 2 skipped" in capsys.readouterr().out

    (out / "b.npz").write_bytes(b"interrupted")  # a file cut short is made again
    assert make_masks.main(argv) == 0
    assert make_masks.made[-1].calls == 1
    assert "0 written, 1 skipped (already there), 1 replaced" in capsys.readouterr().out

    # other settings: refused in one line, unless --overwrite
    assert make_masks.main(argv[:-1] + ["offset=3"]) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and str(out) in err and err.count("\n") == 1
    assert make_masks.main(argv[:-1] + ["offset=3", "--overwrite"]) == 0
    assert make_masks.made[-1].calls == 2
    np.testing.assert_array_equal(read_mask_file(out / "a.npz"), Counting(3)(photos["a"]))


def test_make_masks_shards_split_the_images(tmp_path, make_masks, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(astronaut(20 + i, 24)).save(images / f"img{i}.jpg")
    out = tmp_path / "out"
    base = ["--images", str(images), "--out", str(out), "--generator", "counting"]
    assert make_masks.main(base + ["--shard", "1/2"]) == 0
    assert sorted(p.name for p in out.glob("*.npz")) == ["img1.npz", "img3.npz"]
    assert make_masks.main(base + ["--shard", "0/2"]) == 0
    assert sorted(p.name for p in out.glob("*.npz")) == [f"img{i}.npz" for i in range(5)]
    assert make_masks.main(base + ["--shard", "2/2"]) == 1
    assert "--shard" in capsys.readouterr().err


def test_make_masks_reads_the_images_of_a_benchmark_config(tmp_path, make_masks, capsys):
    pytest.importorskip("mmseg", reason="the dataset of a config is read by mmseg")
    root = voc_layout(tmp_path / "VOC2012")
    out = tmp_path / "out"
    config = str(REPO / "configs" / "cfg_voc21.py")
    assert make_masks.main(["--config", config, "--data-root", str(root), "--out", str(out),
                            "--generator", "counting"]) == 0
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(NAMES)
    assert make_masks.main(["--config", config, "--data-root", str(tmp_path / "none"),
                            "--out", str(out), "--generator", "counting"]) == 1
    assert "data root not found" in capsys.readouterr().err


# ------------------------------------------------------------------ felzenszwalb
def test_felzenszwalb_regions_are_scikit_images_from_one():
    from skimage.segmentation import felzenszwalb

    rgb = np.asarray(Image.fromarray(__import__("skimage.data").data.astronaut()).resize((96, 80)))
    generator = build_mask_generator("felzenszwalb")
    labels = generator(rgb)
    expected = felzenszwalb(rgb, scale=200, sigma=0.8, min_size=max(50, 96 * 80 // 400)) + 1
    assert labels.dtype == np.int32 and labels.min() == 1
    np.testing.assert_array_equal(labels, expected)
    coarser = build_mask_generator("felzenszwalb", scale=2000.0, min_size=400)
    assert len(np.unique(coarser(rgb))) < len(np.unique(labels))
    assert coarser.settings_key() != generator.settings_key()


@pytest.mark.parametrize("settings, fragment", [
    (dict(scale=0), "scale must be > 0"), (dict(min_size=0), "min_size >= 1"), (dict(size=3), "no setting 'size'")])
def test_felzenszwalb_bad_settings_are_one_line(settings, fragment):
    one_line_error(lambda: build_mask_generator("felzenszwalb", **settings), fragment, error=ConfigError)


def test_felzenszwalb_bad_image_is_one_line():
    one_line_error(lambda: build_mask_generator("felzenszwalb")(np.zeros((8, 8), np.uint8)), "(H, W, 3) uint8 RGB",
                   error=ValueError)


def test_region_picture_colours_regions_greys_the_uncovered_and_draws_edges():
    """Each region's colour over the image; its pixels next to another label white (scikit-image's inner
    boundaries: the smallest label's own are not drawn); the uncovered pixels in grey."""
    from cass.visualize import class_colors, render_regions

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    regions = np.zeros((6, 8), np.int64)  # 0: uncovered
    regions[:, 4:] = 7
    regions[3:, 4:] = 9
    drawn = np.asarray(render_regions(image, regions, opacity=0.5)).astype(int)
    colors = class_colors(3).astype(int)
    grey = np.asarray(Image.fromarray(image).convert("L").convert("RGB")).astype(int)
    for y in range(6):
        for x in range(8):
            label = regions[y, x]
            edge = label != 0 and any(0 <= y + dy < 6 and 0 <= x + dx < 8 and regions[y + dy, x + dx] != label
                       for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)))
            if edge:
                expected = np.full(3, 255)
            elif label == 0:
                expected = grey[y, x]
            else:
                expected = (image[y, x].astype(float) * 0.5 + colors[[0, 7, 9].index(label)] * 0.5)
            np.testing.assert_allclose(drawn[y, x], expected, atol=1, err_msg=f"pixel {(y, x)}")
