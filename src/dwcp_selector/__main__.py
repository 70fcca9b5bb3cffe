"""``python -m dwcp_selector``: the same as the ``dwcp-selector`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
