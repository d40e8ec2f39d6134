"""Several torch optimizers stepping as one, for models whose parts train with different
update rules (USW's weighting network: Adam next to the detector's SGD; docs/methods/usw.md).

:func:`split_param_groups` is the config's ``optimizer.params`` (``model`` is set by
``do_train``): detectron2's ``get_default_optimizer_params`` for the parameters no part claims,
one group per named part (parameters whose name matches the part's regular expression).
:class:`CombinedOptimizer` builds one optimizer per part over those groups. It is a
``torch.optim.Optimizer`` whose ``param_groups`` are the sub-optimizers' own groups, so the
LR scheduler (one multiplier for every group, each from its own base LR), gradient clipping
(one global norm over every parameter) and AMP's GradScaler treat it like any optimizer; its
``state_dict`` holds each sub-optimizer's and ``load_state_dict`` restores them.
"""
from __future__ import annotations

import re
from collections import ChainMap
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from detectron2.config.instantiate import locate
from detectron2.solver.build import get_default_optimizer_params

__all__ = ["CombinedOptimizer", "split_param_groups", "DEFAULT_PART"]

#: the name of the part that holds every parameter no other part claims
DEFAULT_PART = "default"


def split_param_groups(model: nn.Module, parts: Mapping[str, str], **kwargs
                       ) -> Dict[str, List[Dict[str, Any]]]:
    """Parameter groups per part: ``parts`` maps a part name to a regular expression searched
    in the parameter names (``re.search``); each part gets one group of its trainable
    parameters, and ``"default"`` gets ``get_default_optimizer_params(model, **kwargs)`` over
    the rest. A pattern that matches nothing, or a parameter claimed by two parts, fails."""
    if DEFAULT_PART in parts:
        raise ValueError(f"parts={dict(parts)!r} is not valid; {DEFAULT_PART!r} is the name of "
                         "the remaining parameters")
    out: Dict[str, List[Dict[str, Any]]] = {}
    claimed: Dict[int, str] = {}
    for name, pattern in parts.items():
        params = []
        for pname, p in model.named_parameters():
            if not p.requires_grad or not re.search(pattern, pname):
                continue
            if id(p) in claimed:
                raise ValueError(f"parameter {pname!r} matches parts {claimed[id(p)]!r} and "
                                 f"{name!r}; expected each parameter in at most one part")
            claimed[id(p)] = name
            params.append(p)
        if not params:
            raise ValueError(f"parts[{name!r}]={pattern!r} is not valid; it matches no "
                             "trainable parameter of the model")
        out[name] = [{"params": params}]
    default = []
    for group in get_default_optimizer_params(model, **kwargs):
        rest = [p for p in group["params"] if id(p) not in claimed]
        if rest:
            default.append({**group, "params": rest})
    out[DEFAULT_PART] = default
    return out


class CombinedOptimizer(torch.optim.Optimizer):
    """One optimizer per part of the model, stepping together.

    Args:
        params: part name -> parameter groups (:func:`split_param_groups`).
        optimizer: the optimizer class (or its dotted name) of the ``"default"`` part,
            default ``torch.optim.SGD``.
        parts: part name -> ``{"type": optimizer class or dotted name, **its arguments}`` for
            every other part of ``params``.
        **kwargs: the ``"default"`` optimizer's arguments (``lr``, ``momentum``, ...), at the
            top level like a plain optimizer's, so ``optimizer.lr=...`` overrides still work.
    """

    def __init__(self, params: Mapping[str, List[Dict[str, Any]]],
                 optimizer: Any = "torch.optim.SGD",
                 parts: Optional[Mapping[str, Mapping[str, Any]]] = None, **kwargs):
        parts = dict(parts or {})
        specs = {DEFAULT_PART: {"type": optimizer, **kwargs}, **parts}
        if set(specs) != set(params):
            raise ValueError(f"parts={sorted(parts)!r} is not valid; expected the parameter "
                             f"parts {sorted(set(params) - {DEFAULT_PART})!r}")
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        for name, spec in specs.items():
            spec = dict(spec)
            cls = spec.pop("type")
            cls = locate(cls) if isinstance(cls, str) else cls
            if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
                raise ValueError(f"parts[{name!r}].type={cls!r} is not valid; expected a "
                                 "torch.optim.Optimizer class")
            if params[name]:
                self.optimizers[name] = cls(params[name], **spec)
        # torch's Optimizer bookkeeping (hooks, profiling) without groups or state of its own.
        torch.optim.Optimizer.__setstate__(self, {"defaults": {}})

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        """Every sub-optimizer's parameter groups (the same dicts: LR changes reach them)."""
        return [g for o in self.optimizers.values() for g in o.param_groups]

    @property
    def state(self):
        """A read-only view of the sub-optimizers' per-parameter state."""
        return ChainMap(*(o.state for o in self.optimizers.values()))

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v!r}" for k, v in self.optimizers.items())
        return f"{type(self).__name__}({parts})"

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group to the sub-optimizer named by its ``"part"`` key (default: the
        ``"default"`` part's)."""
        group = dict(param_group)
        part = group.pop("part", DEFAULT_PART)
        if part not in self.optimizers:
            raise ValueError(f"part={part!r} is not valid; expected one of "
                             f"{sorted(self.optimizers)!r}")
        self.optimizers[part].add_param_group(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers.values():
            o.step()
        return loss

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved = state_dict.get("optimizers") if isinstance(state_dict, Mapping) else None
        if saved is None or set(saved) != set(self.optimizers):
            got = sorted(saved) if isinstance(saved, Mapping) else "a plain optimizer's state"
            raise ValueError(f"optimizer state {got!r} does not match this CombinedOptimizer's "
                             f"parts {sorted(self.optimizers)!r}")
        for k, o in self.optimizers.items():
            o.load_state_dict(saved[k])
