"""A throwaway PostgreSQL cluster under a temporary directory, for tests and benchmarks.

The server is the newest installed under /usr/lib/postgresql (Debian 12's
15, Debian 13's 17), or the one whose bin directory LIMPEZA_PG_BIN names.
initdb refuses to run as root, so as root the cluster belongs to the
`postgres` user that Debian's postgresql-N package creates.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg2

ADMIN = "admin"
APP_USER = "app"
APP_PASSWORD = "hunter2-Secret"


def pg_bin():
    """The bin directory of the PostgreSQL server the tests run."""
    if os.environ.get("LIMPEZA_PG_BIN"):
        return os.environ["LIMPEZA_PG_BIN"]
    top = "/usr/lib/postgresql"
    majors = [int(v) for v in (os.listdir(top) if os.path.isdir(top) else [])
              if v.isdigit() and os.path.exists(os.path.join(top, v, "bin", "initdb"))]
    if not majors:
        raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql")
    return os.path.join(top, str(max(majors)), "bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self, timezone="America/Sao_Paulo"):
        self.base = tempfile.mkdtemp(prefix="limpeza-pg-")
        self.data = os.path.join(self.base, "data")
        self.logfile = os.path.join(self.base, "server.log")
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self._pg("initdb", "-D", self.data, "-U", ADMIN, "-A", "trust", "-E", "UTF8",
                 "--locale=C", "-N")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\nport = %d\nlisten_addresses = '127.0.0.1'\n"
                    "unix_socket_directories = '%s'\nfsync = off\n"
                    "full_page_writes = off\n"
                    "timezone = '%s'\nmax_connections = 60\n"
                    "shared_buffers = 256MB\n" % (self.port, self.base, timezone))
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n"
                    "host all %s 127.0.0.1/32 trust\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n" % ADMIN)
        self.start()
        self.sql("CREATE ROLE %s LOGIN PASSWORD %%s" % APP_USER, (APP_PASSWORD,))

    def _pg(self, tool, *args, check=True):
        cmd = [os.path.join(pg_bin(), tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    def start(self):
        self._pg("pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", "60", "start")

    def stop(self, mode="fast"):
        self._pg("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    def destroy(self):
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def admin(self, dbname="postgres"):
        c = psycopg2.connect(host="127.0.0.1", port=self.port, user=ADMIN, dbname=dbname)
        c.autocommit = True
        return c

    def app(self, dbname):
        """A connection like the API's: naive timestamps are written as UTC."""
        c = psycopg2.connect(host="127.0.0.1", port=self.port, user=APP_USER,
                             password=APP_PASSWORD, dbname=dbname,
                             options="-c TimeZone=UTC")
        c.autocommit = True
        return c

    def url(self, dbname):
        return "postgresql://%s:%s@127.0.0.1:%d/%s" % (
            APP_USER, APP_PASSWORD, self.port, dbname)

    def sql(self, query, args=None, dbname="postgres", as_app=False):
        """Runs one statement on a short-lived connection; returns the rows, if any."""
        c = self.app(dbname) if as_app else self.admin(dbname)
        try:
            cur = c.cursor()
            cur.execute(query, args)
            return cur.fetchall() if cur.description else None
        finally:
            c.close()

    def create_db(self, name, schema_sql):
        self.sql("CREATE DATABASE %s OWNER %s" % (name, APP_USER))
        self.sql(schema_sql, dbname=name, as_app=True)
