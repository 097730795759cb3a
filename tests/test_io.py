import pytest
import torch

from bench.io import atomic_path, derive_seed, read_json, sha256_tensor, write_json


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "r.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_sha256_tensor_sees_one_pixel():
    x = torch.zeros(4, 40, 40, dtype=torch.uint8)
    h = sha256_tensor(x)
    x[2, 3, 4] = 1
    assert sha256_tensor(x) != h
    assert sha256_tensor(x) == sha256_tensor(x.clone())


def test_derived_seeds_are_stable_and_independent():
    assert derive_seed("capsnet", 100, 0) == derive_seed("capsnet", 100, 0)
    assert derive_seed("capsnet", 100, 0) != derive_seed("capsnet", 100, 1)
    assert 0 <= derive_seed("x") < 2**63


def test_sha256_tensor_of_scalars_and_channels_last_equals_hashlib_of_the_c_order_bytes():
    import hashlib

    import numpy as np
    import torch

    for t in (torch.tensor(7), torch.randn(4, 3, 1, 1).to(memory_format=torch.channels_last)):
        arr = np.ascontiguousarray(t.numpy())
        expected = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode() + arr.tobytes())
        assert sha256_tensor(t) == expected.hexdigest()
