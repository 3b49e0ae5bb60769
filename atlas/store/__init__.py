"""The HDF5 artifacts of a run, one module per file kind; nothing else reads or writes them.

- :mod:`atlas.store.activations`: ``activations.h5`` (collect)
- :mod:`atlas.store.layout`: ``layout.h5`` (reduce)
- :mod:`atlas.store.cells`: ``cells.h5`` (grid)
- :mod:`atlas.store.icons`: ``icons.h5`` (render)
- :mod:`atlas.store.channel_icons`: channel-icon caches (``atlas channels``)
- :mod:`atlas.store.lineage`: what each artifact was made from, and whether that changed since
"""

from atlas.store.common import (
    ATLAS_VERSION,
    ArtifactError,
    SettingsChangedError,
    StaleInputError,
    is_current,
    settings_hash,
)

__all__ = ["ATLAS_VERSION", "ArtifactError", "SettingsChangedError", "StaleInputError", "is_current", "settings_hash"]
