"""Layouts: how a pruned model's config states its layers' sizes, and so what a plan may remove.

* ``uniform`` (:mod:`.uniform`): every layer the same sizes, in the family's stock config;
* ``per_layer`` (:mod:`.per_layer`): each layer its own sizes, in slimformer's bundled modelling
  code (``trust_remote_code=True``);
* ``nemotron_nas`` (:mod:`.nemotron_nas`): per-layer shapes in NVIDIA's Nemotron-NAS format, which
  vLLM and llama.cpp serve (Llama).

Each is an object with the hooks of :class:`Layout`; :func:`layout_for` finds it by name, so the
planning, removal and schedules never branch on a layout's name.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.errors import InvalidSpec
from slimformer.pruning.layouts.nemotron_nas import NemotronNas
from slimformer.pruning.layouts.per_layer import PerLayer
from slimformer.pruning.layouts.uniform import Uniform
from slimformer.pruning.types import LayoutName, PruningPlan, PruningTarget, UnitRequest, Units


class Layout(Protocol):
    """What a layout lets a plan remove, and how it writes the config."""

    name: str
    # heads go as whole attention blocks, chosen by each block's measured influence
    removes_attention_blocks: bool

    def check(self, adapter: ModelAdapter, target: PruningTarget) -> None:
        """Refuse, before anything is scored or removed, a target the layout cannot express."""
        ...

    def check_compensation(self, adapter: ModelAdapter, target: PruningTarget, method: str) -> None:
        """Refuse the output biases that ``method``'s bias compensation would set, where the layout
        cannot state them."""
        ...

    def refit_bias(self, adapter: ModelAdapter, target: PruningTarget) -> bool:
        """Whether a least-squares refit may set an output bias (else it goes through the
        origin)."""
        ...

    def choose_units(self, request: UnitRequest) -> Units:
        """The units of one candidate plan, within what the layout can state."""
        ...

    def check_plan(self, model: nn.Module, adapter: ModelAdapter, plan: PruningPlan) -> None:
        """Refuse, before anything is removed, a finished plan whose sizes the layout cannot
        state."""
        ...

    def apply(self, model: nn.Module) -> None:
        """Rewrite ``model.config`` (and where needed the model's class) from the layers' real
        sizes."""
        ...


LAYOUTS: dict[str, Layout] = {
    layout.name: layout for layout in (Uniform(), PerLayer(), NemotronNas())
}
# what plans, prune_model and the schedules write unless told otherwise
DEFAULT_LAYOUT: LayoutName = "per_layer"
# the layout of a model whose layers all keep one shape (depth pruning, distillation): stock config
STOCK_LAYOUT: LayoutName = "uniform"


def layout_for(name: str) -> Layout:
    """The layout called ``name``.

    Raises:
        InvalidSpec: no layout has that name.
    """
    try:
        return LAYOUTS[name]
    except KeyError:
        raise InvalidSpec(
            f"layout must be one of {', '.join(LAYOUTS)}, got {name!r}",
            details={"field": "layout"},
        ) from None


def apply_layout(model: nn.Module, layout: LayoutName) -> None:
    """Rewrite ``model.config`` from the layers' real sizes, in the chosen layout.

    ``uniform`` sets the stock global attributes (every layer must agree); ``per_layer`` writes
    ``per_layer_config`` and points ``auto_map`` at the bundled modelling code; ``nemotron_nas``
    writes Nemotron-NAS ``block_configs``.
    """
    layout_for(layout).apply(model)
