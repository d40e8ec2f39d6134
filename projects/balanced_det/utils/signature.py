"""Constructor signatures of detectron2 subclasses that take ``**kwargs``."""
from __future__ import annotations

import inspect

__all__ = ["with_base_signature"]


def with_base_signature(cls):
    """Class decorator: ``inspect.signature(cls)`` lists the class's own keyword arguments
    plus those of its detectron2 base (instead of ``**kwargs``), so LazyConfig override checks
    and users see every valid argument."""
    own = inspect.signature(inspect.unwrap(cls.__init__))
    params = [p for p in own.parameters.values() if p.kind != p.VAR_KEYWORD]
    names = {p.name for p in params}
    for base in cls.__mro__[1:]:  # up the bases while each passes **kwargs on
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        base_params = inspect.signature(inspect.unwrap(init)).parameters.values()
        for p in base_params:
            if p.name not in names and p.name != "self" and p.kind not in (p.VAR_KEYWORD,
                                                                          p.VAR_POSITIONAL):
                params.append(p.replace(kind=p.KEYWORD_ONLY))
                names.add(p.name)
        if not any(p.kind == p.VAR_KEYWORD for p in base_params):
            break
    params.sort(key=lambda p: p.kind)  # positional first, keyword-only after
    cls.__init__.__signature__ = own.replace(parameters=params)
    return cls
