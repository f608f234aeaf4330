//! The user the agent runs as (`--user NAME|UID[:GID]`), resolved in the
//! supervisor before the fork (no NSS lookups in the child).
//!
//! Dropping to the user happens in the child: supplementary groups cleared,
//! then gid, then uid (in that order: after setuid the process could no
//! longer change its groups). Capabilities go with the uid change (no
//! SECBIT_KEEP_CAPS), and the bounding set is emptied before it, so nothing
//! can be regained through setuid binaries or file capabilities;
//! `no_new_privs` seals that.

use nix::unistd::{Uid, User};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Resolve `nobody`, `1000`, `1000:1000` or `name:gid`.
pub fn resolve(spec: &str) -> Result<RunAs, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(format!("invalid --user {spec:?}: no user"));
    }
    let (uid, default_gid) = match user.parse::<u32>() {
        Ok(uid) => {
            let gid = User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.gid.as_raw());
            (uid, gid)
        }
        Err(_) if user.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(format!(
                "invalid --user {spec:?}: {user} is not a user id (ids are below 4294967295)"
            ))
        }
        Err(_) => match User::from_name(user) {
            Ok(Some(u)) => (u.uid.as_raw(), Some(u.gid.as_raw())),
            Ok(None) => return Err(format!("invalid --user {spec:?}: no user named {user:?}")),
            Err(e) => {
                return Err(format!(
                    "invalid --user {spec:?}: cannot look up {user:?}: {e}"
                ))
            }
        },
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match nix::unistd::Group::from_name(g) {
                Ok(Some(grp)) => grp.gid.as_raw(),
                _ => return Err(format!("invalid --user {spec:?}: no group named {g:?}")),
            },
        },
        // A numeric uid without a passwd entry: its own number as gid.
        None => default_gid.unwrap_or(uid),
    };
    if uid == 0 {
        return Err(format!(
            "invalid --user {spec:?}: running the agent as root is what --user is meant to avoid"
        ));
    }
    // (uid_t)-1 / (gid_t)-1 tell setresuid/setresgid "leave this one
    // unchanged": the agent would keep the supervisor's (root's) ids.
    if uid == u32::MAX || gid == u32::MAX {
        return Err(format!(
            "invalid --user {spec:?}: 4294967295 is not an id ((uid_t)-1 means \"unchanged\" \
             to the kernel: the agent would stay root)"
        ));
    }
    Ok(RunAs { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minus_one_is_not_an_id() {
        // setresuid(-1, ...) changes nothing: this ran the agent as root.
        for spec in ["4294967295", "65534:4294967295", "4294967295:65534"] {
            let err = resolve(spec).unwrap_err();
            assert!(err.contains("4294967295 is not an id"), "{spec}: {err}");
        }
    }

    #[test]
    fn resolves_names_and_numbers() {
        let nobody = resolve("nobody").unwrap();
        assert_eq!(nobody.uid, 65534);
        assert_eq!(
            resolve("65534:65534").unwrap(),
            RunAs {
                uid: 65534,
                gid: 65534
            }
        );
        assert_eq!(
            resolve("12345").unwrap(),
            RunAs {
                uid: 12345,
                gid: 12345
            }
        );
        assert!(resolve("root").is_err());
        assert!(resolve("0").is_err());
        assert!(resolve("no-such-user-here").is_err());
        assert!(resolve(":1").is_err());
        assert!(resolve("nobody:no-such-group").is_err());
    }
}
