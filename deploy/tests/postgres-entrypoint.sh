set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pw
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pw --auth-local=trust \
        --auth-host=scram-sha-256 >/dev/null
    rm /tmp/pw
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    postgres -D "$PGDATA" -c listen_addresses='' -k /tmp &
    until pg_isready -h /tmp -q; do sleep 0.2; done
    [ "$POSTGRES_DB" = postgres ] || createdb -h /tmp -U "$POSTGRES_USER" "$POSTGRES_DB"
    pg_ctl -D "$PGDATA" stop -m fast >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -k /tmp -c fsync=off
