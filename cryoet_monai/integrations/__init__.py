"""Integrations with other tools' ecosystems.

:mod:`cryoet_monai.integrations.copick`: ``copick inference cryoet-monai``, segmenting the runs of a
copick project (needs the ``copick`` extra, in an environment of its own: see docs/copick.md).

Each integration imports its tool only when used, so ``import cryoet_monai`` never needs them.
"""
