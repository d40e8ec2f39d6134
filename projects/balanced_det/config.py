"""Loading LazyConfig files with overrides that are checked, not silently added.

omegaconf creates any key that a ``key=value`` override names, so ``train.max_iters=10`` (a
typo) would be accepted and ignored, and ``model.roi_heads.samplr=...`` would end in a
``TypeError`` when the model is built. :func:`load_config` refuses an override whose key does
not exist, names close matches, and accepts it only when it is

* a key already set in the config,
* a keyword argument of the object the node instantiates (``_target_``): its signature, and
  for a class whose ``__init__`` takes ``**kwargs`` and calls ``super().__init__``, the
  keyword arguments of the base classes' ``__init__`` up the MRO,
* or written ``+key=value`` (explicit addition, e.g. for a ``**kwargs`` that is not passed
  to a base class).
"""
from __future__ import annotations

import difflib
import inspect
import os
from typing import Iterable, List, NamedTuple, Optional

from omegaconf import DictConfig, ListConfig

from detectron2.config import LazyConfig

__all__ = ["load_config", "check_override_keys", "accepted_keywords", "ConfigKeyError"]


class ConfigKeyError(KeyError):
    """An override names a key that neither the config nor its target accepts."""

    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Keywords(NamedTuple):
    """Keyword arguments a callable accepts; ``complete=False``: it also takes ``**kwargs``
    whose destination is not known."""

    names: List[str]
    complete: bool


def _keyword_params(sig: inspect.Signature) -> List[str]:
    return [n for n, p in sig.parameters.items() if n != "self" and p.kind in (
        p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _has_var_keyword(sig: inspect.Signature) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _calls_super_init(init) -> bool:
    """Whether ``init`` calls ``super().__init__`` (then its ``**kwargs`` go to the base)."""
    code = getattr(inspect.unwrap(init), "__code__", None)
    return (code is not None and "__class__" in code.co_freevars and "super" in code.co_names
            and "__init__" in code.co_names)


def accepted_keywords(target) -> Optional[Keywords]:
    """The keyword arguments ``target(...)`` accepts, or None if they cannot be read.

    For a class, ``**kwargs`` of an ``__init__`` that calls ``super().__init__`` are
    followed up the MRO (as detectron2's ``StandardROIHeads`` -> ``ROIHeads``).
    """
    if not inspect.isclass(target):
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            return None
        return Keywords(_keyword_params(sig), not _has_var_keyword(sig))
    names: List[str] = []
    for klass in target.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:  # takes no keyword arguments
            return Keywords(names, True)
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            return Keywords(names, False) if names else None
        names += [n for n in _keyword_params(sig) if n not in names]
        if not _has_var_keyword(sig):
            return Keywords(names, True)
        if not _calls_super_init(init):
            return Keywords(names, False)
    return Keywords(names, True)


def _target_of(node):
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if isinstance(target, str):
        from detectron2.config.instantiate import locate

        try:
            target = locate(target)
        except Exception:  # noqa: BLE001  (an unimportable target fails at instantiate)
            return None
    return target


def _target_name(target) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"


def check_override_keys(cfg, overrides: Iterable[str]) -> None:
    """Raise :class:`ConfigKeyError` for an override naming a key that does not exist."""
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"override {o!r} is not of the form key=value")
        key = o.split("=", 1)[0].strip()
        if key.startswith(("+", "~")):
            continue
        node, path = cfg, []
        for part in key.split("."):
            if isinstance(node, ListConfig):
                if part.isdigit() and int(part) < len(node):
                    node, path = node[int(part)], path + [part]
                    continue
                raise ConfigKeyError(f"override {o!r}: {'.'.join(path)} is a list of "
                                     f"{len(node)} items; {part!r} is not a valid index")
            if not isinstance(node, DictConfig):
                break  # setting inside a plain value: omegaconf reports it
            if part in node:
                node, path = node[part], path + [part]
                continue
            target = _target_of(node)
            accepted = accepted_keywords(target) if target is not None else None
            if accepted is not None and part in accepted.names:
                break
            where = ".".join(path) or "the config"
            if target is not None:
                where += f" ({_target_name(target)})"
            choices = sorted((set(node.keys()) | set(accepted.names if accepted else []))
                             - {"_target_"})
            close = difflib.get_close_matches(part, choices, n=3)
            if accepted is not None and not accepted.complete:
                how = (f" {_target_name(target)} also takes **kwargs, which cannot be checked: "
                       f"write +{key}=... to pass one.")
            else:
                how = f" (Write +{key}=... to add a new key.)"
            raise ConfigKeyError(
                f"override {o!r}: {where} has no key {part!r}"
                + (f"; did you mean {', '.join(close)}?" if close else ".")
                + f" Valid keys: {', '.join(choices)}.{how}"
            )


def load_config(path: str, overrides: Iterable[str] = ()):
    """``LazyConfig.load(path)`` + checked ``LazyConfig.apply_overrides``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"config file {path!r} not found (configs live under configs/, e.g. "
            "configs/Trees/fcos_effnet_lite0_FPN.py)"
        )
    cfg = LazyConfig.load(path)
    overrides = list(overrides or [])
    check_override_keys(cfg, overrides)
    return LazyConfig.apply_overrides(cfg, overrides)
