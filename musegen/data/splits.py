"""Train/validation/test splits of whole groups (a source piece, a recording): scikit-learn, stratified
by label where possible, so no group ever sits on both sides."""
from __future__ import annotations

from collections import Counter

from sklearn.model_selection import train_test_split


def split_groups(groups: list[str], labels: list[str], val_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, list[str]]:
    """Assign whole groups to train/val/test with scikit-learn, stratified by label where possible.

    With >= 2 groups val gets at least one (if val_fraction > 0); with >= 3 test does too (if
    test_fraction > 0); train always keeps at least one.
    """
    unique = sorted(set(groups))
    group_label = _group_labels(groups, labels)
    n_test, n_val = _split_sizes(len(unique), val_fraction, test_fraction)
    rest, test = _take(unique, group_label, n_test, seed)
    train, val = _take(rest, group_label, n_val, seed + 1)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def _group_labels(groups: list[str], labels: list[str]) -> dict[str, str]:
    """The majority label of each group (a piece can be rendered on several instruments)."""
    counts: dict[str, Counter] = {}
    for g, y in zip(groups, labels):
        counts.setdefault(g, Counter())[y] += 1
    return {g: c.most_common(1)[0][0] for g, c in counts.items()}


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * n)
    if test_fraction > 0 and n >= 3:
        n_test = max(n_test, 1)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    while n_test + n_val > n - 1 and (n_test or n_val):  # train keeps at least one group
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return n_test, n_val


def _take(items: list[str], group_label: dict[str, str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """Split `n` items off `items`, stratified by their label when every class allows it."""
    if n == 0:
        return list(items), []
    strata = [group_label[g] for g in items]
    try:
        rest, taken = train_test_split(items, test_size=n, random_state=seed, stratify=strata)
    except ValueError:  # a class with one group, or fewer taken than classes: plain random
        rest, taken = train_test_split(items, test_size=n, random_state=seed)
    return list(rest), list(taken)
