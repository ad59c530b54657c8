"""The training loader: prefetching threads over the window sampler, exact resume, and the one-call
entry point (`window_loader`, alias `get_complete_rl_dataloader`; docs/data-path.md).

    loader = make_loader(dataset, batch_size=64, num_workers=2)    # 2 prefetch threads; sampler: loader.sampler
    # which is DataLoader(dataset, batch_size=None, sampler=WindowBatchSampler(len(dataset), 64),
    #                     collate_fn=collate) plus exact resume
"""
from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from train.training.sampler import WindowBatchSampler

if TYPE_CHECKING:
    from train.training.data import CompleteHierarchicalDrumDataset


def collate(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch dict -> flat tensors (metrics stay a flat dict name -> tensor); tensors pass as they are."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = collate(v)
        elif isinstance(v, torch.Tensor):
            out[k] = v
        else:
            a = np.asarray(v)
            out[k] = torch.from_numpy(a if a.flags.c_contiguous else a.copy())
    return out



class WindowLoader(DataLoader):
    """A DataLoader over a WindowBatchSampler that keeps the sampler's position honest.

    Workers fetch ahead of the training loop, so the sampler alone would count prefetched batches
    as seen; this loader sets `sampler.position` to the batches actually delivered, so a
    checkpoint taken between batches resumes with exactly the unseen windows.

    `num_workers` threads of this process prefetch the next `num_workers * prefetch_factor`
    batches. The gather is a numba kernel compiled `nogil=True`, so threads overlap with the
    training loop and nothing crosses a process boundary. (Process workers were measured to buy
    nothing here — benchmarks/README.md "Loader" — and were removed; 0 workers is the default.)
    """

    def __init__(self, dataset, *, num_workers: int = 0, prefetch_factor: int | None = None, **kwargs):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.workers = int(num_workers)
        self.prefetch_factor_threads = int(prefetch_factor or 2)
        kwargs.pop("persistent_workers", None)
        super().__init__(dataset, num_workers=0, **kwargs)   # torch's loop runs here; threads are ours

    @property
    def threaded(self) -> bool:
        return self.workers > 0

    def __iter__(self):
        sampler = self.sampler
        start = sampler.start_position()
        batches = self._thread_batches() if self.threaded else super().__iter__()
        for n, batch in enumerate(batches, start=1):
            sampler.position = start + n
            yield batch

    def _fetch(self, request):
        batch = self.collate_fn(self.dataset[request])
        return _pin(batch) if self.pin_memory and torch.cuda.is_available() else batch

    def _thread_batches(self):
        """The sampler's batches in order, each gathered on a pool thread, `depth` in flight."""
        if hasattr(self.dataset, "_open"):
            self.dataset._open()            # map the files once, before threads race to do it
        requests = iter(self.sampler)
        depth = self.workers * self.prefetch_factor_threads
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="WindowLoader")
        pending: deque = deque()
        try:
            pending.extend(pool.submit(self._fetch, r) for r in itertools.islice(requests, depth))
            while pending:
                batch = pending.popleft().result()
                pending.extend(pool.submit(self._fetch, r) for r in itertools.islice(requests, 1))
                yield batch
        finally:            # end of epoch, a break (generator closed) or an exception: join the threads
            pool.shutdown(wait=True, cancel_futures=True)


def _pin(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: _pin(v) if isinstance(v, dict) else v.pin_memory() for k, v in batch.items()}


def make_loader(dataset: CompleteHierarchicalDrumDataset, batch_size: int, *, shuffle: bool = True,
                seed: int = 0, drop_last: bool = False, num_workers: int = 0,
                pin_memory: bool = False, num_replicas: int | None = None, rank: int | None = None,
                **kwargs) -> WindowLoader:
    """The loader the trainer uses: one gather per batch, sharded and resumable (`loader.sampler`).

    num_workers prefetching threads; see WindowLoader. Batches are bucketed by the windows' bar
    length (their songs' meter), so each batch runs the model on one bar grid.
    """
    sampler = WindowBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                 num_replicas=num_replicas, rank=rank,
                                 groups=getattr(dataset, "window_bar_lengths", None))   # one meter per batch
    return WindowLoader(dataset, batch_size=None, sampler=sampler, collate_fn=collate,
                        num_workers=num_workers, pin_memory=pin_memory, **kwargs)


def window_loader(path: str | Path, seq_len: int = 512, steps_per_bar: int = 16,
                  bars_per_phrase: int = 4, batch_size: int = 16, shuffle: bool = True,
                  augment: bool = False, num_workers: int = 0, *, split: str = "train",
                  stride: int | None = None, seed: int = 0, drop_last: bool = False,
                  cache_dir: str | Path | None = None, **dataset_kwargs) -> WindowLoader:
    """A loader of hierarchical batches from an export, a store or an NPZ folder, in one call.

    `path`: an export folder (`data/ready`), a `store.zarr` with its export beside it, or a folder
    of *.npz rolls. An NPZ folder is handed to `pipeline.stages.prepare_npz`, the one function of
    the pipeline that train/ calls: it returns the folder's export, built once through the stages
    and cached (train/ itself never runs a stage). `stride` defaults to the export's (one bar for
    an NPZ folder). Shards over torch.distributed ranks when a process group is initialised.
    """
    from train.training.data import CompleteHierarchicalDrumDataset

    path = Path(path)
    if path.is_dir() and not (path / "manifest.json").exists() and not (path / "zarr.json").exists():
        from pipeline.stages import prepare_npz

        path = prepare_npz(path, seq_len=seq_len, stride=stride or steps_per_bar, steps_per_bar=steps_per_bar,
                           bars_per_phrase=bars_per_phrase, cache_dir=cache_dir)
    dataset = CompleteHierarchicalDrumDataset(path, split, seq_len, stride, steps_per_bar, bars_per_phrase,
                                              augment, seed=seed, **dataset_kwargs)
    return make_loader(dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                       num_workers=num_workers)


#: The design document's name for `window_loader` (its first argument was `npz_dir_or_store`).
get_complete_rl_dataloader = window_loader
