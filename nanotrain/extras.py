"""Optional dependencies: the core install (`pip install .`) leaves them out; each belongs to an extra of
pyproject.toml. Code that needs one imports it through `require`, so a missing package is one line naming the extra
to install instead of a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from nanotrain.errors import UserError

# The extra of pyproject.toml that installs each optional top-level package.
EXTRAS: dict[str, str] = {
    "gradio": "app",
    "gradio_client": "app",
    "evaluate": "metrics",
    "datasets": "metrics",
    "transformers": "hf",
    "matplotlib": "plot",
    "tensorboard": "plot",
}


def require(module: str, what: str) -> ModuleType:
    """Import `module` (a top-level package of `EXTRAS`, or a submodule of one) for `what` (the feature that needs
    it); UserError naming the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the package is there but one of its own dependencies is broken: show the real error
        extra = EXTRAS[top]
        raise UserError(f"{what} needs the optional package {top}: pip install 'nanolab[{extra}]'") from None
