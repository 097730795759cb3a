"""The cell cache key: what it hashes (the weight code as syntax trees) and what it leaves out."""

from __future__ import annotations


def test_the_cache_key_covers_the_weight_code_and_nothing_else(tmp_path):
    """A printed message does not move the key; a seed function or the trainer does."""
    from bench.cell.plan import TRAIN_CODE, source_hash

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text("W = 1\n")
    (tmp_path / "train.py").write_text("def step():\n    return 1\n")
    (tmp_path / "io.py").write_text("def derive_seed(x):\n    return x\n\n"
                                    "def write(p):\n    print('writing', p)\n")
    (tmp_path / "cli.py").write_text("print('hello')\n")
    parts = ("train.py", "models", "io.py:derive_seed")
    key = source_hash(tmp_path, parts)

    (tmp_path / "cli.py").write_text("print('hello, world')\n")  # only prints: same key
    (tmp_path / "io.py").write_text("def derive_seed(x):\n    return x\n\n"
                                    "def write(p):\n    print('now writing', p)\n")
    assert source_hash(tmp_path, parts) == key

    (tmp_path / "io.py").write_text("def derive_seed(x):\n    return x + 1\n\n"
                                    "def write(p):\n    print('now writing', p)\n")
    assert source_hash(tmp_path, parts) != key  # the seeds change: new key
    key = source_hash(tmp_path, parts)
    (tmp_path / "models" / "net.py").write_text("W = 2\n")
    assert source_hash(tmp_path, parts) != key
    # The real key names the trainer, the models and the seed function.
    assert {"cell/train.py", "models", "io.py:derive_seed"} <= set(TRAIN_CODE)


def _copy_weight_code(dest):
    """The package's files named by TRAIN_CODE, copied under ``dest`` (same relative paths)."""
    import shutil

    from bench.cell.plan import PACKAGE_DIR, TRAIN_CODE

    for part in TRAIN_CODE:
        rel = part.partition(":")[0]
        src = PACKAGE_DIR / rel
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / rel)
    return dest


def test_a_docstring_or_a_message_of_the_trainer_keeps_the_cell_key(tmp_path):
    """Only a docstring, a comment or an error message of bench/cell/train.py edited: the cache
    key (the hash every cell folder's name carries) is the one of the package as it is; a changed
    constant of the trainer changes it."""
    from bench.cell.plan import PACKAGE_DIR, TRAIN_CODE, code_hash, source_hash

    assert source_hash(PACKAGE_DIR, TRAIN_CODE) == code_hash()
    root = _copy_weight_code(tmp_path / "bench")
    trainer = root / "cell" / "train.py"
    text = trainer.read_text()
    assert source_hash(root, TRAIN_CODE) == code_hash()

    doc = '"""Optimisation steps for a training set of ``n`` images'
    assert doc in text
    edited = text.replace(doc, '"""How many optimisation steps (edited docstring) for ``n`` images', 1)
    edited = edited.replace("MIN_LR = 1e-6", "# a new comment line\nMIN_LR = 1e-6", 1)
    msg = 'raise BenchError("the cosine learning-rate schedule needs the step budget")'
    assert msg in edited
    edited = edited.replace(msg, 'raise BenchError("a cosine schedule needs a step budget")', 1)
    trainer.write_text(edited)
    assert source_hash(root, TRAIN_CODE) == code_hash()

    trainer.write_text(edited.replace("MIN_LR = 1e-6", "MIN_LR = 1e-7", 1))
    assert source_hash(root, TRAIN_CODE) != code_hash()


def test_the_convergence_rules_are_outside_the_cell_key(tmp_path):
    """The convergence rules (bench/cell/convergence.py) are not part of the key: copying the
    weight code without them hashes the same as the package."""
    from bench.cell.plan import TRAIN_CODE, code_hash, source_hash

    root = _copy_weight_code(tmp_path / "bench")
    assert not (root / "cell" / "convergence.py").exists()
    assert source_hash(root, TRAIN_CODE) == code_hash()
