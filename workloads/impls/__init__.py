"""Implementations of a variant: the code that computes its attention (attnbench.workloads.impls.base).

`native` is the variant's own module; the others compute the same attention another way
(a dense masked SDPA, FlexAttention, ...). Importing the package registers the built-ins;
optional ones (flex) register from their own module, loaded by the registry.
"""

from attnbench.workloads.impls import masked_sdpa, native  # noqa: F401
