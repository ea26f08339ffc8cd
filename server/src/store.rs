//! The server's database: API keys, telemetry events and the record of served completions.
//!
//! SQLite under the data dir by default (WAL, `synchronous = FULL`), PostgreSQL when
//! `--database postgres://…` is given. Both run the same schema and the same SQL: statements are
//! written once with `?N` parameters and a small value type, and only the driver differs.
//! Migrations run when a connection opens. Every method is blocking: callers run them on the
//! telemetry writer thread, in `spawn_blocking`, or from the CLI.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Where the database lives.
#[derive(Debug, Clone, PartialEq)]
pub enum DbTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DbTarget {
    /// `--database` wins; otherwise `ghostline.db` in the data dir.
    pub fn resolve(database: Option<&str>, data_dir: &Path) -> anyhow::Result<DbTarget> {
        match database {
            None => Ok(DbTarget::Sqlite(data_dir.join("ghostline.db"))),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => Ok(DbTarget::Postgres(u.to_string())),
            Some(u) => match u.strip_prefix("sqlite://").or_else(|| u.strip_prefix("sqlite:")) {
                Some(p) if !p.is_empty() => Ok(DbTarget::Sqlite(PathBuf::from(p))),
                _ => bail!("--database {u}: expected postgres://USER@HOST:PORT/DB or sqlite:PATH (default: ghostline.db in the data dir)"),
            },
        }
    }

    /// For logs: the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            DbTarget::Sqlite(p) => format!("sqlite:{}", p.display()),
            DbTarget::Postgres(u) => match (u.find("://"), u.rfind('@')) {
                (Some(s), Some(at)) if at > s => format!("{}://…@{}", &u[..s], &u[at + 1..]),
                _ => u.clone(),
            },
        }
    }
}

/// A SQL parameter or result value. Nulls carry their type because Postgres wants one.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
}

impl Val {
    pub fn int(&self) -> Option<i64> {
        match self {
            Val::Int(v) => *v,
            Val::Real(v) => v.map(|f| f as i64),
            Val::Text(_) => None,
        }
    }
    pub fn real(&self) -> Option<f64> {
        match self {
            Val::Real(v) => *v,
            Val::Int(v) => v.map(|i| i as f64),
            Val::Text(_) => None,
        }
    }
    pub fn text(&self) -> Option<String> {
        match self {
            Val::Text(v) => v.clone(),
            _ => None,
        }
    }
}

/// The schema, one migration per entry; `schema_version` counts the ones applied. Types are
/// ones both SQLite and Postgres accept.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE api_keys (
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    requests_per_minute BIGINT,
    tokens_per_minute BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_keys_name ON api_keys (name);
CREATE TABLE meta (k TEXT PRIMARY KEY, v BIGINT NOT NULL);
INSERT INTO meta (k, v) VALUES ('keys_generation', 0);
CREATE TABLE telemetry_events (
    event_id TEXT PRIMARY KEY,
    completion_id TEXT NOT NULL,
    choice_index BIGINT NOT NULL,
    kind TEXT NOT NULL,
    accepted_chars BIGINT,
    shown_ms BIGINT,
    client_ts BIGINT,
    editor TEXT,
    language TEXT,
    key_name TEXT,
    received_ms BIGINT NOT NULL
);
CREATE INDEX telemetry_events_received ON telemetry_events (received_ms);
CREATE TABLE completions (
    id TEXT PRIMARY KEY,
    created_ms BIGINT NOT NULL,
    key_name TEXT,
    language TEXT,
    editor TEXT,
    model TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    queue_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION NOT NULL,
    total_ms DOUBLE PRECISION NOT NULL,
    cache TEXT NOT NULL,
    finish_reason TEXT,
    prompt TEXT,
    completion TEXT
);
CREATE INDEX completions_created ON completions (created_ms);
",
    "
ALTER TABLE api_keys ADD COLUMN admin BIGINT NOT NULL DEFAULT 0;
CREATE INDEX completions_key ON completions (key_name, created_ms);
",
];

/// One open connection.
pub enum Store {
    Sqlite(rusqlite::Connection),
    Postgres(PgClient),
}

/// A PostgreSQL connection that can be dropped anywhere. `postgres::Client` closes itself by
/// blocking on its own runtime, which panics on a thread that is driving a tokio runtime, and the
/// last reference to the key store goes on such a thread when the server stops after a drain:
/// there the client is closed on a thread of its own.
pub struct PgClient(Option<postgres::Client>);

impl std::ops::Deref for PgClient {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        self.0.as_ref().expect("a PgClient holds its client until dropped")
    }
}

impl std::ops::DerefMut for PgClient {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        self.0.as_mut().expect("a PgClient holds its client until dropped")
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            let closing = std::thread::spawn(move || drop(client));
            let _ = closing.join();
        } else {
            drop(client);
        }
    }
}

/// `?N` placeholders in Postgres' spelling.
fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value};
        Ok(match self {
            Val::Int(v) => ToSqlOutput::Owned(v.map_or(Value::Null, Value::Integer)),
            Val::Real(v) => ToSqlOutput::Owned(v.map_or(Value::Null, Value::Real)),
            Val::Text(v) => ToSqlOutput::Owned(v.clone().map_or(Value::Null, Value::Text)),
        })
    }
}

impl Store {
    /// Opens (creating where needed) and migrates the database.
    pub fn open(target: &DbTarget) -> anyhow::Result<Store> {
        let mut store = match target {
            DbTarget::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating the data dir {}", dir.display()))?;
                }
                let c = rusqlite::Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                // WAL: readers never block the writer; FULL: a commit is on disk before it returns.
                c.pragma_update(None, "journal_mode", "WAL").context("switching SQLite to WAL")?;
                c.pragma_update(None, "synchronous", "FULL")?;
                Store::Sqlite(c)
            }
            DbTarget::Postgres(url) => {
                let mut config: postgres::Config =
                    url.parse().with_context(|| format!("--database {}: not a PostgreSQL URL", target.describe()))?;
                if config.get_connect_timeout().is_none() {
                    config.connect_timeout(std::time::Duration::from_secs(5));
                }
                let c =
                    config.connect(postgres::NoTls).with_context(|| format!("connecting to {}", target.describe()))?;
                Store::Postgres(PgClient(Some(c)))
            }
        };
        store.migrate().with_context(|| format!("migrating {}", target.describe()))?;
        Ok(store)
    }

    fn migrate(&mut self) -> anyhow::Result<()> {
        self.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        // Serialise concurrent starts (replicas, the keys CLI) on the migration.
        self.begin_exclusive()?;
        let done = self.query("SELECT version FROM schema_version", &[])?;
        let mut version = done.first().and_then(|r| r[0].int()).unwrap_or(0) as usize;
        if done.is_empty() {
            self.exec("INSERT INTO schema_version (version) VALUES (0)", &[])?;
        }
        while version < MIGRATIONS.len() {
            self.batch(MIGRATIONS[version])?;
            version += 1;
            self.exec("UPDATE schema_version SET version = ?1", &[Val::Int(Some(version as i64))])?;
        }
        if version > MIGRATIONS.len() {
            self.batch("ROLLBACK")?;
            bail!(
                "the database has schema version {version}, newer than this build knows ({}); upgrade ghostline-server",
                MIGRATIONS.len()
            );
        }
        self.batch("COMMIT")
    }

    fn begin_exclusive(&mut self) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(_) => self.batch("BEGIN IMMEDIATE"),
            Store::Postgres(_) => self.batch("BEGIN; LOCK TABLE schema_version IN EXCLUSIVE MODE"),
        }
    }

    /// Runs statements without parameters (migrations, transaction control).
    pub fn batch(&mut self, sql: &str) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(c) => c.execute_batch(sql)?,
            Store::Postgres(c) => c.batch_execute(sql)?,
        }
        Ok(())
    }

    /// Runs one statement; returns the rows it changed.
    pub fn exec(&mut self, sql: &str, params: &[Val]) -> anyhow::Result<u64> {
        match self {
            Store::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                Ok(st.execute(rusqlite::params_from_iter(params.iter()))? as u64)
            }
            Store::Postgres(c) => {
                let p = pg_params(params);
                Ok(c.execute(pg_sql(sql).as_str(), &p)?)
            }
        }
    }

    /// Runs one query; every row as values.
    pub fn query(&mut self, sql: &str, params: &[Val]) -> anyhow::Result<Vec<Vec<Val>>> {
        match self {
            Store::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let ncol = st.column_count();
                let rows = st.query_map(rusqlite::params_from_iter(params.iter()), |row| {
                    (0..ncol)
                        .map(|i| {
                            use rusqlite::types::ValueRef;
                            Ok(match row.get_ref(i)? {
                                ValueRef::Null => Val::Text(None),
                                ValueRef::Integer(v) => Val::Int(Some(v)),
                                ValueRef::Real(v) => Val::Real(Some(v)),
                                ValueRef::Text(t) | ValueRef::Blob(t) => {
                                    Val::Text(Some(String::from_utf8_lossy(t).into_owned()))
                                }
                            })
                        })
                        .collect::<rusqlite::Result<Vec<Val>>>()
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            }
            Store::Postgres(c) => {
                use postgres::types::Type;
                let p = pg_params(params);
                let rows = c.query(pg_sql(sql).as_str(), &p)?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let mut vals = Vec::with_capacity(row.len());
                    for (i, col) in row.columns().iter().enumerate() {
                        vals.push(match *col.type_() {
                            Type::INT8 => Val::Int(row.try_get(i)?),
                            Type::INT4 => Val::Int(row.try_get::<_, Option<i32>>(i)?.map(i64::from)),
                            Type::FLOAT8 => Val::Real(row.try_get(i)?),
                            _ => Val::Text(row.try_get(i)?),
                        });
                    }
                    out.push(vals);
                }
                Ok(out)
            }
        }
    }

    /// Runs `f` in one transaction: committed when it returns Ok, rolled back otherwise.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&mut Store) -> anyhow::Result<T>) -> anyhow::Result<T> {
        // SQLite: take the write lock up front, so a read-then-write transaction waits for
        // another writer (busy timeout) instead of failing when it upgrades.
        let begin = match self {
            Store::Sqlite(_) => "BEGIN IMMEDIATE",
            Store::Postgres(_) => "BEGIN",
        };
        self.batch(begin)?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

fn pg_params(params: &[Val]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|v| match v {
            Val::Int(x) => x as &(dyn postgres::types::ToSql + Sync),
            Val::Real(x) => x as &(dyn postgres::types::ToSql + Sync),
            Val::Text(x) => x as &(dyn postgres::types::ToSql + Sync),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_resolve_or_are_refused() {
        let dir = Path::new("data");
        assert_eq!(DbTarget::resolve(None, dir).unwrap(), DbTarget::Sqlite(dir.join("ghostline.db")));
        assert_eq!(DbTarget::resolve(Some("sqlite:x.db"), dir).unwrap(), DbTarget::Sqlite("x.db".into()));
        let pg = DbTarget::resolve(Some("postgres://u:secret@127.0.0.1:5432/g"), dir).unwrap();
        assert_eq!(pg.describe(), "postgres://…@127.0.0.1:5432/g");
        assert!(DbTarget::resolve(Some("mysql://x"), dir).unwrap_err().to_string().contains("postgres://"));
    }

    #[test]
    fn placeholders_are_rewritten_for_postgres() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?'"
        );
    }

    #[test]
    fn sqlite_migrates_once_and_reopens() {
        let dir = std::env::temp_dir().join(format!("ghostline-store-{}", std::process::id()));
        let target = DbTarget::Sqlite(dir.join("g.db"));
        let mut s = Store::open(&target).unwrap();
        s.exec("INSERT INTO meta (k, v) VALUES (?1, ?2)", &[Val::Text(Some("x".into())), Val::Int(Some(5))]).unwrap();
        drop(s);
        let mut s = Store::open(&target).unwrap();
        let rows = s.query("SELECT v FROM meta WHERE k = ?1", &[Val::Text(Some("x".into()))]).unwrap();
        assert_eq!(rows, vec![vec![Val::Int(Some(5))]]);
        let failed: anyhow::Result<()> = s.transaction(|s| {
            s.exec("UPDATE meta SET v = 6 WHERE k = 'x'", &[])?;
            bail!("no")
        });
        assert!(failed.is_err());
        assert_eq!(s.query("SELECT v FROM meta WHERE k = 'x'", &[]).unwrap()[0][0], Val::Int(Some(5)));
        std::fs::remove_dir_all(dir).ok();
    }
}
