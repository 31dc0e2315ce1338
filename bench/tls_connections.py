"""RSS of 20 more PyMySQL connections: PyMySQL's own Connection against django-pdr's
(one shared "preferred" TLS context a process).

    python tests/live_servers.py run --only mysql -- python bench/tls_connections.py plain
    python tests/live_servers.py run --only mysql -- python bench/tls_connections.py shared
"""
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def main():
    from pymysql.connections import Connection

    from django_pdr.dialects.mysql import _pymysql_connection_class

    kind = sys.argv[1]
    cls = _pymysql_connection_class() if kind == "shared" else Connection
    settings = {"host": os.environ["PDR_TEST_MYSQL_HOST"], "port": int(os.environ["PDR_TEST_MYSQL_PORT"]),
                "user": os.environ["PDR_TEST_MYSQL_USER"], "password": os.environ["PDR_TEST_MYSQL_PASSWORD"],
                "database": os.environ["PDR_TEST_MYSQL_DB"]}
    first = cls(**settings)  # the first connection loads the TLS machinery either way
    gc.collect()
    base = rss_mb()
    more = [cls(**settings) for _ in range(20)]
    gc.collect()
    encrypted = type(more[0]._sock).__name__ == "SSLSocket"
    print(f"{kind}: 20 more connections: +{rss_mb() - base:.1f} MB; "
          f"session encrypted (the server offered TLS): {encrypted}")
    for connection in [first, *more]:
        connection.close()


if __name__ == "__main__":
    main()
