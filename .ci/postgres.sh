# Sourced by .ci/run: a throw-away PostgreSQL cluster (Debian's package) and a
# PgBouncer in transaction pooling mode in front of it, for the state tests.
# initdb refuses root, so both run as the `postgres` user the package creates,
# in a temporary directory, on free loopback ports. Exports KCR_TEST_PG_URL
# (direct; the user may create databases) and KCR_TEST_PGBOUNCER_URL, and
# stops both at exit. Bounded: every wait has a timeout.

pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  echo "PostgreSQL server binaries not found under /usr/lib/postgresql"; exit 1
fi
pg_user=postgres
id "$pg_user" >/dev/null 2>&1 || useradd --system --no-create-home "$pg_user"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pg_dir="$(mktemp -d /tmp/kcr-ci-pg.XXXXXX)"
chown "$pg_user" "$pg_dir"
chmod 0700 "$pg_dir"
pg_port="$(free_port)"
pgb_port="$(free_port)"
pg_password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
printf '%s\n' "$pg_password" > "$pg_dir/pwfile"
chown "$pg_user" "$pg_dir/pwfile"

pg_stop() {
  [ -f "$pg_dir/pgbouncer.pid" ] && kill "$(cat "$pg_dir/pgbouncer.pid")" 2>/dev/null || true
  runuser -u "$pg_user" -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -t 20 stop >/dev/null 2>&1 || true
  rm -rf "$pg_dir"
}
trap pg_stop EXIT

timeout 120 runuser -u "$pg_user" -- "$pg_bin/initdb" -D "$pg_dir/data" -U kcr \
  --auth=scram-sha-256 --pwfile="$pg_dir/pwfile" --encoding=UTF8 --locale=C.UTF-8 >"$pg_dir/initdb.log" 2>&1 \
  || { cat "$pg_dir/initdb.log"; exit 1; }
# fsync off: a throw-away cluster; max_connections: tests run in parallel.
runuser -u "$pg_user" -- "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off -c max_connections=300" start \
  || { cat "$pg_dir/postgres.log"; exit 1; }

# PgBouncer, transaction pooling, few server connections so that clients share them.
cat > "$pg_dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgb_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $pg_dir/userlist.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 500
max_db_connections = 8
logfile = $pg_dir/pgbouncer.log
pidfile = $pg_dir/pgbouncer.pid
INI
printf '"kcr" "%s"\n' "$pg_password" > "$pg_dir/userlist.txt"
chown "$pg_user" "$pg_dir/pgbouncer.ini" "$pg_dir/userlist.txt"
runuser -u "$pg_user" -- pgbouncer -d "$pg_dir/pgbouncer.ini" || { cat "$pg_dir/pgbouncer.log"; exit 1; }

export KCR_TEST_PG_URL="postgresql://kcr:$pg_password@127.0.0.1:$pg_port/postgres"
export KCR_TEST_PGBOUNCER_URL="postgresql://kcr:$pg_password@127.0.0.1:$pgb_port/postgres"
for _ in $(seq 1 100); do
  PGPASSWORD="$pg_password" psql -h 127.0.0.1 -p "$pgb_port" -U kcr -d postgres -Atc 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.1
done
PGPASSWORD="$pg_password" psql -h 127.0.0.1 -p "$pgb_port" -U kcr -d postgres -Atc 'SHOW server_version' \
  || { cat "$pg_dir/pgbouncer.log"; exit 1; }
echo "PostgreSQL on 127.0.0.1:$pg_port, PgBouncer (transaction pooling) on 127.0.0.1:$pgb_port"
