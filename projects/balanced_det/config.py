"""Loading LazyConfig files with overrides that are checked, not silently added.

omegaconf creates any key that a ``key=value`` override names, so ``train.max_iters=10`` (a
typo) would be accepted and ignored. :func:`load_config` refuses an override whose key does
not exist, unless it is a parameter of the object the node instantiates (``_target_``'s
signature) or is written ``+key=value`` (explicit addition), and names close matches.
"""
from __future__ import annotations

import difflib
import inspect
import os
from typing import Iterable, List, Optional

from omegaconf import DictConfig, ListConfig

from detectron2.config import LazyConfig

__all__ = ["load_config", "check_override_keys", "ConfigKeyError"]


_ANY_KEYWORD = "**"


class ConfigKeyError(KeyError):
    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def _target_params(node) -> Optional[List[str]]:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if target is None:
        return None
    if isinstance(target, str):
        from detectron2.config.instantiate import locate

        try:
            target = locate(target)
        except Exception:  # noqa: BLE001
            return None
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    names = [n for n, p in sig.parameters.items()
             if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        names.append(_ANY_KEYWORD)  # **kwargs: any key is a parameter
    return names


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
            params = _target_params(node)
            if params is not None and (part in params or _ANY_KEYWORD in params):
                break
            where = ".".join(path) or "the config"
            choices = sorted((set(node.keys()) | set(params or [])) - {"_target_", _ANY_KEYWORD})
            close = difflib.get_close_matches(part, choices, n=3)
            raise ConfigKeyError(
                f"override {o!r}: {where} has no key {part!r}"
                + (f"; did you mean {', '.join(close)}?" if close else "")
                + f" Valid keys: {', '.join(choices)}. (Write +{key}=... to add a new key.)"
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
