"""Atlases in a browser: ``atlas serve`` and ``atlas export`` (a static site)."""

from __future__ import annotations

import argparse


def add_serve(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas serve`` to ``sub``."""
    s = sub.add_parser("serve", help="browse atlases in a web browser (read-only HTTP server)")
    s.add_argument("run_dir", help="a run folder, its tiles folder, or a folder of runs")
    s.add_argument("--host", default="127.0.0.1", help="bind address; 0.0.0.0 only when you mean it [%(default)s]")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--open", action="store_true", help="open the page in a browser")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from atlas.web.serve import serve

    serve(args.run_dir, host=args.host, port=args.port, open_browser=args.open,
          ready=lambda server: print(f"serving {args.run_dir} at {server.url} (Ctrl-C stops)", flush=True))
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    """Add ``atlas export`` to ``sub``."""
    s = sub.add_parser("export", help="the atlas as a static site (viewer, tiles, data) for any static file host")
    s.add_argument("run_dir", help="a run folder, its tiles folder, or a folder of runs")
    s.add_argument("out_dir", help="folder to write the site into (new or empty)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    s.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from atlas.web.export import export_site

    print(export_site(args.run_dir, args.out_dir, overwrite=args.overwrite).describe())
    return 0
