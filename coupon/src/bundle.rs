//! The install bundle: what the issuer hands the customer, JSON, mode 0600
//! (it may carry the holder's secret key).
//!
//! ```json
//! {"id":"cp-1","token":"v4.public...","holder_secret":"k4.secret..."}
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::claims::Claims;
use crate::keys::{write_private, HolderKey, KeyError};
use crate::token::peek_claims;

/// A coupon as installed on the customer's machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The coupon id (the same as in the token's claims).
    pub id: String,
    /// The coupon token.
    pub token: String,
    /// The holder's secret key, PASERK `k4.secret`, when the issuer made
    /// the key pair; absent when the customer's client made it (`keygen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_secret: Option<String>,
}

/// A bundle that cannot be read, written or trusted; names the file and
/// the problem.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] KeyError),
    /// Not a bundle.
    #[error("{}: not a coupon bundle: {detail}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        detail: String,
    },
    /// The parts do not agree or do not parse.
    #[error("bundle for coupon {id:?}: {detail}")]
    Invalid {
        /// The bundle's id.
        id: String,
        /// What is wrong.
        detail: String,
    },
}

impl Bundle {
    /// A bundle for `token`, with the holder's secret key if the issuer
    /// generated it. Checks the token's claims shape (not its signature).
    pub fn new(token: String, holder: Option<&HolderKey>) -> Result<Bundle, BundleError> {
        let b = Bundle {
            id: String::new(),
            holder_secret: holder.map(HolderKey::secret_paserk),
            token,
        };
        let (claims, _) = peek_claims(&b.token).map_err(|r| BundleError::Invalid {
            id: String::new(),
            detail: format!("the token does not parse ({r})"),
        })?;
        let b = Bundle { id: claims.id, ..b };
        b.claims()?;
        Ok(b)
    }

    /// The token's claims, **unverified**, after checking that the bundle
    /// is consistent: the token parses, its id is the bundle's id, and a
    /// holder secret, if present, is the key the claims name.
    pub fn claims(&self) -> Result<Claims, BundleError> {
        let invalid = |detail: String| BundleError::Invalid {
            id: self.id.clone(),
            detail,
        };
        let (claims, _) = peek_claims(&self.token)
            .map_err(|r| invalid(format!("the token does not parse ({r})")))?;
        if claims.id != self.id {
            return Err(invalid(format!(
                "the token is for coupon {:?}, not {:?}",
                claims.id, self.id
            )));
        }
        if let Some(secret) = &self.holder_secret {
            let key = HolderKey::from_paserk(secret)
                .map_err(|_| invalid("holder_secret is not a PASERK k4.secret key".to_string()))?;
            if key.public_paserk() != claims.holder {
                return Err(invalid(format!(
                    "holder_secret belongs to {}, but the coupon's holder is {}",
                    key.public_paserk(),
                    claims.holder
                )));
            }
        }
        Ok(claims)
    }

    /// The holder key carried by the bundle, if any.
    pub fn holder(&self) -> Result<Option<HolderKey>, BundleError> {
        self.holder_secret
            .as_deref()
            .map(HolderKey::from_paserk)
            .transpose()
            .map_err(|_| BundleError::Invalid {
                id: self.id.clone(),
                detail: "holder_secret is not a PASERK k4.secret key".to_string(),
            })
    }

    /// Writes the bundle as JSON, mode 0600, replacing `path` atomically.
    pub fn write(&self, path: &Path) -> Result<(), BundleError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| BundleError::Invalid {
            id: self.id.clone(),
            detail: e.to_string(),
        })?;
        json.push(b'\n');
        Ok(write_private(path, &json, true)?)
    }

    /// Reads a bundle (JSON only; call [`Bundle::claims`] to check it).
    pub fn read(path: &Path) -> Result<Bundle, BundleError> {
        let text = fs::read(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| BundleError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::fixture;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn bundle_round_trips_through_a_0600_file() {
        let f = fixture();
        let b = Bundle::new(f.token.clone(), Some(&f.holder)).unwrap();
        assert_eq!(b.id, f.claims.id);
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("cp.json");
        b.write(&p).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = Bundle::read(&p).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.claims().unwrap(), f.claims);
        assert_eq!(
            back.holder().unwrap().unwrap().public_paserk(),
            f.claims.holder
        );
    }

    #[test]
    fn inconsistent_bundles_are_refused() {
        let f = fixture();
        let wrong_key = HolderKey::generate().unwrap();
        let e = Bundle::new(f.token.clone(), Some(&wrong_key)).unwrap_err();
        assert!(e.to_string().contains("holder"), "{e}");
        let mut b = Bundle::new(f.token.clone(), None).unwrap();
        b.id = "other".to_string();
        assert!(b
            .claims()
            .unwrap_err()
            .to_string()
            .contains("not \"other\""));
        assert!(Bundle::new("v4.public.xx".to_string(), None).is_err());
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.json");
        fs::write(&p, r#"{"id":"a","token":"b","extra":1}"#).unwrap();
        assert!(matches!(Bundle::read(&p), Err(BundleError::Parse { .. })));
    }
}
