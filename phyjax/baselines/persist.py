"""Saving and loading fitted baselines: constructor arguments (JSON) + fitted attributes (NumPy).

scikit-learn's convention: what ``fit`` learns is stored in attributes ending in ``_``; everything
else comes from the constructor.  :class:`Persistent` writes the constructor arguments to
``params.json`` and every fitted attribute to ``state.npz`` (no pickle, so a saved baseline is
plain data), and :meth:`Persistent.load` rebuilds an equal object.  A class whose fitted state
holds something that is not an array (Nyúl's upstream normalizer) overrides :meth:`_save_extra` /
:meth:`_load_extra`.
"""

from __future__ import annotations

import inspect
import json
import os

import numpy as np


class Persistent:
    """Mixin: ``save(directory)`` and ``cls.load(directory)`` for fitted baselines."""

    #: fitted attributes that are not plain arrays (rebuilt by :meth:`_load_extra`)
    _not_saved: tuple[str, ...] = ()

    def get_params(self) -> dict:
        """The constructor arguments, read back from the attributes of the same names."""
        params = inspect.signature(type(self).__init__).parameters.values()
        names = [p.name for p in params if p.name != "self" and p.kind in
                 (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        return {name: getattr(self, name) for name in names}

    def fitted_state(self) -> dict[str, np.ndarray]:
        """Every fitted attribute (name ending in ``_``) as an array."""
        return {k: np.asarray(v) for k, v in vars(self).items()
                if k.endswith("_") and not k.startswith("_") and k not in self._not_saved}

    def save(self, directory: str) -> str:
        """Write ``params.json`` and ``state.npz`` into ``directory`` (created).  Returns it."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "params.json"), "w") as f:
            json.dump(self.get_params(), f, indent=2)
        np.savez(os.path.join(directory, "state.npz"), **self.fitted_state())
        self._save_extra(directory)
        return directory

    @classmethod
    def load(cls, directory: str):
        """The object :meth:`save` wrote into ``directory``."""
        with open(os.path.join(directory, "params.json")) as f:
            obj = cls(**json.load(f))
        with np.load(os.path.join(directory, "state.npz")) as state:
            for k in state.files:
                v = state[k]
                setattr(obj, k, v.item() if v.ndim == 0 else
                        (v.tolist() if v.dtype.kind in "US" else v))
        obj._load_extra(directory)
        return obj

    def _save_extra(self, directory: str) -> None:
        pass

    def _load_extra(self, directory: str) -> None:
        pass

