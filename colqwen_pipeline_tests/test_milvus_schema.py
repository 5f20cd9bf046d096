"""What the Milvus implementation needs of a server, below the index interface."""

from __future__ import annotations

from colqwen_pipeline.index.milvus_schema import server_version


class ReportsVersion:
    """Stands in for a client: the bug needs a new client at the address of a collected one, which
    real clients (tens of objects each) reach only by chance; a small object reaches it every few tries."""

    def __init__(self, version: str):
        self.version = version

    def get_server_version(self) -> str:
        return self.version


def test_a_new_client_at_a_collected_clients_address_is_asked_its_own_version():
    for _ in range(200):
        old = ReportsVersion("v2.4.1")
        assert server_version(old) == (2, 4)
        address = id(old)
        del old  # freed at once (no cycles)
        new = ReportsVersion("v2.3.5")
        if id(new) == address:
            break
    else:
        raise AssertionError("no client was made at a collected one's address in 200 tries")
    assert server_version(new) == (2, 3)  # was (2, 4): the cache was keyed by id(client)


def test_versions_are_parsed_from_servers_and_lite():
    assert server_version(ReportsVersion("v2.3.5")) == (2, 3)
    assert server_version(ReportsVersion("2.6.4-rc1")) == (2, 6)
    assert server_version(ReportsVersion("milvus_lite-3.2.2")) == (0, 0)  # Lite: never held to MIN_SERVER
