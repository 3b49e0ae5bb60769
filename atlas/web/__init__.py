"""The atlas in a browser: the HTTP server, the static export, notebooks, and the viewer.

- :mod:`atlas.web.serve`: a read-only HTTP server with a JSON API (``atlas serve``)
- :mod:`atlas.web.export`: a static site of one or more atlases (``atlas export``)
- :mod:`atlas.web.notebook`: :func:`~atlas.web.notebook.show` in Jupyter
- ``atlas/web/viewer/``: the viewer's HTML, JS and CSS (Leaflet vendored), package data

This package exports nothing itself; the public names are in :mod:`atlas`.
"""
