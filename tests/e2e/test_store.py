"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
store.
The rest is tests/unit/test_store.py."""
import numpy as np
import pytest

from pipeline.drums import DrumMap
from pipeline.store import Store, write_store
from tests.unit.test_store import _songs  # noqa: F401 (fixtures and helpers shared with the unit tests)


def test_old_schema_store_is_refused_with_how_to_rebuild(tmp_path):
    """A version-1 store (no `offset`) is refused: the message names the store and the rebuild command."""
    import zarr
    write_store(tmp_path / "old.zarr", _songs(np.random.default_rng(1), [8]), DrumMap.default().to_attrs())
    root = zarr.open_group(str(tmp_path / "old.zarr"), mode="r+")
    del root["offset"]
    root.attrs["schema_version"] = 1
    with pytest.raises(ValueError, match=r"old\.zarr: schema_version 1.*reads 2.*offset.*dvc repro build"):
        Store(tmp_path / "old.zarr")
