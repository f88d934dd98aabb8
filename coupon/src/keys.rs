//! Ed25519 keys: the issuer key ring (several keys at once, for rotation)
//! and the holder's key pair, all stored as PASERK strings.
//!
//! A key-ring directory holds
//! - `<unix-created>-<pid8>.key`: an issuer secret key, PASERK `k4.secret`,
//!   mode 0600 (a group- or world-readable one is refused at load);
//! - `<unix-created>-<pid8>.pub`: a trusted public key, PASERK `k4.public`
//!   (coupons from another issuer);
//!
//! where `pid8` is the first 8 characters of the key's PASERK `k4.pid`
//! hash. A key's id (`kid`, carried in every coupon's footer) is its full
//! `k4.pid`. The newest secret key signs; every key verifies.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::version4::V4;
use serde::Serialize;

use crate::time::now_unix;

const PID_PREFIX: &str = "k4.pid.";

/// A key-store failure; names the file or value.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A key file whose name is not `<unix-created>-<pid8>.key|.pub`.
    #[error("{}: expected a key file named <unix-created>-<first 8 characters of the k4.pid>.key or .pub", path.display())]
    BadFileName {
        /// The file.
        path: PathBuf,
    },
    /// A string that is not the expected PASERK key.
    #[error("{what}: not a PASERK {expected} key")]
    BadKey {
        /// The file, or `"argument"` for a value given in code.
        what: String,
        /// `k4.secret` or `k4.public`.
        expected: &'static str,
    },
    /// A key file whose name does not match the key it holds.
    #[error("{}: holds key {kid}, whose id does not start with the file name's {name_pid:?}", path.display())]
    KidMismatch {
        /// The file.
        path: PathBuf,
        /// The id of the key in the file.
        kid: String,
        /// The pid prefix in the file name.
        name_pid: String,
    },
    /// A secret key file readable by others.
    #[error("{}: mode {mode:o} lets others read a secret key; expected 600 (chmod 600 it)", path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The system's random number generator failed.
    #[error("generating a key: the system random number generator failed")]
    Random,
    /// Signing failed (the PASETO library refused the key or payload).
    #[error("signing failed: {0}")]
    Signing(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) if absent and sets it to mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Writes `contents` to `path` with mode 0600. Without `overwrite`, an
/// existing file is an error (`AlreadyExists`); with it, the file is
/// replaced atomically (temporary file, then rename).
pub(crate) fn write_private(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), KeyError> {
    let target = path;
    let tmp;
    let path = if overwrite {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        tmp = path.with_file_name(format!(".{name}.tmp"));
        let _ = fs::remove_file(&tmp);
        tmp.as_path()
    } else {
        path
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    // The mode above is filtered by the umask, which can only remove bits;
    // set it explicitly anyway so the file is 0600 whatever the umask.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    if overwrite {
        fs::rename(path, target).map_err(io_err(target))?;
    }
    Ok(())
}

fn paserk<K: FormatAsPaserk>(key: &K) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = key.fmt(&mut s);
    s
}

/// The PASERK `k4.pid` of a public key: the key id in coupon footers.
pub fn key_id(public: &AsymmetricPublicKey<V4>) -> String {
    paserk(&Id::from(public))
}

fn parse_secret(s: &str, what: &str) -> Result<AsymmetricSecretKey<V4>, KeyError> {
    AsymmetricSecretKey::<V4>::try_from(s.trim()).map_err(|_| KeyError::BadKey {
        what: what.to_string(),
        expected: "k4.secret",
    })
}

fn parse_public(s: &str, what: &str) -> Result<AsymmetricPublicKey<V4>, KeyError> {
    AsymmetricPublicKey::<V4>::try_from(s.trim()).map_err(|_| KeyError::BadKey {
        what: what.to_string(),
        expected: "k4.public",
    })
}

fn public_of(secret: &AsymmetricSecretKey<V4>) -> AsymmetricPublicKey<V4> {
    // Infallible for a validated V4 secret key (its last 32 bytes are the
    // public key); a failure would mean pasetors broke that invariant.
    AsymmetricPublicKey::<V4>::try_from(secret).expect("a V4 secret key embeds its public key")
}

/// One key of a [`KeyRing`], as listed by [`KeyRing::keys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The PASERK `k4.pid` of the public key.
    pub kid: String,
    /// Unix seconds, from the file name.
    pub created: u64,
    /// Whether the ring holds the secret key (an issuer key) or only the
    /// public key (a trusted key).
    pub can_sign: bool,
}

struct Entry {
    info: KeyInfo,
    public: AsymmetricPublicKey<V4>,
    secret: Option<AsymmetricSecretKey<V4>>,
}

/// The issuer keys: every key verifies, the newest secret key signs.
#[derive(Default)]
pub struct KeyRing {
    /// Sorted by (created, kid), oldest first.
    entries: Vec<Entry>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.info))
            .finish()
    }
}

/// A parsed key file name: (created, pid8, is_secret).
fn parse_file_name(path: &Path) -> Option<(u64, String, bool)> {
    let secret = match path.extension()?.to_str()? {
        "key" => true,
        "pub" => false,
        _ => return None,
    };
    let stem = path.file_stem()?.to_str()?;
    let (created, pid8) = stem.split_once('-')?;
    if created.is_empty() || !created.bytes().all(|b| b.is_ascii_digit()) || pid8.len() != 8 {
        return None;
    }
    Some((created.parse().ok()?, pid8.to_string(), secret))
}

fn pid8(kid: &str) -> &str {
    let hash = kid.strip_prefix(PID_PREFIX).unwrap_or(kid);
    hash.get(..8).unwrap_or(hash)
}

impl KeyRing {
    /// An empty ring (trusts nothing, cannot sign).
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Loads every `*.key` and `*.pub` file in `dir` (other files are
    /// ignored). A key present as both keeps its secret.
    pub fn load(dir: &Path) -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing::new();
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .map(|e| e.map(|e| e.path()).map_err(io_err(dir)))
            .collect::<Result<_, _>>()?;
        paths.sort();
        for path in paths {
            let is_key_file = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("key" | "pub")
            );
            if !is_key_file || !path.is_file() {
                continue;
            }
            let (created, name_pid, secret) = parse_file_name(&path)
                .ok_or_else(|| KeyError::BadFileName { path: path.clone() })?;
            let text = fs::read_to_string(&path).map_err(io_err(&path))?;
            let what = path.display().to_string();
            let (public, secret) = if secret {
                let mode = fs::metadata(&path)
                    .map_err(io_err(&path))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions {
                        path,
                        mode: mode & 0o777,
                    });
                }
                let sk = parse_secret(&text, &what)?;
                (public_of(&sk), Some(sk))
            } else {
                (parse_public(&text, &what)?, None)
            };
            let kid = key_id(&public);
            if pid8(&kid) != name_pid {
                return Err(KeyError::KidMismatch {
                    path,
                    kid,
                    name_pid,
                });
            }
            ring.insert(created, public, secret);
        }
        Ok(ring)
    }

    /// Generates a new issuer key in `dir` (created 0700 if absent) and
    /// returns it; it becomes the signing key of rings loaded from then on.
    /// Its `created` is now, or one second after the newest key already in
    /// `dir` if that is later, so "newest" is never a tie.
    pub fn generate(dir: &Path) -> Result<KeyInfo, KeyError> {
        KeyRing::generate_at(dir, now_unix())
    }

    /// [`KeyRing::generate`] with an explicit creation time (same bump rule).
    pub fn generate_at(dir: &Path, created: u64) -> Result<KeyInfo, KeyError> {
        create_private_dir(dir)?;
        let created = created.max(Self::newest_in(dir)?.map_or(0, |c| c + 1));
        let pair = AsymmetricKeyPair::<V4>::generate().map_err(|_| KeyError::Random)?;
        let kid = key_id(&pair.public);
        let path = dir.join(format!("{created}-{}.key", pid8(&kid)));
        let mut text = paserk(&pair.secret);
        text.push('\n');
        write_private(&path, text.as_bytes(), false)?;
        Ok(KeyInfo {
            kid,
            created,
            can_sign: true,
        })
    }

    /// Adds a trusted public key (PASERK `k4.public`, e.g. another issuer's)
    /// to `dir` as a `.pub` file, created now.
    pub fn trust(dir: &Path, public_paserk: &str) -> Result<KeyInfo, KeyError> {
        let public = parse_public(public_paserk, "argument")?;
        create_private_dir(dir)?;
        let created = now_unix().max(Self::newest_in(dir)?.map_or(0, |c| c + 1));
        let kid = key_id(&public);
        let path = dir.join(format!("{created}-{}.pub", pid8(&kid)));
        write_private(&path, format!("{}\n", paserk(&public)).as_bytes(), false)?;
        Ok(KeyInfo {
            kid,
            created,
            can_sign: false,
        })
    }

    fn newest_in(dir: &Path) -> Result<Option<u64>, KeyError> {
        Ok(fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_file_name(&e.path()).map(|(c, _, _)| c))
            .max())
    }

    /// Adds a secret key (PASERK `k4.secret`) in memory only.
    pub fn insert_secret(
        &mut self,
        secret_paserk: &str,
        created: u64,
    ) -> Result<KeyInfo, KeyError> {
        let sk = parse_secret(secret_paserk, "argument")?;
        Ok(self.insert(created, public_of(&sk), Some(sk)))
    }

    /// Adds a trusted public key (PASERK `k4.public`) in memory only.
    pub fn insert_public(
        &mut self,
        public_paserk: &str,
        created: u64,
    ) -> Result<KeyInfo, KeyError> {
        let pk = parse_public(public_paserk, "argument")?;
        Ok(self.insert(created, pk, None))
    }

    fn insert(
        &mut self,
        created: u64,
        public: AsymmetricPublicKey<V4>,
        secret: Option<AsymmetricSecretKey<V4>>,
    ) -> KeyInfo {
        let kid = key_id(&public);
        if let Some(e) = self.entries.iter_mut().find(|e| e.info.kid == kid) {
            if e.secret.is_none() && secret.is_some() {
                e.secret = secret;
                e.info.can_sign = true;
            }
            return e.info.clone();
        }
        let info = KeyInfo {
            kid,
            created,
            can_sign: secret.is_some(),
        };
        self.entries.push(Entry {
            info: info.clone(),
            public,
            secret,
        });
        self.entries
            .sort_by(|a, b| (a.info.created, &a.info.kid).cmp(&(b.info.created, &b.info.kid)));
        info
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.entries.iter().map(|e| e.info.clone()).collect()
    }

    /// The key that [`crate::issue`] signs with: the newest secret key.
    pub fn signing_key(&self) -> Option<KeyInfo> {
        self.signer().map(|(info, _)| info.clone())
    }

    /// The PASERK `k4.public` of key `kid` (to hand to another appliance).
    pub fn public_paserk(&self, kid: &str) -> Option<String> {
        self.public(kid).map(paserk)
    }

    pub(crate) fn public(&self, kid: &str) -> Option<&AsymmetricPublicKey<V4>> {
        self.entries
            .iter()
            .find(|e| e.info.kid == kid)
            .map(|e| &e.public)
    }

    pub(crate) fn signer(&self) -> Option<(&KeyInfo, &AsymmetricSecretKey<V4>)> {
        self.entries
            .iter()
            .rev()
            .find_map(|e| e.secret.as_ref().map(|s| (&e.info, s)))
    }
}

/// The holder's Ed25519 key pair: its public key goes into the coupon's
/// `holder` claim, its secret key signs proofs of possession.
#[derive(Clone)]
pub struct HolderKey {
    secret: AsymmetricSecretKey<V4>,
    public: AsymmetricPublicKey<V4>,
}

impl fmt::Debug for HolderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HolderKey")
            .field("public", &self.public_paserk())
            .finish_non_exhaustive()
    }
}

impl HolderKey {
    /// A fresh random key pair.
    pub fn generate() -> Result<HolderKey, KeyError> {
        let pair = AsymmetricKeyPair::<V4>::generate().map_err(|_| KeyError::Random)?;
        Ok(HolderKey {
            secret: pair.secret,
            public: pair.public,
        })
    }

    /// From a PASERK `k4.secret` string.
    pub fn from_paserk(secret: &str) -> Result<HolderKey, KeyError> {
        let secret = parse_secret(secret, "holder secret key")?;
        Ok(HolderKey {
            public: public_of(&secret),
            secret,
        })
    }

    /// Reads a key written by [`HolderKey::write`].
    pub fn read(path: &Path) -> Result<HolderKey, KeyError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let secret = parse_secret(&text, &path.display().to_string())?;
        Ok(HolderKey {
            public: public_of(&secret),
            secret,
        })
    }

    /// Writes the secret key (PASERK `k4.secret`) to a new file, mode 0600.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        write_private(
            path,
            format!("{}\n", self.secret_paserk()).as_bytes(),
            false,
        )
    }

    /// The secret key as PASERK `k4.secret`.
    pub fn secret_paserk(&self) -> String {
        paserk(&self.secret)
    }

    /// The public key as PASERK `k4.public` (the coupon's `holder` claim).
    pub fn public_paserk(&self) -> String {
        paserk(&self.public)
    }

    pub(crate) fn secret(&self) -> &AsymmetricSecretKey<V4> {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generated_key_files_are_0600_and_named_after_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let info = KeyRing::generate_at(&dir, 1000).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let path = dir.join(format!("1000-{}.key", pid8(&info.kid)));
        assert_eq!(mode(&path), 0o600);
        assert!(info.kid.starts_with("k4.pid."));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("k4.secret."));
        let ring = KeyRing::load(&dir).unwrap();
        assert_eq!(ring.keys(), vec![info]);
    }

    #[test]
    fn newest_secret_key_signs_and_all_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let a = KeyRing::generate_at(tmp.path(), 1000).unwrap();
        // Same requested second: bumped so the order is well defined.
        let b = KeyRing::generate_at(tmp.path(), 1000).unwrap();
        assert_eq!(b.created, 1001);
        let ring = KeyRing::load(tmp.path()).unwrap();
        assert_eq!(ring.keys(), vec![a.clone(), b.clone()]);
        assert_eq!(ring.signing_key(), Some(b.clone()));
        assert!(ring.public(&a.kid).is_some() && ring.public(&b.kid).is_some());
    }

    #[test]
    fn public_only_keys_verify_but_never_sign() {
        let tmp = tempfile::tempdir().unwrap();
        let other = HolderKey::generate().unwrap();
        let mine = KeyRing::generate_at(tmp.path(), 10).unwrap();
        let trusted = KeyRing::trust(tmp.path(), &other.public_paserk()).unwrap();
        assert!(!trusted.can_sign);
        let ring = KeyRing::load(tmp.path()).unwrap();
        assert_eq!(ring.keys().len(), 2);
        assert_eq!(ring.signing_key(), Some(mine));
        assert_eq!(
            ring.public_paserk(&trusted.kid),
            Some(other.public_paserk())
        );
    }

    #[test]
    fn readable_secret_key_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let info = KeyRing::generate_at(tmp.path(), 5).unwrap();
        let path = tmp.path().join(format!("5-{}.key", pid8(&info.kid)));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyRing::load(tmp.path()).unwrap_err();
        assert!(
            matches!(e, KeyError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
    }

    #[test]
    fn misnamed_or_corrupt_key_files_are_refused_with_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let info = KeyRing::generate_at(tmp.path(), 5).unwrap();
        let good = tmp.path().join(format!("5-{}.key", pid8(&info.kid)));
        let renamed = tmp.path().join("5-AAAAAAAA.key");
        fs::rename(&good, &renamed).unwrap();
        let e = KeyRing::load(tmp.path()).unwrap_err();
        assert!(matches!(e, KeyError::KidMismatch { .. }), "{e}");
        assert!(e.to_string().contains("5-AAAAAAAA.key"));

        fs::remove_file(&renamed).unwrap();
        write_private(&tmp.path().join("nodash.key"), b"x", false).unwrap();
        let e = KeyRing::load(tmp.path()).unwrap_err();
        assert!(matches!(e, KeyError::BadFileName { .. }), "{e}");

        fs::remove_file(tmp.path().join("nodash.key")).unwrap();
        write_private(&tmp.path().join("7-abcdefgh.key"), b"k4.secret.nope", false).unwrap();
        let e = KeyRing::load(tmp.path()).unwrap_err();
        assert!(e.to_string().contains("7-abcdefgh.key"), "{e}");

        // Other files are ignored.
        fs::remove_file(tmp.path().join("7-abcdefgh.key")).unwrap();
        fs::write(tmp.path().join("README"), "hi").unwrap();
        assert!(KeyRing::load(tmp.path()).unwrap().keys().is_empty());
    }

    #[test]
    fn holder_key_round_trips_through_paserk_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let k = HolderKey::generate().unwrap();
        assert!(k.public_paserk().starts_with("k4.public."));
        let back = HolderKey::from_paserk(&k.secret_paserk()).unwrap();
        assert_eq!(back.public_paserk(), k.public_paserk());
        let path = tmp.path().join("holder.key");
        k.write(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            HolderKey::read(&path).unwrap().public_paserk(),
            k.public_paserk()
        );
        // Never overwritten.
        assert!(k.write(&path).is_err());
        assert!(HolderKey::from_paserk(&k.public_paserk()).is_err());
        assert!(!format!("{k:?}").contains(&k.secret_paserk()));
    }

    #[test]
    fn overwrite_replaces_and_keeps_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("b.json");
        write_private(&p, b"one", true).unwrap();
        write_private(&p, b"two", true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
