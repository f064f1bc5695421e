"""Image folders for supervised jobs: one sub-folder per class, PNG or JPEG files in each.

    data/digit-images/0/0000.png, data/digit-images/0/0010.png, ..., data/digit-images/9/1796.png

The class of an image is the name of the sub-folder it lies in (the ImageFolder convention;
the classes are the sub-folders' names, sorted). An example is a float32 array of shape
(channels, height, width) holding pixel values 0-255: `data.image_size` fixes the height and
width every image is resized to, `data.image_mode` (L or RGB) the channels. The standardisation
of the pixels (each channel's mean and spread over the training split) is a layer of the model,
so the served model takes the raw pixels, a `[n, channels, height, width]` tensor.

- Before Ray starts, `scan_image_folder` opens every file once with Pillow, as the job will:
  a file that does not decode is counted and left out (the job names it), while a folder that
  cannot train (fewer than 2 classes, a class with no image, images outside a class folder) is
  refused, naming what is wrong.
- Once Ray is up, the driver splits the decodable files by class (each class's share of
  validation files the same, by the seed) and reads both splits with Ray Data's image reader
  (`read_images`, the class from the path by Ray's directory `Partitioning`); the workers get
  shards of them as of a table (raymaas.supervised.loop).
- `augment_batch`: the random flips and crops of `data.augment`, applied by the workers to
  their training batches only, in plain torch (torchvision's wheel for this torch needs CUDA
  libraries the CPU build lacks).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raymaas.modelcode.images import MODES, pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CHANNELS = {mode: channels for channels, mode in MODES.items()}  # the image mode -> channels the model reads
IMAGE_MODES = tuple(CHANNELS)
AUGMENTATIONS = ("flip", "crop")
CLASS_COLUMN = "class"  # the column Ray Data's Partitioning fills with each image's folder name
_SHOWN = 5  # files or folders named in a message before "and N more"


class ImageFolderError(ValueError):
    """The folder cannot train as it is; the message says why, naming folders and files."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def holds_images(folder: Path) -> bool:
    """Whether a folder holds image files (at any depth): the sign of an image folder source."""
    return any(is_image_file(Path(root) / f) for root, _, files in os.walk(folder) for f in files)


def image_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(height, width) of data.image_size: an int is a square."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def input_shape(size, mode: str) -> tuple[int, int, int]:
    """One example's (channels, height, width) for data.image_size and data.image_mode."""
    return (CHANNELS[mode], *image_size(size))


@dataclass(frozen=True)
class ImageFolderFacts:
    """What the scan found: each class's decodable files (absolute paths, sorted) and the
    files that did not decode (paths relative to the folder, with Pillow's reason)."""

    root: str
    classes: list[str]
    files: dict[str, list[str]]
    undecodable: list[tuple[str, str]]
    seconds: float

    @property
    def n_images(self) -> int:
        return sum(len(f) for f in self.files.values())

    def undecodable_line(self) -> str:
        """The files left out, as the job prints them: up to _SHOWN named."""
        n = len(self.undecodable)
        shown = ", ".join(p for p, _ in self.undecodable[:_SHOWN]) + (f" and {n - _SHOWN} more" if n > _SHOWN else "")
        files = "file did not decode and is" if n == 1 else "files did not decode and are"
        return f"{n} {files} left out: {shown} (first: {self.undecodable[0][1]})"


def scan_image_folder(source: str | Path, size=None, mode: str = "RGB") -> ImageFolderFacts:
    """Open each image file of an image folder with Pillow (converted to mode, as the job
    reads it); ImageFolderError for a folder that cannot train, else what was found."""
    root = Path(source)
    if not root.is_dir():
        raise ImageFolderError(f"{source} is not a folder: an image source is a folder with one sub-folder per class")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    loose = [p.name for p in entries if p.is_file() and is_image_file(p)]
    if loose:
        raise ImageFolderError(
            f"{_count(len(loose), 'image file')} directly in {source} ({_names(loose)}) "
            f"{'belongs' if len(loose) == 1 else 'belong'} to no class: "
            "put each image in the sub-folder of its class"
        )
    class_dirs = [p for p in entries if p.is_dir()]
    files: dict[str, list[Path]] = {}
    nested: list[str] = []
    for folder in class_dirs:
        files[folder.name] = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
        nested += [
            str((Path(r) / f).relative_to(root))
            for r, _, names in os.walk(folder)
            if Path(r) != folder
            for f in names
            if is_image_file(Path(r) / f)
        ]
    if nested:
        raise ImageFolderError(
            f"{_count(len(nested), 'image file')} in folders inside a class folder ({_names(sorted(nested))}): "
            "a class is one sub-folder holding its image files directly"
        )
    if len(files) < 2:
        found = f"one sub-folder ({', '.join(files)})" if files else "no sub-folders"
        raise ImageFolderError(
            f"{source} has {found}: an image folder needs a sub-folder for each of 2 or more classes"
        )

    stamp = tuple((str(p), *_stat(p)) for f in files.values() for p in f)
    key = (str(root), None if size is None else image_size(size), mode)
    cached = _CACHE.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    started = time.perf_counter()
    every = [p for f in files.values() for p in f]
    target = None if size is None else image_size(size)
    # Threads for large images, whose decoding Pillow does with the GIL released (not measured
    # here); on the digits' 1,797 tiny PNGs they neither help nor hurt: 0.7-0.9 s with 1, 2 or 8.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = dict(zip(every, pool.map(lambda p: _decode_problem(p, target, mode), every, chunksize=64)))
    undecodable = [(str(p.relative_to(root)), problems[p]) for p in every if problems[p] is not None]
    good = {name: [str(p) for p in f if problems[p] is None] for name, f in files.items()}
    empty = [name for name, f in good.items() if not f]
    if empty:
        bad = [p for p, _ in undecodable if Path(p).parts[0] in empty]
        raise ImageFolderError(
            f"{_count(len(empty), 'class folder')} of {source} ({_names(empty)}) "
            f"{'holds' if len(empty) == 1 else 'hold'} no image that decodes ({', '.join(IMAGE_SUFFIXES)}"
            + (f"; {_count(len(bad), 'file')} did not: {_names(bad)}" if bad else "")
            + "): every class needs images (remove a folder that is no class)"
        )
    facts = ImageFolderFacts(str(root), sorted(good), good, undecodable, time.perf_counter() - started)
    _CACHE[key] = (stamp, facts)
    return facts


# A spec is validated more than once in a process (the entrypoint, then the driver's read; a
# sweep probes each value its space can draw): the files are opened again only when one changed.
_CACHE: dict[tuple, tuple[tuple, ImageFolderFacts]] = {}


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _decode_problem(path: Path, size: tuple[int, int] | None, mode: str) -> str | None:
    """None if Pillow reads the file as Ray Data's reader will (modelcode.images.pixels makes
    its calls: opened, decoded in full, resized, converted to mode), else why not."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if size is None:
                image.load()
                image.convert(mode)
            else:
                pixels(image, (CHANNELS[mode], *size), dtype="uint8")
        return None
    except Exception as err:  # UnidentifiedImageError, OSError (truncated), DecompressionBombError, ...
        return f"{type(err).__name__}: {err}".replace(str(path), path.name)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _names(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


@dataclass(frozen=True)
class FileSplit:
    """The decodable files of each split: (absolute path, class name) pairs."""

    train: list[tuple[str, str]]
    validation: list[tuple[str, str]]


def split_files(facts: ImageFolderFacts, validation_fraction: float, seed: int) -> FileSplit:
    """A stratified split: each class's files shuffled by the seed, the first
    round(n * validation_fraction) of them (at least 1 of a class of 2 or more) to validation.
    The training files are shuffled together, so that each worker's shard holds every class."""
    rng = np.random.default_rng(seed)
    train: list[tuple[str, str]] = []
    validation: list[tuple[str, str]] = []
    for name in facts.classes:
        paths = facts.files[name]
        order = rng.permutation(len(paths))
        n_val = 0 if len(paths) < 2 else min(len(paths) - 1, max(1, round(len(paths) * validation_fraction)))
        validation += [(paths[i], name) for i in order[:n_val]]
        train += [(paths[i], name) for i in order[n_val:]]
    train = [train[i] for i in rng.permutation(len(train))]
    if not validation:
        raise ImageFolderError(f"{facts.root}: each class has 1 image, too few for a training and a validation split")
    return FileSplit(train, validation)


def read_split(root: str, files: list[tuple[str, str]], size, mode: str):
    """A Ray Dataset of files (as split_files gives them): `image`, uint8 [height, width] (L)
    or [height, width, 3] (RGB), resized to size; `class`, the image's folder name."""
    # Imported here: the spec's check and the CLI import this module without Ray.
    import ray.data
    from ray.data.datasource.partitioning import Partitioning

    paths = [p for p, _ in files]
    return ray.data.read_images(
        paths,
        size=image_size(size),
        mode=mode,
        partitioning=Partitioning("dir", field_names=[CLASS_COLUMN], base_dir=root),
        # about 64 small files a read task: the default (200 tasks or more) would give each
        # task a handful of files to decode (not measured here)
        override_num_blocks=max(1, min(200, math.ceil(len(paths) / 64))),
    )


def channels_first(images: np.ndarray) -> np.ndarray:
    """A batch of images as Ray Data's reader gives them ([n, h, w] or [n, h, w, c], uint8)
    as float32 [n, c, h, w]: the network's layout."""
    x = np.asarray(images)
    x = x[:, None, :, :] if x.ndim == 3 else np.transpose(x, (0, 3, 1, 2))
    return np.ascontiguousarray(x, dtype=np.float32)


def channel_statistics(dataset, channels: int) -> tuple[list[float], list[float]]:
    """Each channel's mean and standard deviation over every pixel of a Ray Dataset of images
    (read_split's): one pass, sums in float64."""
    total = np.zeros(channels)
    squares = np.zeros(channels)
    pixels = 0
    for batch in dataset.iter_batches(batch_size=1024, batch_format="numpy"):
        x = channels_first(batch["image"]).astype(np.float64)
        total += x.sum(axis=(0, 2, 3))
        squares += np.square(x).sum(axis=(0, 2, 3))
        pixels += len(x) * x.shape[2] * x.shape[3]
    mean = total / max(pixels, 1)
    std = np.sqrt(np.maximum(squares / max(pixels, 1) - np.square(mean), 0.0))
    return mean.tolist(), std.tolist()


def dataset_rows(dataset, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to limit images of a Ray Dataset (read_split's) as float32 [n, c, h, w] and their
    classes (folder names)."""
    batch = dataset.limit(limit).take_batch(limit, batch_format="numpy")
    return channels_first(batch["image"]), np.asarray(batch[CLASS_COLUMN], dtype=object)


def describe(facts: ImageFolderFacts, split: FileSplit, shape: tuple[int, int, int], mode: str) -> str:
    """One line on what the folder became, for the run's tags and the job's output."""
    channels, height, width = shape
    shown = ", ".join(facts.classes[:10]) + (f", ... ({len(facts.classes)})" if len(facts.classes) > 10 else "")
    return (
        f"{len(split.train)} training and {len(split.validation)} validation images of {len(facts.classes)} "
        f"classes ({shown}), read as {height}x{width} {mode} ({channels} channel{'s' if channels > 1 else ''})"
    )


# --------------------------------------------------------------------------- augmentation


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of a [n, c, h, w] batch mirrored left to right with probability 1/2."""
    flip = torch.rand(len(x), generator=generator, device=generator.device) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, generator: torch.Generator, pad_fraction: float = 1 / 8) -> torch.Tensor:
    """Each image of a [n, c, h, w] batch shifted at random by up to pad_fraction of its side:
    padded by that much on every side with its own edge pixels, then cut back to h x w at a
    random place."""
    n, c, h, w = x.shape
    ph, pw = max(1, round(h * pad_fraction)), max(1, round(w * pad_fraction))
    padded = torch.nn.functional.pad(x, (pw, pw, ph, ph), mode="replicate")
    top = torch.randint(0, 2 * ph + 1, (n,), generator=generator, device=generator.device).to(x.device)
    left = torch.randint(0, 2 * pw + 1, (n,), generator=generator, device=generator.device).to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


_AUGMENT = {"flip": random_flip, "crop": random_crop}


def augment_batch(x: torch.Tensor, augment: list[str], generator: torch.Generator) -> torch.Tensor:
    """A training batch [n, c, h, w] with data.augment's transforms applied, in its order."""
    for name in augment:
        x = _AUGMENT[name](x, generator)
    return x


# --------------------------------------------------------------------------- sample data


def write_digit_images(folder: str | Path, limit: int | None = None, side: int = 16) -> int:
    """scikit-learn's bundled digits (8x8, values 0-16) as grayscale PNGs of side x side
    (bilinear), values scaled to 0-255, in folder/<digit>/<index>.png: what
    jobs/specs/digit_images_cnn*.yaml train on; the number written."""
    from PIL import Image
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    images, labels = bunch.images, bunch.target
    n = len(images) if limit is None else min(limit, len(images))
    folder = Path(folder)
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.clip(np.rint(images[i] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels).resize((side, side), resample=Image.Resampling.BILINEAR)
        image.save(folder / str(int(labels[i])) / f"{i:04d}.png")
    return n
