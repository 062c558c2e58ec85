"""The certificate toolkit subcommands (csr, convert-pfx, ...): registered into the CLI."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: "argparse._SubParsersAction[Any]") -> None:
    """Add the toolkit's subcommands to the ``lbproxy`` parser."""
