"""Scan discovery, conform transforms (MONAI wrapping SimpleITK), QC, caching and native-space mapping.

Modules (import what you need; this package imports nothing heavy by itself):

- :mod:`~ermoe_ba.data.discovery`: ``discover``, ``ScanRecord``, ``read_age_table``
- :mod:`~ermoe_ba.data.conform`: ``Conformer``, ``ConformResult``, ``conform_records``
- :mod:`~ermoe_ba.data.transforms`: MONAI ``ConformT1`` / ``ConformT1d``
- :mod:`~ermoe_ba.data.native`: ``to_native`` (model-grid map back to the scan's own grid)
- :mod:`~ermoe_ba.data.cache`: ``default_cache_dir`` and the content-keyed cache
- :mod:`~ermoe_ba.data.qc`: the similarity score and the failed-registration rule
- :mod:`~ermoe_ba.data.io`, :mod:`~ermoe_ba.data.registration`, :mod:`~ermoe_ba.data.pipeline`:
  loading and validation, N4 and registration, the ordered stages
"""

from __future__ import annotations
