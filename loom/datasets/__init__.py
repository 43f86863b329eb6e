"""Small datasets bundled with Loom, loaded without network access.

    from loom import datasets
    X, y = datasets.load_digits()                       # float32 [1797, 1, 8, 8] in [0, 1], int64 [1797]
    (Xtr, ytr), (Xte, yte) = datasets.digits_split(test_fraction=0.2, seed=0)
"""
from .digits import digits_split, load_digits

__all__ = ["load_digits", "digits_split"]
