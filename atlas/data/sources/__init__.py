"""Image sources and robust decoding for the collect stage.

Contract
--------
A *source* (:class:`ImageSource`, made by :func:`open_source`) is a fixed, ordered list of images.
Each image has an :class:`ImageRef`: ``index`` (0..N-1, stable for the same source), ``key`` (what
is shown and stored) and ``label`` (ImageNet class index, or -1 when unknown). Sources are
picklable and read lazily, so a ``torch.utils.data.DataLoader`` can read them from worker
processes.

Sources understood by :func:`open_source`:

- **a folder**: walked recursively (symlinked folders followed once), files whose extension is in
  :data:`IMAGE_EXTENSIONS` (case-insensitive) sorted by their relative POSIX path, which is also
  their ``key``. Other files and hidden entries (names starting with ``.``) are skipped and
  counted in ``source.ignored_files``. A name that is not UTF-8 (Linux names are bytes) is kept:
  its key holds the bytes as surrogate escapes, as ``os.listdir`` gives them, so
  ``os.path.join(root, key)`` opens the file (``activations.h5`` stores those bytes as they are).
- **a list file** (any text file that is not ``.csv``, e.g. ``.txt`` or ``.lst``): one path a line,
  relative paths resolved against the list file's folder, an optional tab-separated label column
  (an integer index, a WordNet id or a class name; further columns are ignored), blank lines and
  ``#`` comments skipped. Listed files that do not exist are kept: they fail at decode time with
  reason ``"missing file"``. The ``key`` is the path as written.
- **tar shards**: a ``.tar`` file, a glob such as ``"shards/*.tar"`` or a list of ``.tar`` paths.
  Shards are taken in sorted order, image members in archive order; the ``key`` is
  ``"<shard>::<member>"`` with the shard relative to the shards' common folder. Members are read
  by their stored offset, so shards must be uncompressed (as WebDataset writes them).
- a single image file, or a glob / list of image files (kept in the order given, globs sorted).

A source without a single image raises :class:`EmptySourceError` (a ``ValueError``) saying what
was searched and what is accepted; a path that does not exist raises ``ValueError``.

Labels: a WebDataset-style ``<key>.cls`` member beside a tar member, else the list file's label
column, else an ImageNet WordNet id (``n\\d{8}``, one of :func:`atlas.resources.imagenet_wnids`)
at the start of the file name (``n01440764_tench.JPEG``) or as the name of an enclosing folder
(``train/n01440764/x.jpg``; for tar shards the shard's own name counts as a folder), else -1.

Decoding and its skip reasons are in :mod:`atlas.data.decoding`, labels in :mod:`atlas.data.labels`,
reading images of a source for a ``DataLoader`` in :mod:`atlas.data.loader`.

The package, one idea a module: :mod:`~atlas.data.sources.base` (:class:`ImageRef`,
:class:`ImageSource`, :class:`EmptySourceError`, :data:`IMAGE_EXTENSIONS`),
:mod:`~atlas.data.sources.folder` (:class:`FolderSource` and :func:`list_photos`),
:mod:`~atlas.data.sources.lists` (:class:`ListSource`), :mod:`~atlas.data.sources.tar`
(:class:`TarSource`) and :mod:`~atlas.data.sources.spec` (:func:`open_source`).
"""

from atlas.data.sources.base import IMAGE_EXTENSIONS, EmptySourceError, ImageRef, ImageSource
from atlas.data.sources.base import PathLike as PathLike  # public in the module this package was, not in __all__
from atlas.data.sources.folder import FolderSource, list_photos
from atlas.data.sources.lists import ListSource
from atlas.data.sources.spec import SourceSpec, open_source
from atlas.data.sources.tar import TarSource

__all__ = ["IMAGE_EXTENSIONS", "EmptySourceError", "FolderSource", "ImageRef", "ImageSource", "ListSource", "list_photos",
           "SourceSpec", "TarSource", "open_source"]
