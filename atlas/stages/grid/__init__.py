"""The grid stage: bin a layout into square cells and summarise each cell.

Carter et al., "Activation Atlas" (Distill 2019): the 2-D layout of the activations is covered
by a ``size x size`` grid; every cell with enough activations gets the *mean* activation
vector of its rows (the direction its icon visualises), a count, the classes its rows are
attributed to on average, and a few dataset examples. Several sizes are the zoom levels.

Conventions (shared by every function here)

- ``xy`` is ``(N, 2)`` in ``[0, 1]``: column 0 is x, column 1 is y.
- Bins are half-open, ``[k/size, (k+1)/size)``, so a point on a border belongs to exactly one
  cell, except that 1.0 falls in the last bin. Borders are compared in the dtype of ``xy``
  (float32 stays float32, so ``float32(0.7)`` at size 10 is in bin 7).
- Cell ids are row-major: ``cell_id = iy * size + ix``; ``coords`` are ``(iy, ix)``.
- Everything is vectorised (``np.bincount``, sorting and segment reductions); no Python loop
  runs over cells or rows. Activations are reduced in row chunks, so a million float16 rows
  never exist as one float32/float64 array.

The package, one idea a module: :mod:`~atlas.stages.grid.settings` (the defaults,
:class:`GridSettings`, the size check and the memory estimate), :mod:`~atlas.stages.grid.cells`
(the pure functions: binning, coordinates, ancestors, cell means, attribution and examples),
:mod:`~atlas.stages.grid.accumulators` (the chunked per-cell sums and example selection they and
the stage share) and :mod:`~atlas.stages.grid.stage` (the stage over files, :func:`grid_file`).
"""

from atlas.stages.grid.cells import (
    ancestor_rows,
    cell_attribution,
    cell_coords,
    cell_examples,
    cell_means,
    grid_cells,
)
from atlas.stages.grid.settings import (
    DEFAULT_EXAMPLES,
    DEFAULT_MIN_COUNT,
    DEFAULT_SIZES,
    DEFAULT_TOP_K,
    MAX_GRID_SIZE,
    GridSettings,
    grid_memory_bytes,
)

# MEMORY_SHARE and check_grid_sizes: public in the module this package was, but not in its __all__
# (atlas.stages.classes imports check_grid_sizes from here)
from atlas.stages.grid.settings import MEMORY_SHARE as MEMORY_SHARE
from atlas.stages.grid.settings import check_grid_sizes as check_grid_sizes
from atlas.stages.grid.stage import EmptyGridError, GridSummary, grid_file

__all__ = [
    "DEFAULT_EXAMPLES",
    "DEFAULT_MIN_COUNT",
    "DEFAULT_SIZES",
    "DEFAULT_TOP_K",
    "MAX_GRID_SIZE",
    "EmptyGridError",
    "GridSettings",
    "GridSummary",
    "ancestor_rows",
    "cell_attribution",
    "cell_coords",
    "cell_examples",
    "cell_means",
    "grid_cells",
    "grid_file",
    "grid_memory_bytes",
]
