"""A real PgBouncer (Debian's package) in front of a PgCluster, in transaction
mode with a small pool, as Supabase's Supavisor on port 6543 is: each
transaction of a client may run on another server connection, and a server
connection goes from client to client.

PgBouncer refuses to run as root, so as root it runs as the `postgres` user,
like the cluster (pgcluster.py). Clients authenticate with scram-sha-256
against the application role's own SCRAM secret (read from the server), and
PgBouncer logs in to the server with the client's proof in turn.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from pgcluster import APP_PASSWORD, APP_USER, free_port

PGBOUNCER = "/usr/sbin/pgbouncer"
POOL_SIZE = 2


class PgBouncer:
    def __init__(self, cluster, pool_size=POOL_SIZE):
        self.cluster = cluster
        self.pool_size = pool_size
        self.base = tempfile.mkdtemp(prefix="limpeza-pgbouncer-")
        self.port = free_port()
        self.ini = os.path.join(self.base, "pgbouncer.ini")
        self.logfile = os.path.join(self.base, "pgbouncer.log")
        self.pidfile = os.path.join(self.base, "pgbouncer.pid")
        secret = cluster.sql("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                             (APP_USER,))[0][0]
        assert secret.startswith("SCRAM-SHA-256$"), "the app role has no SCRAM secret"
        with open(os.path.join(self.base, "userlist.txt"), "w") as f:
            f.write('"%s" "%s"\n' % (APP_USER, secret))
        with open(self.ini, "w") as f:
            f.write("[databases]\n"
                    "* = host=127.0.0.1 port=%d\n\n"
                    "[pgbouncer]\n"
                    "listen_addr = 127.0.0.1\n"
                    "listen_port = %d\n"
                    "unix_socket_dir =\n"
                    "auth_type = scram-sha-256\n"
                    "auth_file = %s/userlist.txt\n"
                    "pool_mode = transaction\n"
                    "default_pool_size = %d\n"
                    "max_client_conn = 200\n"
                    # every test has its own database, so its own pool:
                    # idle server connections go soon, or the run would
                    # use up the cluster's max_connections
                    "server_idle_timeout = 20\n"
                    "logfile = %s\n"
                    "pidfile = %s\n"
                    % (cluster.port, self.port, self.base, pool_size, self.logfile,
                       self.pidfile))
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam("postgres")
            for path in [self.base] + [os.path.join(self.base, n) for n in os.listdir(self.base)]:
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self.start()

    def start(self):
        cmd = [PGBOUNCER, "-d", self.ini]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer did not start:\n" + self.log()[-2000:])
                time.sleep(0.05)

    def pid(self):
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def destroy(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def url(self, dbname, user=APP_USER, password=APP_PASSWORD):
        return "postgresql://%s:%s@127.0.0.1:%d/%s" % (user, password, self.port, dbname)

    def connect(self, dbname):
        """An API-style client on the pool: the app role, no options of its own."""
        import psycopg2
        c = psycopg2.connect(host="127.0.0.1", port=self.port, user=APP_USER,
                             password=APP_PASSWORD, dbname=dbname)
        c.autocommit = True
        return c
