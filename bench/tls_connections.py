"""RSS of 20 more PyMySQL connections: PyMySQL's own Connection against django-pdr's
(one shared "preferred" TLS context a process).

    python tests/live_servers.py run --only mysql -- python bench/tls_connections.py plain
    python tests/live_servers.py run --only mysql -- python bench/tls_connections.py shared
"""
import os, sys, gc
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
def rss():
    for l in open("/proc/self/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])/1024
import pymysql
from pymysql.connections import Connection
from django_pdr.dialects.mysql import _pymysql_connection_class
cls = _pymysql_connection_class() if sys.argv[1] == "shared" else Connection
kw = dict(host=os.environ["PDR_TEST_MYSQL_HOST"], port=int(os.environ["PDR_TEST_MYSQL_PORT"]), user=os.environ["PDR_TEST_MYSQL_USER"], password=os.environ["PDR_TEST_MYSQL_PASSWORD"], database=os.environ["PDR_TEST_MYSQL_DB"])
c0 = cls(**kw); gc.collect(); base = rss()
conns = [cls(**kw) for _ in range(20)]
gc.collect()
print(sys.argv[1], f"20 more connections: +{rss()-base:.1f} MB", "session encrypted (the server offered TLS):", conns[0]._sock.__class__.__name__ == "SSLSocket")
