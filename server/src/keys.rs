//! API keys: made by `ghostline-server keys add`, stored only as SHA-256 hashes in the
//! database, checked on every request.
//!
//! A key is 192 random bits, shown once. The server keeps the active keys in memory and
//! re-reads them whenever the database's key generation (bumped by every add and revoke, in the
//! same transaction) has moved, which it checks on each authenticated request: a revoked key
//! stops working at once, with no restart. A presented key is hashed and compared with every
//! active hash in constant time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::store::{DbTarget, Store, Val};

/// One stored key, as the server and `keys list` see it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub name: String,
    pub hash: [u8; 32],
    pub created_at: i64,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub revoked_at: Option<i64>,
    /// May read the team dashboard (`keys add NAME --admin`).
    pub admin: bool,
}

/// Who a request comes from. `name` is None when auth is off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Principal {
    pub name: Option<String>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub admin: bool,
}

impl Principal {
    /// Whether this request may read what only admins see: with auth off (no keys on a
    /// loopback server) everyone may; with keys, only an admin key.
    pub fn may_administer(&self) -> bool {
        self.name.is_none() || self.admin
    }
}

pub fn unix_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Equal in time independent of where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut d = 0u8;
    for i in 0..32 {
        d |= a[i] ^ b[i];
    }
    std::hint::black_box(d) == 0
}

/// A new random key: `gl-` and 192 bits in hex.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(format!("gl-{}", hex(&bytes)))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

fn limit(v: &Val) -> Option<u32> {
    v.int().and_then(|x| u32::try_from(x).ok())
}

/// Every key, revoked ones included, oldest first.
pub fn list(store: &mut Store) -> anyhow::Result<Vec<KeyRecord>> {
    let rows = store.query(
        "SELECT name, key_hash, created_at, requests_per_minute, tokens_per_minute, revoked_at, admin FROM api_keys ORDER BY created_at, name",
        &[],
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(KeyRecord {
                name: r[0].text()?,
                hash: unhex(&r[1].text()?)?,
                created_at: r[2].int()?,
                requests_per_minute: limit(&r[3]),
                tokens_per_minute: limit(&r[4]),
                revoked_at: r[5].int(),
                admin: r[6].int().is_some_and(|a| a != 0),
            })
        })
        .collect())
}

fn generation(store: &mut Store) -> anyhow::Result<i64> {
    let rows = store.query("SELECT v FROM meta WHERE k = 'keys_generation'", &[])?;
    Ok(rows.first().and_then(|r| r[0].int()).unwrap_or(0))
}

fn bump(store: &mut Store) -> anyhow::Result<()> {
    store.exec("UPDATE meta SET v = v + 1 WHERE k = 'keys_generation'", &[])?;
    Ok(())
}

/// Adds a key, an admin one when `admin` (it may read the dashboard), and returns it (the only
/// time it exists outside the caller's hands).
pub fn add(store: &mut Store, name: &str, rpm: Option<u32>, tpm: Option<u32>, admin: bool) -> anyhow::Result<String> {
    if !valid_name(name) {
        bail!("key name {name:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'");
    }
    if rpm == Some(0) || tpm == Some(0) {
        bail!("a limit of 0 would refuse every request; leave the flag out for no limit");
    }
    let key = generate()?;
    store.transaction(|s| {
        let active = s.query("SELECT 1 FROM api_keys WHERE name = ?1 AND revoked_at IS NULL", &[Val::Text(Some(name.into()))])?;
        if !active.is_empty() {
            bail!("a key named {name:?} exists; revoke it first (ghostline-server keys revoke {name})");
        }
        s.exec(
            "INSERT INTO api_keys (name, key_hash, created_at, requests_per_minute, tokens_per_minute, admin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            &[
                Val::Text(Some(name.into())),
                Val::Text(Some(hex(&hash(&key)))),
                Val::Int(Some(unix_s())),
                Val::Int(rpm.map(i64::from)),
                Val::Int(tpm.map(i64::from)),
                Val::Int(Some(admin as i64)),
            ],
        )?;
        bump(s)
    })?;
    Ok(key)
}

/// Revokes the active key of that name; false when there is none.
pub fn revoke(store: &mut Store, name: &str) -> anyhow::Result<bool> {
    store.transaction(|s| {
        let n = s.exec(
            "UPDATE api_keys SET revoked_at = ?1 WHERE name = ?2 AND revoked_at IS NULL",
            &[Val::Int(Some(unix_s())), Val::Text(Some(name.into()))],
        )?;
        if n > 0 {
            bump(s)?;
        }
        Ok(n > 0)
    })
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Denied {
    /// Missing or wrong key (the answer never says which).
    Unauthorized,
    /// The key table could not be read and no earlier copy exists.
    Unavailable,
}

/// The keys as last read.
#[derive(Clone)]
struct Snapshot {
    generation: i64,
    active: Arc<Vec<KeyRecord>>,
    /// Any key was ever added (revoked ones count): auth stays on when the last key is revoked.
    enabled: bool,
}

/// How long the keys last read are used without asking the database after a failed read.
const KEYS_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// The server's view of the keys.
pub struct Auth {
    target: DbTarget,
    /// None after a failure: the next check reconnects (a restarted Postgres, say).
    store: Mutex<Option<Store>>,
    snapshot: Mutex<Option<Snapshot>>,
    /// After a failed read, until when the keys last read are used without asking the database,
    /// so a database that is down costs one attempt per pause, not one per request.
    retry_at: Mutex<Option<Instant>>,
    /// Require a key even while none exist (a non-loopback bind without --insecure-no-auth).
    require: bool,
}

impl Auth {
    pub fn new(target: DbTarget, store: Store, require: bool) -> Auth {
        Auth { target, store: Mutex::new(Some(store)), snapshot: Mutex::new(None), retry_at: Mutex::new(None), require }
    }

    /// The keys, re-read when the generation moved. Blocking (one small query).
    fn current(&self) -> Result<Snapshot, Denied> {
        let known = || self.snapshot.lock().ok().and_then(|s| s.clone());
        let pausing = || self.retry_at.lock().ok().and_then(|r| *r).is_some_and(|t| Instant::now() < t);
        if pausing() {
            if let Some(s) = known() {
                return Ok(s);
            }
        }
        let fresh = (|| -> anyhow::Result<Snapshot> {
            let mut slot = self.store.lock().map_err(|_| anyhow::anyhow!("key store lock poisoned"))?;
            // Another request's read failed while this one waited for the connection.
            if pausing() {
                if let Some(s) = known() {
                    return Ok(s);
                }
            }
            if slot.is_none() {
                *slot = Some(Store::open(&self.target)?);
            }
            let store = slot.as_mut().ok_or_else(|| anyhow::anyhow!("no key store connection"))?;
            let read = (|| {
                let g = generation(store)?;
                if let Some(s) = known().filter(|s| s.generation == g) {
                    return Ok(s);
                }
                let all = list(store)?;
                let enabled = !all.is_empty();
                let active = all.into_iter().filter(|k| k.revoked_at.is_none()).collect();
                Ok(Snapshot { generation: g, active: Arc::new(active), enabled })
            })();
            if read.is_err() {
                *slot = None;
            }
            read
        })();
        match fresh {
            Ok(s) => {
                if let Ok(mut snap) = self.snapshot.lock() {
                    *snap = Some(s.clone());
                }
                Ok(s)
            }
            Err(e) => {
                // Keep serving with the last keys read; revocations wait for the database.
                if let Ok(mut r) = self.retry_at.lock() {
                    *r = Some(Instant::now() + KEYS_RETRY_PAUSE);
                }
                metrics::counter!("ghostline_database_errors_total", "op" => "keys").increment(1);
                tracing::warn!("reading API keys: {e:#}");
                known().ok_or(Denied::Unavailable)
            }
        }
    }

    /// Checks an `Authorization` header value. Blocking: call it off the async workers.
    pub fn check(&self, header: Option<&str>) -> Result<Principal, Denied> {
        let snap = self.current()?;
        if !snap.enabled && !self.require {
            return Ok(Principal::default());
        }
        let presented = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(Denied::Unauthorized)?;
        let h = hash(presented);
        let mut found = None;
        for k in snap.active.iter() {
            // No early exit: every hash is compared.
            if ct_eq(&h, &k.hash) {
                found = Some(k);
            }
        }
        let k = found.ok_or(Denied::Unauthorized)?;
        Ok(Principal {
            name: Some(k.name.clone()),
            requests_per_minute: k.requests_per_minute,
            tokens_per_minute: k.tokens_per_minute,
            admin: k.admin,
        })
    }

    /// Whether the key store is a local file (cheap enough to read on an async worker).
    pub fn is_local(&self) -> bool {
        matches!(self.target, DbTarget::Sqlite(_))
    }

    /// Whether any key is active (for the startup check).
    pub fn any(&self) -> bool {
        self.current().is_ok_and(|s| !s.active.is_empty())
    }
}

/// `ghostline-server keys …`: prints what it did; the new key is the last line.
pub fn run_cli(store: &mut Store, cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Add { name, requests_per_minute, tokens_per_minute, admin } => {
            let key = add(store, &name, requests_per_minute, tokens_per_minute, admin).context("adding the key")?;
            let lim = |v: Option<u32>| v.map_or("unlimited".to_string(), |v| v.to_string());
            println!(
                "added {}key {name:?} (requests/min: {}, tokens/min: {}). It is shown only now; store it safely:",
                if admin { "admin " } else { "" },
                lim(requests_per_minute),
                lim(tokens_per_minute)
            );
            println!("{key}");
        }
        KeysCommand::List => {
            let keys = list(store)?;
            if keys.is_empty() {
                println!("no keys (the server accepts requests without a key on loopback addresses)");
                return Ok(());
            }
            println!("{:<24} {:>12} {:>12} {:<12} {:<6} STATUS", "NAME", "REQ/MIN", "TOK/MIN", "CREATED", "ROLE");
            for k in keys {
                let lim = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
                let status = k.revoked_at.map_or("active".to_string(), |t| format!("revoked at {t}"));
                println!(
                    "{:<24} {:>12} {:>12} {:<12} {:<6} {}",
                    k.name,
                    lim(k.requests_per_minute),
                    lim(k.tokens_per_minute),
                    k.created_at,
                    if k.admin { "admin" } else { "user" },
                    status
                );
            }
        }
        KeysCommand::Revoke { name } => {
            if !revoke(store, &name)? {
                bail!("no active key named {name:?} (see ghostline-server keys list)");
            }
            println!("revoked key {name:?}; servers refuse it from their next request");
        }
    }
    Ok(())
}

/// The `keys` subcommands.
#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Make a key; it is printed once, as the last line.
    Add {
        name: String,
        /// Requests per minute this key may make (default: no limit).
        #[arg(long)]
        requests_per_minute: Option<u32>,
        /// Generated tokens per minute this key may use (default: no limit).
        #[arg(long)]
        tokens_per_minute: Option<u32>,
        /// The key may also read the team dashboard (`/dashboard`, `/v1/dashboard`).
        #[arg(long)]
        admin: bool,
    },
    /// Show the keys' names, limits and state (never the keys).
    List,
    /// Revoke a key; running servers refuse it from their next request.
    Revoke { name: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(tag: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("ghostline-keys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&DbTarget::Sqlite(dir.join("g.db"))).unwrap(), dir)
    }

    #[test]
    fn keys_are_random_hashed_and_revocable_at_once() {
        let (mut store, dir) = temp_store("a");
        let (mut other, _) = (Store::open(&DbTarget::Sqlite(dir.join("g.db"))).unwrap(), ());
        let target = DbTarget::Sqlite(dir.join("g.db"));
        let auth = Auth::new(target.clone(), Store::open(&target).unwrap(), false);
        assert_eq!(auth.check(None), Ok(Principal::default()), "no keys: auth is off");
        let k1 = add(&mut store, "alice", Some(10), None, false).unwrap();
        let k2 = add(&mut other, "bob", None, Some(100), false).unwrap();
        assert_ne!(k1, k2);
        assert!(k1.len() >= 3 + 32, "at least 128 bits");
        assert!(add(&mut store, "alice", None, None, false).is_err(), "names are unique among active keys");
        assert_eq!(auth.check(None), Err(Denied::Unauthorized));
        assert_eq!(auth.check(Some("Bearer gl-nope")), Err(Denied::Unauthorized));
        assert_eq!(auth.check(Some(&k1)), Err(Denied::Unauthorized), "the Bearer scheme is required");
        let p = auth.check(Some(&format!("Bearer {k1}"))).unwrap();
        assert_eq!((p.name.as_deref(), p.requests_per_minute), (Some("alice"), Some(10)));
        // Only the hash is stored.
        let dump = store.query("SELECT key_hash FROM api_keys", &[]).unwrap();
        assert!(dump.iter().all(|r| r[0].text().unwrap() != k1));
        assert!(revoke(&mut other, "alice").unwrap());
        assert_eq!(auth.check(Some(&format!("Bearer {k1}"))), Err(Denied::Unauthorized));
        assert!(auth.check(Some(&format!("Bearer {k2}"))).is_ok());
        assert!(!revoke(&mut other, "alice").unwrap());
        assert!(revoke(&mut other, "bob").unwrap());
        assert_eq!(auth.check(None), Err(Denied::Unauthorized), "revoking the last key does not open the server");
        add(&mut store, "alice", None, None, false).unwrap();
        let boss = add(&mut store, "boss", None, None, true).unwrap();
        let (a, b) = (auth.check(Some(&format!("Bearer {k2}"))), auth.check(Some(&format!("Bearer {boss}"))));
        assert_eq!(a.map(|p| p.may_administer()), Err(Denied::Unauthorized), "bob was revoked");
        assert!(b.unwrap().may_administer(), "an admin key");
        assert!(Principal::default().may_administer(), "auth off: the loopback default");
        assert!(!Principal { name: Some("alice".into()), ..Principal::default() }.may_administer());
        assert!(add(&mut store, "bad name", None, None, false).is_err());
        assert!(add(&mut store, "zero", Some(0), None, false).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_required_auth_with_no_keys_lets_nobody_in() {
        let (store, dir) = temp_store("b");
        let auth = Auth::new(DbTarget::Sqlite(dir.join("g.db")), store, true);
        assert_eq!(auth.check(None), Err(Denied::Unauthorized));
        std::fs::remove_dir_all(dir).ok();
    }
}
