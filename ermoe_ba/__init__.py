"""ermoe-ba: brain age from T1-weighted MRI with an ERMoE mixture-of-experts transformer."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
