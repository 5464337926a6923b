"""The results store: stdlib sqlite3 in WAL mode. Runs, per-example outcomes, resume.

A run is one model x data slice x norm x attack cascade x eps sweep x seed, keyed by a hash of all of them.
Outcomes are committed batch by batch, so a killed run resumes where it stopped; concurrent writers of the
same run insert the same rows, and the primary key keeps exactly one of each.

Schema 2 adds ``checks`` (gradient-masking diagnostics per model, with their evidence) and ``attack_stats``
(model queries per attack). Schema 3 adds ``runs.data_sha256``, a fingerprint of the examples a run read,
which is part of its key: runs stored before it cannot say which data they came from, so migration marks
them ``stale`` (kept, never read as results, recomputed by the next evaluation). Schema 4 adds provenance:
``runs.machine`` (the machine that computed the run) and ``runs.origin`` (JSON naming the archive a run was
imported from and when; empty for a run computed in this store). Schema 5 adds ``models``: what a model's
pages need from its checkpoint (learned activation parameters, curves, shape), recorded when it is
evaluated, so that reports are drawn from the store alone. An older store is migrated
in place when opened for writing, after a copy of it is kept beside it; a store from a newer robench is
refused and never written. Reading (``readonly``) works on a read-only file system too.

The store is one class made of three parts: ``database.py`` (the file: schema, migrations, transactions),
``runs.py`` (runs, outcomes, flags, stages, query counts) and ``models.py`` (checks and records per model).
The whole schema and its migrations stay in database.py, so a change of the schema is made in one place.
"""

from __future__ import annotations

from .database import DEFAULT_STORE, PROVENANCE, RUN_FIELDS, SCHEMA, SCHEMA_VERSION, STAGES, store_path
from .models import ModelTables
from .runs import RunTables

__all__ = [
    "DEFAULT_STORE",
    "PROVENANCE",
    "RUN_FIELDS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STAGES",
    "Store",
    "store_path",
]


class Store(RunTables, ModelTables):
    """One results store (a path, or $ROBENCH_STORE, or results/robench.sqlite), opened for writing or with
    ``readonly``; usable as a context manager."""

    def __enter__(self) -> Store:
        return self
