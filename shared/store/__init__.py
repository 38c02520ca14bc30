"""kitrelay's database: tables (`models`), engines and migrations (`engine`), ChatKit's Store (`chatkit_store`).

Only the engine helpers are re-exported: importing them must stay cheap and must not import chatkit, because
Alembic's env.py imports this package too.
"""

from kitrelay.shared.store.engine import make_engine, make_sessionmaker, migrate, migrate_async

__all__ = ["make_engine", "make_sessionmaker", "migrate", "migrate_async"]
