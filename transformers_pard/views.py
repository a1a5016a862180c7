"""Views of a model for the engine's forwards: the same modules, parameters and buffers, with some
modules replaced, and the user's model object left untouched (``prepack.packed_view``,
``attention.gqa_view``)."""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn


def module_view(module: nn.Module, replace: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """A structural copy of ``module`` in which every submodule ``m`` with ``replace(m) is not m`` is swapped
    for that replacement (its subtree is not visited further). Modules on the path to a replacement are
    shallow copies with their own child table (parameters, buffers, hooks and config shared); subtrees
    without one are shared as they are, so the result is ``module`` itself when nothing was replaced."""
    replaced = replace(module)
    if replaced is not module:
        return replaced
    children = {name: None if child is None else module_view(child, replace) for name, child in module._modules.items()}
    if all(children[name] is child for name, child in module._modules.items()):
        return module
    view = copy.copy(module)
    view._modules = children
    return view
