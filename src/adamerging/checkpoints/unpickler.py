"""The restricted unpickler `load_checkpoint` reads pickles with: tensors, parameters and plain
containers are rebuilt (an allow-list of callables, numpy's array and scalar rebuilders checked on
their arguments); every other class becomes an inert `StandIn` that only keeps its pickled
attributes; a file that names any other callable is refused (CheckpointError) before it runs.
`restricted_pickle` is the "pickle module" torch.load takes."""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
import types
from typing import Any

import torch

from adamerging.runtime.errors import CheckpointError

# Callables a legitimate checkpoint needs: tensor/parameter rebuilders and plain containers.
_SAFE_CALLABLES: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
}


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> Any:
    """numpy.dtype(spec, ...) as numpy pickles it, for a type-code string only; no object dtype."""
    import numpy as np

    if not isinstance(spec, str) or spec.startswith("O"):
        raise CheckpointError(f"refused numpy.dtype({spec!r}): only plain type codes are data")
    return np.dtype(spec, align, copy)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """A numpy scalar from its dtype and raw bytes (`numpy.core.multiarray.scalar`)."""
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise CheckpointError("refused a numpy scalar that is not plain bytes of a plain dtype")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(subtype: Any, shape: Any, typecode: Any) -> Any:
    """The empty array numpy's pickles fill with their state (`_reconstruct`): ndarray only."""
    import numpy as np

    if subtype is not np.ndarray:
        raise CheckpointError(f"refused numpy _reconstruct of {subtype!r}: only numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, typecode)


def _latin1(text: Any, encoding: str = "latin1") -> bytes:
    """`_codecs.encode(text, "latin1")`: how protocol-2 pickles spell bytes (numpy's raw data)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"refused _codecs.encode(..., {encoding!r}): only latin1 text")
    return text.encode("latin1")


def _numpy_callables() -> dict[tuple[str, str], Any]:
    """numpy's plain data (scalars, dtypes, arrays) as training checkpoints of open_clip and timm
    hold them (epoch counters, args, metrics): the rebuilders, checked, under both module names."""
    import numpy as np

    out: dict[tuple[str, str], Any] = {
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(module, "scalar")] = _numpy_scalar
        out[(module, "_reconstruct")] = _numpy_reconstruct
    return out


_SAFE_CALLABLES.update({("_codecs", "encode"): _latin1, **_numpy_callables()})


# Classes whose pickled form is a call with plain arguments (enum members in torchvision
# transforms); calling their stand-in only records the arguments.
_INERT_CALLS = {
    ("torchvision.transforms.functional", "InterpolationMode"),
    ("torchvision.transforms.transforms", "InterpolationMode"),
    ("torchvision.transforms.v2.functional", "InterpolationMode"),
    ("torch", "device"),
}


class _StandInMeta(type):
    def __call__(cls, *args, **kwargs):
        if (cls._pickled_module, cls._pickled_name) in _INERT_CALLS:
            obj = cls.__new__(cls)
            obj.__dict__["_pickled_args"] = args
            return obj
        raise CheckpointError(
            f"refused to call {cls._pickled_module}.{cls._pickled_name}: checkpoints may only"
            " rebuild tensors and containers, and this one tries to run code"
        )


class StandIn(metaclass=_StandInMeta):
    """An inert object in place of a pickled class instance: keeps its state, runs nothing."""

    _pickled_module = ""
    _pickled_name = ""

    def __new__(cls, *args, **kwargs):  # NEWOBJ path: no constructor code runs
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        if (
            isinstance(state, tuple)
            and len(state) == 2
            and (state[0] is None or isinstance(state[0], dict))
        ):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_pickled_state"] = state

    def __repr__(self) -> str:
        return f"<stand-in for {self._pickled_module}.{self._pickled_name}>"


_stand_ins: dict[tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    key = (module, name)
    if key not in _stand_ins:
        _stand_ins[key] = _StandInMeta(
            name, (StandIn,), {"_pickled_module": module, "_pickled_name": name}
        )
    return _stand_ins[key]


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg._reconstructor (pickle protocols 0/1) re-implemented for stand-ins only.
    if not (isinstance(cls, type) and issubclass(cls, StandIn)) or base is not object:
        raise CheckpointError(f"refused copyreg._reconstructor({cls!r}, {base!r})")
    return cls.__new__(cls)


# torch.serialization.MAGIC_NUMBER: the first pickle of a legacy-container file.


# The C unpickler's own slot, which torch's loaders assign and the unpickler calls.
_C_UNPICKLER_PERSISTENT_LOAD = pickle.Unpickler.__dict__["persistent_load"]


# Storage classes the legacy tar container names in its storage list (torch maps them to dtypes).
_STORAGE_TYPES = frozenset(
    f"{kind}Storage"
    for kind in (
        "Double",
        "Float",
        "Half",
        "BFloat16",
        "Long",
        "Int",
        "Short",
        "Char",
        "Byte",
        "Bool",
    )
)


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python 2 modules (`__builtin__.set`); map them as pickle itself
        # does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _SAFE_CALLABLES:
            return _SAFE_CALLABLES[(module, name)]
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and name in _STORAGE_TYPES:  # the legacy tar container's storage list
            return torch.serialization.StorageType(name)
        return _stand_in(module, name)

    # torch's legacy loaders (`_use_new_zipfile_serialization=False`, and the older tar container)
    # hand each pickled module class, with the source text saved beside it, to
    # `_check_container_source`, which runs `inspect` on the class and fails on a stand-in
    # (AttributeError 'dump_patches'). The zip loader skips that check; skipping it here too makes
    # every container load the same way.
    @property
    def persistent_load(self) -> Any:
        return _C_UNPICKLER_PERSISTENT_LOAD.__get__(self)

    @persistent_load.setter
    def persistent_load(self, torch_persistent_load: Any) -> None:
        def without_source_check(saved_id: Any) -> Any:
            if isinstance(saved_id, tuple) and saved_id:
                kind = (
                    saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
                )
                # ("module", class, source file, source)
                if kind == "module" and len(saved_id) == 4:
                    return saved_id[1]
                # tar container: (class, file, source)
                if isinstance(kind, type) and len(saved_id) == 3:
                    return saved_id[0]
            return torch_persistent_load(saved_id)

        _C_UNPICKLER_PERSISTENT_LOAD.__set__(self, without_source_check)


# torch.load accepts a "pickle module": anything with Unpickler and load.
restricted_pickle = types.ModuleType("adamergingrestricted_pickle")


restricted_pickle.Unpickler = RestrictedUnpickler


restricted_pickle.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()


restricted_pickle.__dict__["__name__"] = "adamergingrestricted_pickle"
