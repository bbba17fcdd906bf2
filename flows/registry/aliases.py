"""Moving the ``champion`` alias as a compare-and-set: only when the champion is still the one
the decision was made against: two runs that read the same champion and both decide to promote
must not both win, the later one silently.

MLflow has no atomic compare-and-set on aliases, so the move happens under a lock that every
tracking store provides: creating a registered model is refused when the name exists (a unique
key in the store's database, sqlite or PostgreSQL alike). The lock is the registered model
``<name>--alias-lock``, created to enter and deleted to leave; one older than ``STALE_S`` (a
process killed while holding it) is broken.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow.exceptions import MlflowException

STALE_S = 600.0  # the alias move takes well under a second; a lock this old was left by a dead process
WAIT_S = 120.0


class AliasLockTimeout(RuntimeError):
    """Another registration held the alias lock for too long."""


def _lock_name(model: str) -> str:
    return f"{model}--alias-lock"


@contextmanager
def alias_lock(client: mlflow.MlflowClient, model: str, holder: str,
               wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold the alias lock of ``model`` (``holder`` names who, in the lock's description)."""
    name, deadline = _lock_name(model), time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(name, description=f"held by {holder} while it moves aliases of "
                                                             f"{model}; deleted when done")
            break
        except MlflowException as exc:
            if "ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc).lower():
                raise
            _break_if_stale(client, name)
            if time.monotonic() > deadline:
                raise AliasLockTimeout(f"{name} held for over {wait_s:.0f} s; if no registration runs, "
                                       "delete that registered model and rerun") from exc
            time.sleep(0.2)
    try:
        yield
    finally:
        client.delete_registered_model(name)


def _break_if_stale(client: mlflow.MlflowClient, name: str) -> None:
    try:
        found = client.get_registered_model(name)
    except MlflowException:
        return  # released meanwhile
    if time.time() - found.creation_timestamp / 1000 > STALE_S:
        try:
            client.delete_registered_model(name)
        except MlflowException:
            pass  # another waiter broke it first


def champion_version(client: mlflow.MlflowClient, model: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model, "champion").version)
    except MlflowException:
        return None


def move_aliases(client: mlflow.MlflowClient, model: str, version: str, promote: bool,
                 expected_champion: str | None, holder: str) -> tuple[tuple[str, ...], str | None]:
    """Set ``challenger`` to ``version``, and ``champion`` too when ``promote`` and the champion
    is still ``expected_champion``. Returns ``(aliases moved to version, why champion did not
    move)``."""
    with alias_lock(client, model, holder):
        now = champion_version(client, model)
        refused = None
        if promote and now not in (expected_champion, version):  # this version: a retried move
            refused = (f"the champion changed from {expected_champion or 'none'} to version {now} since this "
                       "version was compared: not promoted (rerun registration to compare with the new one)")
        aliases = ("challenger", "champion") if promote and refused is None else ("challenger",)
        for alias in aliases:
            client.set_registered_model_alias(model, alias, version)
    return aliases, refused
