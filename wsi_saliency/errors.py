"""Errors the CLI turns into one readable line and an exit code.

``InputError`` is the user's to fix (a missing file, a wrong format, a bad option): exit 2.
``WsiSaliencyError`` is any other failure the tool understands: exit 1.
Messages say what is wrong, with which file, and what to do.
"""

from __future__ import annotations


class WsiSaliencyError(Exception):
    """A failure the tool understands; the message is shown to the user as is."""

    exit_code = 1


class InputError(WsiSaliencyError):
    """Bad input from the user (file, option, format): a usage error."""

    exit_code = 2


class DataError(InputError):
    """A data file exists but its content is wrong (shape, dtype, labels, unreadable image)."""


class SlideError(WsiSaliencyError):
    """A slide cannot be opened or read, or lacks what scanning needs (e.g. its resolution)."""


class ModelError(InputError):
    """A model file is missing, unreadable or lacks the wsi-saliency metadata."""
