"""JSON as strict readers take it: no NaN, no Infinity.

Python's json writes float('nan') as `NaN` and float('inf') as `Infinity`, which jq, browsers,
Go and most JSON libraries refuse, so one non-finite figure would make a whole results file
unreadable to them. Every file the project writes goes through `dumps`: a value that JSON
cannot represent is written as null, and the caller is told where, to say why.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any, where: str = "", replaced: list[str] | None = None) -> Any:
    """`value` with every non-finite float replaced by None; their paths appended to `replaced`."""
    if isinstance(value, float) and not math.isfinite(value):
        if replaced is not None:
            replaced.append(f"{where or 'value'} was {value!r}")
        return None
    if isinstance(value, dict):
        return {k: finite(v, f"{where}.{k}" if where else str(k), replaced) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v, f"{where}[{i}]", replaced) for i, v in enumerate(value)]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps of `finite(value)`: strict JSON whatever the figures."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
