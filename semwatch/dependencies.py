"""What to tell a user whose environment lacks a package semwatch imports.

A module missing at start-up is an installation problem, not a crash: the service says
which package is missing and how to install it, in one line, and exits with the
configuration exit code so systemd does not restart it into the same error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

# Import names whose package on PyPI is named otherwise (or needs an extra) — the names
# semwatch and the trainer import; everything else installs under its import name.
_PACKAGES = {
    "skimage": "scikit-image",
    "PIL": "pillow",
    "prometheus_client": "prometheus-client",
    "psycopg": "psycopg[binary]",
    "streamlit_image_coordinates": "streamlit-image-coordinates",
    "torch_tensorrt": "torch-tensorrt",
    "tensorrt": "torch-tensorrt",
    "tomli": "tomli",
}


@dataclass(frozen=True)
class MissingPackage:
    """A module that could not be imported and the package that provides it."""

    module: str
    package: str

    @classmethod
    def from_error(cls, exc: ModuleNotFoundError) -> MissingPackage:
        module = (exc.name or "").split(".")[0] or "?"
        return cls(module, _PACKAGES.get(module, module.replace("_", "-")))

    def message(self) -> str:
        """One line: the package, the environment it is missing from, the install command."""
        return (
            f"the Python package {self.package!r} (module {self.module!r}) is not installed in "
            f"this environment ({sys.prefix}); install it with: {sys.executable} -m pip install "
            f"'{self.package}' (or reinstall semwatch with its dependencies: pip install 'semwatch')"
        )
