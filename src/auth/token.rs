//! JSON Web Tokens: HS256 only, with the revocation version inside.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Config, DatabaseUrl, MIN_SECRET_BYTES, Secret};
use crate::db::types::DbId;
use crate::db::users::User;
use crate::error::{AppError, AppResult};

pub const INVALID_TOKEN: &str = "Invalid or expired token";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub email: String,
    pub iat: i64,
    pub exp: i64,
    /// The user's token version when issued; a token with an older version
    /// than the account's was revoked by changePassword or logoutEverywhere.
    pub ver: i32,
}

impl Claims {
    pub fn user_id(&self) -> Option<DbId> {
        uuid::Uuid::parse_str(&self.sub).ok().map(DbId)
    }
}

pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl TokenKeys {
    pub fn new(secret: &Secret, ttl: Duration) -> Self {
        // Pinned to HS256: a token whose header names any other algorithm,
        // `none` included, fails to decode.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        validation.validate_nbf = true;
        // No grace period: tokens are issued and checked by servers sharing
        // one clock source, and "expired" should mean expired.
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret.expose()),
            decoding: DecodingKey::from_secret(secret.expose()),
            validation,
            ttl,
        }
    }

    pub fn issue(&self, user: &User) -> AppResult<IssuedToken> {
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.ttl).map_err(AppError::internal)?;
        let expires_at = now + ttl;
        let claims = Claims {
            sub: user.id.0.hyphenated().to_string(),
            email: user.email.clone(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            ver: user.token_version,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(AppError::internal)?;
        let expires_at = DateTime::from_timestamp(claims.exp, 0).unwrap_or(expires_at);
        Ok(IssuedToken { token, expires_at })
    }

    /// Checks signature, algorithm and times. Revocation needs the database:
    /// see `guard::authenticate`.
    pub fn verify(&self, token: &str) -> AppResult<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| AppError::Unauthenticated(INVALID_TOKEN))
    }
}

/// The signing key: `JWT_SECRET` when set. Otherwise, on SQLite only, a random
/// key generated once and kept beside the database file (mode 0600), so that
/// tokens survive a restart without any set-up.
///
/// Several processes may start together on a new database file (a supervisor
/// starting replicas, a test harness): they must all end up with one key, and
/// none may read a half-written file. So the key file only ever appears
/// complete: each process writes its candidate to a temp file of its own in
/// the same directory and hard-links it into place, which fails if the name
/// exists. The process whose link lands wins; every other one reads the
/// winner's key.
pub fn load_or_create_secret(config: &Config) -> AppResult<Secret> {
    if let Some(secret) = &config.jwt_secret {
        return Ok(secret.clone());
    }
    let DatabaseUrl::Sqlite(db_path) = &config.database_url else {
        return Err(AppError::Internal("JWT_SECRET is required with PostgreSQL".into()));
    };
    let path = secret_path(db_path);
    // Two rounds suffice: a failed link means the file now exists. A third is
    // for a file deleted by hand in between.
    for _ in 0..3 {
        match std::fs::read_to_string(&path) {
            Ok(text) => return parse_secret_file(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AppError::Internal(format!("cannot read {}: {e}", path.display()))),
        }
        let bytes: [u8; 32] = rand::random();
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if publish_private(&path, &secret)? {
            tracing::warn!(
                path = %path.display(),
                "JWT_SECRET is not set: generated a signing key and stored it beside the database; set JWT_SECRET in production"
            );
            return Ok(Secret::new(secret.into_bytes()));
        }
        // Another process published its key first: use that one.
    }
    Err(AppError::Internal(format!("{} keeps disappearing; set JWT_SECRET", path.display())))
}

fn parse_secret_file(path: &Path, text: &str) -> AppResult<Secret> {
    let secret = text.trim();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AppError::Internal(format!(
            "{} holds fewer than {MIN_SECRET_BYTES} bytes; delete it to generate a new key",
            path.display()
        )));
    }
    Ok(Secret::new(secret.as_bytes()))
}

pub fn secret_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "todoql.db".into());
    name.push(".jwt-secret");
    db_path.with_file_name(name)
}

/// Makes `path` hold `contents`, readable by the owner only, unless it exists:
/// `Ok(true)` when this call created it, `Ok(false)` when another got there
/// first. Readers never see the file partly written (see
/// [`load_or_create_secret`]).
fn publish_private(path: &Path, contents: &str) -> AppResult<bool> {
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(path.file_name().unwrap_or_default());
    temp_name.push(format!(".{}.{:016x}.tmp", std::process::id(), rand::random::<u64>()));
    let temp = path.with_file_name(temp_name);
    write_private(&temp, contents)?;
    let linked = std::fs::hard_link(&temp, path);
    // The temp name goes either way; the key lives on under `path`.
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            // Make the new name durable too, so a crash cannot lose the key
            // that tokens were already signed with. Best effort: not every
            // platform can sync a directory.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => {
            Err(AppError::Internal(format!("cannot create {}: {e} (or set JWT_SECRET)", path.display())))
        }
    }
}

fn write_private(path: &Path, contents: &str) -> AppResult<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| AppError::Internal(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| AppError::Internal(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::types::DbTime;

    fn keys() -> TokenKeys {
        TokenKeys::new(&Secret::new("k".repeat(32)), Duration::from_secs(60))
    }

    fn user() -> User {
        User { id: DbId::new(), email: "a@b.test".into(), token_version: 3, created_at: DbTime::now() }
    }

    fn forge(header: Header, claims: &serde_json::Value, key: &[u8]) -> String {
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key)).expect("encode")
    }

    #[test]
    fn issued_tokens_verify() {
        let user = user();
        let issued = keys().issue(&user).expect("issue");
        let claims = keys().verify(&issued.token).expect("valid");
        assert_eq!(claims.user_id(), Some(user.id));
        assert_eq!(claims.ver, 3);
        assert_eq!(claims.exp, issued.expires_at.timestamp());
    }

    #[test]
    fn other_algorithms_keys_and_times_are_refused() {
        let now = Utc::now().timestamp();
        let good = serde_json::json!({"sub": DbId::new().0, "email": "a@b.test", "iat": now, "exp": now + 60, "ver": 0});
        let key = "k".repeat(32);
        assert!(keys().verify(&forge(Header::new(Algorithm::HS256), &good, key.as_bytes())).is_ok());
        assert!(keys().verify(&forge(Header::new(Algorithm::HS384), &good, key.as_bytes())).is_err());
        assert!(keys().verify(&forge(Header::new(Algorithm::HS512), &good, key.as_bytes())).is_err());
        assert!(
            keys()
                .verify(&forge(Header::new(Algorithm::HS256), &good, b"another key of thirty-two bytes!"))
                .is_err()
        );
        let expired =
            serde_json::json!({"sub": "x", "email": "e", "iat": now - 120, "exp": now - 1, "ver": 0});
        assert!(keys().verify(&forge(Header::new(Algorithm::HS256), &expired, key.as_bytes())).is_err());
        let no_exp = serde_json::json!({"sub": "x", "email": "e", "iat": now, "ver": 0});
        assert!(keys().verify(&forge(Header::new(Algorithm::HS256), &no_exp, key.as_bytes())).is_err());
        let future = serde_json::json!({"sub": "x", "email": "e", "iat": now, "exp": now + 60, "nbf": now + 30, "ver": 0});
        assert!(keys().verify(&forge(Header::new(Algorithm::HS256), &future, key.as_bytes())).is_err());
        // alg "none": header and payload with an empty signature.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none =
            format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), b64.encode(good.to_string()));
        assert!(keys().verify(&none).is_err());
        assert!(keys().verify("not a token").is_err());
    }

    #[test]
    fn generated_secret_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("x.db");
        let config = Config::for_database(&format!("sqlite://{}", db.display())).expect("config");
        let first = load_or_create_secret(&config).expect("created");
        let second = load_or_create_secret(&config).expect("reused");
        assert_eq!(first, second);
        assert!(first.expose().len() >= MIN_SECRET_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(secret_path(&db)).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// Processes starting together on a new database: every one of them ends
    /// up with the key that is in the file, and none sees a partial file.
    #[test]
    fn concurrent_starts_agree_on_one_generated_secret() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = dir.path().join("race.db");
            let config = Config::for_database(&format!("sqlite://{}", db.display())).expect("config");
            let start = std::sync::Barrier::new(16);
            let secrets: Vec<Secret> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..16)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            load_or_create_secret(&config).expect("a key")
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().expect("thread")).collect()
            });
            let stored = std::fs::read_to_string(secret_path(&db)).expect("key file");
            for secret in &secrets {
                assert_eq!(secret.expose(), stored.trim().as_bytes());
            }
            // Only the key file is left: no temp files.
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .expect("dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, vec!["race.db.jwt-secret".to_owned()]);
        }
    }
}
