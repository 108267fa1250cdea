"""Ray for embtool (the `ray` extra: `pip install 'embtool[ray]'`): only what runs on Ray.

- `session(address)`: Ray for the duration of a `with` block. `"local"` starts a Ray on this machine that listens
  on 127.0.0.1 only and keeps its files in a private temporary folder, both gone when the block ends; `"auto"` or
  `HOST:PORT` joins a cluster within a bounded wait. Ray's failures become one `ClusterError` line.
- `embed_dataset(ds, model, ...)`: a Ray Data `Dataset` in, the same dataset with a vector column out.
- `embed_blocks(blocks, model, ...)`: blocks of texts embedded by a pool of model actors, results in input order,
  a bounded number of blocks in flight (what `embtool embed --ray` runs; `embtool.jobs.embed_ray` reads, numbers
  and writes).
- `search_files(paths, queries, req, threads)`: each index file scored in a Ray task (`search --ray`).

Importing this package checks once that Ray is installed and says how to install it when it is not.
"""

from __future__ import annotations

try:
    import ray as _ray  # noqa: F401  (the top-level Ray package: imports are absolute)
except ImportError:
    from embtool.core.errors import InputError

    raise InputError("Ray is not installed: pip install 'embtool[ray]'") from None

from embtool.ray.cluster import LOOPBACK, session  # noqa: E402
from embtool.ray.embed import FAULT_ENV, embed_blocks, embed_dataset  # noqa: E402
from embtool.ray.search import search_files  # noqa: E402

__all__ = ["FAULT_ENV", "LOOPBACK", "embed_blocks", "embed_dataset", "search_files", "session"]
