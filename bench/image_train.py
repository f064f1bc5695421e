"""Training samples/s of an image-folder job against plain PyTorch over the same folder.

    .venv/bin/python bench/image_train.py [--side 16] [--repeats 2] [--workers 1] ...

The folder: scikit-learn's bundled digits written as PNGs of --side pixels (raymaas
sample-data digit-images; or --folder, any ImageFolder-style folder). All contestants train the
same CNN (raymaas.supervised.models.build_model, jobs/specs/digit_images_cnn_debug.yaml's model
and loop unless overridden) on the same training files (raymaas.supervised.images.split_files,
same seed), with the same batch size, Adam learning rate, augmentation and epochs:

- plain: a torch Dataset that opens each file with Pillow for every sample of every epoch
  (resized and converted as torchvision's ImageFolder + Resize would: Pillow's bilinear resize,
  then the mode), a DataLoader with --loader-workers persistent processes, the loop in this
  process with torch.set_num_threads(--threads). What a user writes without the platform. The
  issue asked for torchvision's decoding; torchvision's wheel for this torch (0.28.0) installs
  but does not import on a CPU-only torch (it links libtorch_cuda), and its ImageFolder decodes
  with the same Pillow calls, so the decoding here is Pillow's, called directly.
- plain, decoded once: the same loop over a tensor of every training image decoded before the
  first epoch: the fastest a single process can be; reported, not the target's peer.
- platform: the real job, `python -m jobs.supervised` with --workers Ray Train workers of
  --threads CPUs each, as a subprocess on a fresh local Ray (a temporary RAYMAAS_HOME and MLflow
  store); its per-epoch `epoch_seconds` and `samples_per_second` come from its MLflow run.

The plain runs come before the first platform job and after each one (P J P J P), and each job
is compared with the plain runs on either side of it (bench/train_overhead.py's arrangement).
Steady state is epochs 2..: every contestant's first epoch pays a one-off cost (worker start,
Ray Data's first pass over the blocks). Epoch 1 and the whole training time are printed too.
Target: the platform's steady-state samples/s at least 0.9 of the plain loop's. The exit code
is 0 either way: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from train_overhead import Epochs, PlatformRun, job_command, run_platform

from raymaas.modelcode.images import pixels
from raymaas.supervised import images
from raymaas.supervised.models import CNNConfig, build_model

REPO = Path(__file__).resolve().parent.parent
BASE_SPEC = REPO / "jobs" / "specs" / "digit_images_cnn_debug.yaml"
TARGET = 0.9
VALIDATION_FRACTION = 0.2  # the spec's default: the job splits with it too


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", help="an image folder to train on (default: the digits written as PNGs of --side)")
    p.add_argument("--side", type=int, default=16, help="side of the written digit PNGs, and the image size read")
    p.add_argument("--mode", choices=images.IMAGE_MODES, default="L", help="data.image_mode")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32], help="the CNN's conv channels")
    p.add_argument("--augment", nargs="*", default=["crop"], choices=images.AUGMENTATIONS, help="data.augment")
    p.add_argument("--epochs", type=int, default=6, help="epochs; the first is warm-up")
    p.add_argument("--batch-size", type=int, default=16, help="images per optimizer step")
    p.add_argument("--lr", type=float, default=0.005, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the model, the shuffling and the crops")
    p.add_argument("--workers", type=int, default=1, help="the platform's Ray Train workers")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPUs of each platform worker (Ray sets its OMP_NUM_THREADS to it); the plain loop calls "
        "torch.set_num_threads(workers x threads)",
    )
    p.add_argument(
        "--loader-workers",
        type=int,
        default=1,
        help="the plain loop's DataLoader processes decoding images (0: in the loop's own process)",
    )
    p.add_argument("--repeats", type=int, default=2, help="platform jobs; each plain loop runs one more time")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed for one platform job")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders and print where")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch is warm-up")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


# --------------------------------------------------------------------------- plain PyTorch


class FolderImages(torch.utils.data.Dataset):
    """(path, class) pairs read with Pillow at every access, as ImageFolder's default loader."""

    def __init__(self, files: list[tuple[str, str]], classes: list[str], shape: tuple[int, int, int]):
        self.files, self.shape = files, shape
        self.index = {name: i for i, name in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path, name = self.files[i]
        with Image.open(path) as image:
            x = pixels(image, self.shape)
        return torch.from_numpy(x), self.index[name]


class Plain:
    """The plain contestants' shared set-up: the split, the pixels' statistics, validation tensors."""

    def __init__(self, args, folder: Path):
        self.args = args
        facts = images.scan_image_folder(folder, args.side, args.mode)
        self.split = images.split_files(facts, VALIDATION_FRACTION, args.seed)
        self.classes = facts.classes
        self.shape = images.input_shape(args.side, args.mode)
        train = FolderImages(self.split.train, self.classes, self.shape)
        self.train_x = torch.stack([train[i][0] for i in range(len(train))])
        self.train_y = torch.tensor([train.index[c] for _, c in self.split.train])
        val = FolderImages(self.split.validation, self.classes, self.shape)
        self.val_x = torch.stack([val[i][0] for i in range(len(val))])
        self.val_y = torch.tensor([val.index[c] for _, c in self.split.validation])
        x = self.train_x.double()
        self.mean = x.mean(dim=(0, 2, 3)).numpy()
        self.std = x.std(dim=(0, 2, 3), unbiased=False).numpy()

    def run(self, decode_each_epoch: bool) -> Epochs:
        args = self.args
        torch.set_num_threads(args.workers * args.threads)
        torch.manual_seed(args.seed)
        model = build_model(CNNConfig(channels=args.channels), self.shape, len(self.classes), self.mean, self.std)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
        shuffle = torch.Generator().manual_seed(args.seed)
        crops = torch.Generator().manual_seed(args.seed + 1)
        if decode_each_epoch:
            loader = torch.utils.data.DataLoader(
                FolderImages(self.split.train, self.classes, self.shape),
                batch_size=args.batch_size,
                shuffle=True,
                generator=shuffle,
                num_workers=args.loader_workers,
                persistent_workers=args.loader_workers > 0,
            )
            batches = lambda: iter(loader)
        else:

            def batches():
                order = torch.randperm(len(self.train_x), generator=shuffle)
                for i in range(0, len(order), args.batch_size):
                    idx = order[i : i + args.batch_size]
                    yield self.train_x[idx], self.train_y[idx]

        seconds, samples, accuracy = [], [], 0.0
        for _ in range(args.epochs):
            model.train()
            started = time.perf_counter()
            n = 0
            for x, y in batches():
                x = images.augment_batch(x, args.augment, crops)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                (loss / len(y)).backward()
                optimizer.step()
                n += len(y)
            seconds.append(time.perf_counter() - started)
            samples.append(float(n))
            model.eval()
            with torch.no_grad():
                accuracy = float((model(self.val_x).argmax(1) == self.val_y).float().mean())
        return Epochs(seconds, samples, accuracy)


# --------------------------------------------------------------------------- the platform job


def platform_command(args, folder: Path) -> list[str]:
    overrides = {
        "name": "bench-image-train",
        "data.source": str(folder),
        "data.image_size": args.side,
        "data.image_mode": args.mode,
        "data.augment": "[" + ", ".join(args.augment) + "]",
        "model.channels": "[" + ", ".join(map(str, args.channels)) + "]",
        "model.dropout": 0.0,
        "train_loop_config.epochs": args.epochs,
        "train_loop_config.batch_size": args.batch_size,
        "train_loop_config.lr": args.lr,
        "train_loop_config.seed": args.seed,
        "scaling_config.num_workers": args.workers,
        "scaling_config.use_gpu": "false",
        "scaling_config.resources_per_worker": f"{{CPU: {args.threads}}}",
        "failure_config.max_failures": 0,
    }
    return job_command(BASE_SPEC, overrides)


# --------------------------------------------------------------------------- report


def whole(e: Epochs) -> float:
    """Samples over seconds of every epoch, the first included."""
    return sum(e.samples) / sum(e.seconds)


def print_row(name: str, e: Epochs) -> None:
    times = ", ".join(f"{s:.2f}" for s in e.seconds)
    print(
        f"  {name:22} {times:44} {e.steady_median:9,.0f} {e.samples[0] / e.seconds[0]:9,.0f} "
        f"{whole(e):9,.0f} {e.val_accuracy:8.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="raymaas-bench-images-"))
    try:
        if args.folder:
            folder = Path(args.folder).resolve()
        else:
            folder = scratch / "digit-images"
            images.write_digit_images(folder, side=args.side)
        plain = Plain(args, folder)
        print(
            f"image_train: {folder} ({len(plain.split.train)} training, {len(plain.split.validation)} validation "
            f"images, {len(plain.classes)} classes) read as {args.side}x{args.side} {args.mode}; CNN {args.channels}; "
            f"augment {args.augment}; batch {args.batch_size}; Adam lr {args.lr}; {args.epochs} epochs; seed "
            f"{args.seed}; platform: {args.workers} worker(s) x {args.threads} CPU; plain: "
            f"{args.workers * args.threads} torch thread(s), DataLoader with {args.loader_workers} decoding process(es)"
        )
        print(
            "columns: epoch seconds (training steps and their data only: validation and checkpoints excluded on "
            "every side); steady /s = median of epochs 2.. samples/s; epoch 1 /s; all /s = every epoch's samples "
            "over their seconds",
            flush=True,
        )
        decoding: list[Epochs] = [plain.run(decode_each_epoch=True)]
        kept: list[Epochs] = [plain.run(decode_each_epoch=False)]
        jobs: list[PlatformRun] = []
        for i in range(args.repeats):
            # its own short folder: Ray's socket paths under RAY_TMPDIR must fit in 107 bytes
            home = Path(tempfile.mkdtemp(prefix="rmb-"))
            jobs.append(run_platform(args, home, platform_command(args, folder)))
            if not args.keep:
                shutil.rmtree(home, ignore_errors=True)
            decoding.append(plain.run(decode_each_epoch=True))
            kept.append(plain.run(decode_each_epoch=False))
            print(f"\nplatform job {i + 1}, with the plain runs before and after it")
            print(f"  {'':22} {'epoch s (1, 2, ...)':44} {'steady/s':>9} {'epoch1/s':>9} {'all/s':>9} {'val acc':>8}")
            print_row("plain, Pillow each epoch", decoding[i])
            print_row("plain, decoded once", kept[i])
            print_row("platform", jobs[i].epochs)
            print_row("plain, Pillow each epoch", decoding[i + 1])
            print_row("plain, decoded once", kept[i + 1])
            print(
                f"  platform: epoch 1 reported {jobs[i].first_report_s:.1f} s after launch (startup "
                f"{jobs[i].startup_s:.1f} s), total wall {jobs[i].wall_s:.1f} s"
            )

        def ratios(peers: list[Epochs], measure) -> list[float]:
            return [
                measure(j.epochs) / statistics.mean([measure(peers[i]), measure(peers[i + 1])])
                for i, j in enumerate(jobs)
            ]

        steady = ratios(decoding, lambda e: e.steady_median)
        print(f"\nsummary ({len(jobs)} platform job(s); ratios against the mean of the plain runs on either side)")
        print(
            f"  platform / plain with Pillow each epoch, steady state: {', '.join(f'{r:.3f}' for r in steady)}; "
            f"all epochs: {', '.join(f'{r:.3f}' for r in ratios(decoding, whole))}"
        )
        print(
            "  platform / plain decoded once, steady state: "
            f"{', '.join(f'{r:.3f}' for r in ratios(kept, lambda e: e.steady_median))}; all epochs: "
            f"{', '.join(f'{r:.3f}' for r in ratios(kept, whole))}"
        )
        ratio = statistics.median(steady)
        verdict = "PASS" if ratio >= TARGET else "BELOW TARGET"
        print(
            f"ratio platform/plain (Pillow each epoch) steady-state samples/s: {ratio:.2f} (target >= {TARGET}) {verdict}"
        )
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
