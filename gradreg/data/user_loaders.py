"""One concept, a user's own data loader, named by an entry point ``"package.module:function"``
(`gradreg.user_code`): its contract and its checks. `load_dataset(entry_point, ...)`
(`gradreg.data.datasets`) splits and standardises what it returns into the same `Dataset` as
every dataset's.

**The call.** ``load(**options)``: the dataset options (a spec's ``dataset.options``,
``--dataset-option KEY=VALUE``, `TrainConfig.dataset_options`) as keyword arguments, nothing
else. It runs where the trial runs, once per `load_dataset`; a slow loader may keep its own
cache (gradreg never writes into the arrays it returns).

**What it returns.** Either

1. one pair ``(x, y)`` of all the examples (a tuple or list of two). gradreg splits it as it
   splits a file dataset (`gradreg.data.splits.split_examples`, the same function): stratified
   by label with ``split_seed``, holding out ``test_fraction`` (default 0.2) for testing and
   ``val_fraction`` (default 0.15) for validation; or
2. a mapping with the keys
   - ``train`` and ``test``: an ``(x, y)`` pair each (required);
   - ``val``: an ``(x, y)`` pair (optional; without it ``val_fraction`` of train is carved out,
     stratified, with ``split_seed``; with it, both are unused);
   - ``class_names``: a sequence of C distinct strings, class c's name (optional; default
     ``"0"`` … ``"C-1"``);
   - ``standardise``: true or false (optional, default true; see below).

   Any other key is refused, naming the accepted ones. ``test_fraction`` must stay unset: the
   loader's test split is the test set (as for a ``.npz`` file holding ``x_test``).

**Inputs x.** A numpy array or a torch tensor (on any device; it is copied to the CPU) of a
real or integer dtype (bool included; not complex, not objects), shape ``(N, *input_shape)``
with rank 2 or more, the same ``input_shape`` in every split, and no NaN or infinite value.
``input_shape`` is exactly what the model builder receives and what the network's batches
have after their first axis: ``(F,)`` for features, ``(C, L)`` for signals, ``(C, H, W)``
for images; gradreg adds no channel axis.

**Labels y.** One per example, shape ``(N,)``, integers ``0..C-1`` (an integer dtype, or
floats that hold whole numbers, as in a file dataset), ``len(y) == len(x)`` in every split.
C, the number of classes, is ``len(class_names)`` where given, else one more than the largest
training label; at least 2, and every class has an example in the training split (in the pool
for form 1, whose split then keeps every class in every split). Validation and test labels lie
in ``0..C-1``.

**Standardisation.** Unless ``standardise`` is false, every split's inputs are centred and
scaled with the *training* split's statistics, after splitting, as a file dataset's are
(`gradreg.data.transform.standardise`): rank-2 inputs per feature (in float64), higher ranks
per channel, axis 1 (in float32); a constant feature or channel is centred only. The same map
(`InputTransform`) is saved with a trained posterior, so a saved model predicts from inputs
in the loader's own units. With ``standardise`` false the inputs reach the network as they
are (as float32), and the saved map is the identity.

**Provenance.** ``Dataset.source``: ``name`` and ``entry_point`` (the entry point),
``options`` (the keyword arguments), ``digest`` (the sha256 of the arrays it returned: per
split in the order train, val, test, or the pool, each x then y, of their split name, dtype,
shape and C-order bytes), ``form`` (``pool`` or ``splits``), ``splits`` (the splits the loader
gave), ``n_examples``, ``x_shape``, ``class_names`` and ``standardise``.

Every violation is a `UserCodeError` (kind ``result``) that names the loader, the split and
the key at fault.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradreg.data.userfiles import class_indices, integer_labels
from gradreg.user_code import UserCodeError, call, described

LOADER = "data loader"  # the role a user's loader plays in an error message
SPLITS = ("train", "val", "test")
KEYS = (*SPLITS, "class_names", "standardise")
REQUIRED = ("train", "test")
_SHOWN = 5  # labels quoted in a message, at most


@dataclass(frozen=True)
class LoaderData:
    """What a loader returned, checked: inputs in the loader's units, labels 0..C-1.

    ``x``, ``y`` are the pool (form 1) or the training split (form 2); ``x_test`` is None for
    the pool, and ``x_val`` None where the loader gave no validation split."""

    x: np.ndarray
    y: np.ndarray  # int64
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]
    standardise: bool
    source: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(size) for size in self.x.shape[1:])


def load_user_data(entry_point: str, options: Mapping[str, Any]) -> LoaderData:
    """Call the loader with ``options`` and check what it returned against the contract."""
    returned = call(entry_point, role=LOADER, **options)
    return _Check(entry_point).returned(returned, dict(options))


class _Check:
    """The contract's checks for one loader; every failure names it."""

    def __init__(self, entry_point: str) -> None:
        self.entry_point = entry_point

    def fail(self, problem: str) -> UserCodeError:
        return UserCodeError(self.entry_point, problem, kind="result", role=LOADER)

    def returned(self, value: Any, options: dict[str, Any]) -> LoaderData:
        if isinstance(value, Mapping):
            return self._splits(value, options)
        if isinstance(value, tuple | list) and len(value) == 2:
            return self._pool(value, options)
        raise self.fail(
            f"returned {described(value)}; a loader returns one pair (x, y) of all the "
            "examples, or a mapping {'train': (x, y), 'test': (x, y)} (optionally 'val', "
            "'class_names', 'standardise')"
        )

    # ------------------------------------------------------------ the two forms

    def _pool(self, pair: Sequence[Any], options: dict[str, Any]) -> LoaderData:
        x, raw_y = self._pair(pair, "the pool", "returned (x, y)")
        y = self._labels(raw_y, x, "the pool")
        n_classes = self._classes(y, "the pool's y")
        names = tuple(str(c) for c in range(n_classes))
        source = self._source(options, {"pool": (x, raw_y)}, "pool", names, standardise=True)
        return LoaderData(x, y, None, None, None, None, names, True, source)

    def _splits(self, mapping: Mapping[Any, Any], options: dict[str, Any]) -> LoaderData:
        unknown = [key for key in mapping if key not in KEYS]
        if unknown:
            raise self.fail(
                f"returned a mapping with unknown key(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(KEYS)}"
            )
        missing = [key for key in REQUIRED if key not in mapping]
        if missing:
            raise self.fail(
                f"returned a mapping without {' and '.join(map(repr, missing))}; a mapping holds "
                "'train' and 'test' (x, y) pairs (optionally 'val', 'class_names', "
                "'standardise'), or return one pair (x, y) for gradreg to split"
            )
        given = [split for split in SPLITS if split in mapping]
        raw = {
            split: self._pair(mapping[split], f"split {split!r}", f"{split!r}") for split in given
        }
        self._same_input_shape(raw)
        labels = {split: self._labels(y, x, f"split {split!r}") for split, (x, y) in raw.items()}
        names = self._class_names(mapping.get("class_names"))
        if names is None:
            n_classes = self._classes(labels["train"], "y of split 'train'")
            names = tuple(str(c) for c in range(n_classes))
        else:
            self._every_class_in_train(labels["train"], names)
        for split in given:
            self._within(labels[split], split, names)
        standardise = mapping.get("standardise", True)
        if not isinstance(standardise, bool):
            raise self.fail(f"'standardise' must be true or false, got {standardise!r}")
        source = self._source(options, raw, "splits", names, standardise)
        has_val = "val" in raw
        return LoaderData(
            raw["train"][0],
            labels["train"],
            raw["val"][0] if has_val else None,
            labels["val"] if has_val else None,
            raw["test"][0],
            labels["test"],
            names,
            standardise,
            source,
        )

    # ------------------------------------------------------------ arrays

    def _pair(self, value: Any, where: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise self.fail(f"{key} is {described(value)}; each split is a pair (x, y)")
        return self._inputs(value[0], where), self._array(value[1], f"y of {where}")

    def _array(self, value: Any, what: str) -> np.ndarray:
        """A numpy array or a tensor (copied to the CPU) as a numpy array, any dtype yet."""
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
            if tensor.is_complex():
                raise self.fail(f"{what} has dtype {tensor.dtype}; give real numbers")
            if tensor.dtype in (torch.bfloat16,):  # numpy has no bfloat16
                tensor = tensor.float()
            array: np.ndarray = tensor.numpy()
            return array
        if isinstance(value, np.ndarray):
            return value
        raise self.fail(f"{what} is {described(value)}; give a numpy array or a torch tensor")

    def _inputs(self, value: Any, where: str) -> np.ndarray:
        x = self._array(value, f"x of {where}")
        if x.dtype.kind not in "biuf":
            raise self.fail(
                f"x of {where} has dtype {x.dtype}; inputs must be real or integer numbers"
            )
        if x.ndim < 2:
            raise self.fail(
                f"x of {where} has shape {x.shape}; x is (N, *input_shape), rank 2 or more: "
                "(N, F) features, (N, C, L) signals, (N, C, H, W) images"
            )
        if len(x) == 0:
            raise self.fail(f"x of {where} holds no examples")
        if x.dtype.kind == "f":
            bad = x.size - int(np.count_nonzero(np.isfinite(x)))
            if bad:
                raise self.fail(f"x of {where} holds {bad} NaN or infinite value(s)")
        return x

    def _labels(self, raw: np.ndarray, x: np.ndarray, where: str) -> np.ndarray:
        if raw.ndim != 1:
            raise self.fail(
                f"y of {where} has shape {raw.shape}; labels are one integer per example, "
                "shape (N,)"
            )
        if len(raw) != len(x):
            raise self.fail(
                f"{where}: x holds {len(x)} examples but y holds {len(raw)} labels; give one "
                "label per example"
            )
        try:
            return integer_labels(raw, f"y of {where}")
        except ValueError as error:
            raise self.fail(str(error)) from None

    def _same_input_shape(self, raw: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        train = raw["train"][0].shape[1:]
        for split, (x, _) in raw.items():
            if x.shape[1:] != train:
                raise self.fail(
                    f"x of split {split!r} holds examples of shape {x.shape[1:]}, split 'train' "
                    f"of shape {train}; every split needs the same input shape"
                )

    # ------------------------------------------------------------ classes

    def _classes(self, labels: np.ndarray, where: str) -> int:
        try:
            return class_indices(labels, where)
        except ValueError as error:
            raise self.fail(str(error)) from None

    def _class_names(self, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
            raise self.fail(f"'class_names' must be a sequence of strings, got {value!r}")
        names = list(value)
        wrong = [name for name in names if not isinstance(name, str)]
        if wrong:
            raise self.fail(f"'class_names' must hold strings, got {wrong[0]!r}")
        if len(names) < 2:
            raise self.fail(f"'class_names' names {len(names)} class(es); a classifier needs 2")
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise self.fail(f"'class_names' names {', '.join(map(repr, twice))} more than once")
        return tuple(names)

    def _every_class_in_train(self, labels: np.ndarray, names: tuple[str, ...]) -> None:
        self._within(labels, "train", names)
        absent = np.setdiff1d(np.arange(len(names)), labels)
        if len(absent):
            shown = ", ".join(f"{c} ({names[c]!r})" for c in absent[:_SHOWN].tolist())
            more = ", …" if len(absent) > _SHOWN else ""
            raise self.fail(
                f"split 'train' has no example of {len(absent)} class(es): {shown}{more}; every "
                f"class of 'class_names' ({len(names)}) needs an example in train"
            )

    def _within(self, labels: np.ndarray, split: str, names: tuple[str, ...]) -> None:
        outside = labels[(labels < 0) | (labels >= len(names))]
        if len(outside):
            raise self.fail(
                f"y of split {split!r} holds label {int(outside[0])}, outside 0..{len(names) - 1} "
                f"(the {len(names)} classes: one more than train's largest label, or "
                "'class_names')"
            )

    # ------------------------------------------------------------ provenance

    def _source(
        self,
        options: dict[str, Any],
        arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
        form: str,
        names: tuple[str, ...],
        standardise: bool,
    ) -> dict[str, Any]:
        n_examples = sum(len(x) for x, _ in arrays.values())
        first = next(iter(arrays.values()))[0]
        return {
            "name": self.entry_point,
            "entry_point": self.entry_point,
            "options": options,
            "digest": arrays_digest(arrays),
            "form": form,
            "splits": [split for split in arrays if split != "pool"],
            "n_examples": n_examples,
            "x_shape": [n_examples, *first.shape[1:]],
            "class_names": list(names),
            "standardise": standardise,
        }


def arrays_digest(arrays: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """sha256 over each split's x then y: the split's name, the array's dtype and shape, then
    its bytes in C order."""
    digest = hashlib.sha256()
    for split, pair in arrays.items():
        for array in pair:
            header = f"{split}\0{array.dtype.str}\0{array.shape}\0".encode()
            digest.update(header)
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()
