"""Images and masks on disk as ``Batch``es at the model's input size, and a prefetching step loader.

Each image is resized straight to ``image_size`` x ``image_size`` (bicubic, no crop, as AA-CLIP does),
so a mask resized the same way stays aligned with the patch grid; the mask is resized
nearest-neighbour and binarised (any non-zero pixel is a defect), as AA-CLIP does. Images are
CLIP-normalised. ``augment`` (data/augment.py) transforms training images and masks together,
drawn from (seed, image, step), so an augmented run is still reproducible; held-out batches are
never augmented. Training batches follow data/order.py: epochs, reshuffled every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ablate.subjects.aaclip.data.augment import prepare
from ablate.subjects.aaclip.data.folders import Sample
from ablate.subjects.aaclip.data.order import batch_indices
from ablate.subjects.aaclip.data.synthetic import CLIP_MEAN, CLIP_STD, Batch, augment_generator


def load_image(path: str, size: int) -> torch.Tensor:
    """[3, size, size] float in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).float().div(255.0).clamp(0.0, 1.0)


def load_mask(path: str | None, size: int) -> torch.Tensor:
    """[size, size] float {0, 1}: the grey mask resized NEAREST, then any non-zero pixel is 1; zeros
    without a mask file."""
    if path is None:
        return torch.zeros(size, size)
    from PIL import Image

    with Image.open(path) as im:
        grey = im.convert("L").resize((size, size), Image.Resampling.NEAREST)
        data = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(size, size)
    return (data != 0).float()


class FolderDataset:
    """Samples on disk, indexable like the synthetic data set (``classes``, ``batch(indices)``).

    ``class_names`` is the model's class list (prompt names, possibly wider than this set's classes:
    the training and evaluation sets share one list); ``prompt_name`` maps a folder class to its entry.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        class_names: Sequence[str],
        prompt_name: Callable[[str], str],
        augment: str = "none",
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.classes = tuple(class_names)
        index = {name: i for i, name in enumerate(self.classes)}
        self.class_idx = [index[prompt_name(s.class_name)] for s in self.samples]
        self.augment = augment
        self.seed = seed
        self._mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def sample(
        self, index: int, step: int | None = None, colour: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(normalised image [3,H,W], mask [H,W], label, class index); ``step`` set: augmented (with
        the colour jitter unless ``colour`` is False)."""
        s = self.samples[index]
        img = load_image(s.image, self.image_size)
        mask = load_mask(s.mask, self.image_size)
        g = None if step is None else augment_generator(self.seed, index, step)
        img, mask = prepare(img, mask, self._mean, self._std, self.augment, g, colour)
        return img, mask, s.label, self.class_idx[index]

    def batch(self, indices: Sequence[int], step: int | None = None, colour: bool = True) -> Batch:
        items = [self.sample(i, step, colour) for i in indices]
        return Batch(
            images=torch.stack([it[0] for it in items]),
            masks=torch.stack([it[1] for it in items]),
            labels=torch.tensor([it[2] for it in items], dtype=torch.long),
            class_idx=torch.tensor([it[3] for it in items], dtype=torch.long),
        )

    def batches(self, batch_size: int) -> list[list[int]]:
        """Every index once, in order, in batches (the last may be short): for a full evaluation pass."""
        n = len(self)
        return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = the training batch of every arm at that step (stacked over arms if ``stack``).

    Each entry of ``arms`` is (data set, seed, batch size, pool size): an arm's batch at a step is
    that step's batch of its own seeded epochs over the pool (data/order.py), as the in-process path.
    """

    def __init__(self, arms: Sequence[tuple[object, int, int, int]], steps: int, stack: bool) -> None:
        self.arms = list(arms)
        self.steps = steps
        self.stack = stack

    def __len__(self) -> int:
        return self.steps

    def batch(self, step: int) -> Batch:
        out = []
        for dataset, seed, bs, pool in self.arms:
            out.append(dataset.batch(batch_indices(seed, pool, bs, step), step))
        return Batch.stack(out) if self.stack else out[0]

    def __getitem__(self, step: int) -> tuple[torch.Tensor, ...]:
        b = self.batch(step)
        return (b.images, b.masks, b.labels, b.class_idx)


class _IndexBatches(torch.utils.data.Dataset):
    """Item i = the batch of the i-th list of indices (for a worker pool over a fixed pass)."""

    def __init__(self, dataset: FolderDataset, chunks: list[list[int]]) -> None:
        self.dataset = dataset
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        b = self.dataset.batch(self.chunks[i])
        return (b.images, b.masks, b.labels, b.class_idx)


def iterate_batches(dataset: FolderDataset, batch_size: int, device: torch.device, workers: int = 0) -> Iterator[Batch]:
    """Every image of ``dataset`` once, in order (``dataset.samples[i]`` is the i-th image seen),
    in batches of ``batch_size`` (the last may be short), read by ``workers`` processes, on ``device``."""
    chunks = dataset.batches(batch_size)
    if workers <= 0:
        for c in chunks:
            yield dataset.batch(c).to(device)
        return
    loader = torch.utils.data.DataLoader(
        _IndexBatches(dataset, chunks),
        batch_size=None,
        shuffle=False,
        num_workers=min(workers, len(chunks)),
        pin_memory=device.type == "cuda",
    )
    for item in loader:
        yield Batch(*item).to(device)


class StepLoader:
    """Training batches by step, read ahead in ``workers`` processes (pinned memory on CUDA).

    Steps asked in order come from the workers; any other step (a repeat, a jump) is read here,
    so the numbers never depend on the number of workers.
    """

    def __init__(self, steps: StepBatches, workers: int, device: torch.device) -> None:
        self.steps = steps
        self.workers = workers
        self.device = device
        self._iter = None
        self._next = 0

    def __call__(self, step: int) -> Batch:
        if self.workers > 0 and step == self._next and step < len(self.steps):
            if self._iter is None:
                loader = torch.utils.data.DataLoader(
                    self.steps,
                    batch_size=None,
                    shuffle=False,
                    num_workers=self.workers,
                    pin_memory=self.device.type == "cuda",
                )
                self._iter = iter(loader)
            self._next += 1
            batch = Batch(*next(self._iter))
        else:
            batch = self.steps.batch(step)
        return batch.to(self.device)
