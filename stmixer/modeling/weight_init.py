"""fvcore's Caffe2-style weight initializers, imported without the warning fvcore's package import prints.

Importing ``fvcore.nn`` runs ``torch.jit.script`` on a loss function, which recent torch
releases answer with a FutureWarning on every command; it says nothing about this project.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    from fvcore.nn.weight_init import c2_msra_fill, c2_xavier_fill

__all__ = ["c2_msra_fill", "c2_xavier_fill"]
