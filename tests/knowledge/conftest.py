"""A database of the knowledge tests' own: no app runs an indexer on it, so documents added here
are indexed (or retried) only by the indexer a test drives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from papo.db.engine import Database
from tests.conftest import ProvisionedDatabase, drop_database, provision


@pytest.fixture(scope="session")
async def quiet_database(database: ProvisionedDatabase, tmp_data_dir: Path) -> AsyncIterator[ProvisionedDatabase]:
    provisioned = await provision(database.owner_url.set(database=None), tmp_data_dir)
    yield provisioned
    await drop_database(provisioned.admin_url, provisioned.owner_url.database, provisioned.app_url.username)


@pytest.fixture
async def quiet_db(quiet_database: ProvisionedDatabase) -> AsyncIterator[Database]:
    pool = Database(quiet_database.app_url, pool_size=2)
    yield pool
    await pool.dispose()
