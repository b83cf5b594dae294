"""The unlearning engine: a plain library (no HTTP, no Celery, no database) that the
service, the CLI, the tests and the benchmarks call. Its rooms:

- ``ledger``, ``sources``, ``datasets``: the owner-keyed dataset store, where data comes
  from, import and erasure;
- ``plans``, ``planning``: the typed plan of a pass and how it is cut;
- ``sisa``, ``training``, ``nets``, ``checkpoints``, ``shards``, ``approximate``,
  ``unlearning/``: running one shard, exactly (SISA) or approximately (a method);
- ``candidate``, ``verification``, ``metrics``, ``evidence``: the version record, its
  verification metrics, and re-deriving the evidence from stored bytes;
- ``publishing``: the next immutable version in ``models_store``;
- ``engine.Engine``: the front door that holds the collaborators and runs whole passes.

Architectures, dataset sources, aggregations and unlearning methods are registries
(``registry.Registry``): an extension is one file and one registration line.
"""
from workers.engine.errors import *  # noqa: F403  (the error family, re-exported)
from workers.engine.errors import __all__  # noqa: F401
