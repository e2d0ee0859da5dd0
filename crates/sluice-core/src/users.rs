//! The broker's users, shared by every front-end that logs clients in
//! (AMQP's handshake, the admin API's basic authentication).

use std::net::IpAddr;

/// A user that may log in. Its `Debug` masks the password, so no option
/// struct that holds users can print one.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password (compared as given).
    pub password: String,
    /// May connect only from a loopback address (RabbitMQ's rule for guest).
    pub loopback_only: bool,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &"****")
            .field("loopback_only", &self.loopback_only)
            .finish()
    }
}

/// The user `name` when `password` is theirs and they may log in from
/// `peer`; `None` otherwise.
pub fn authenticate<'a>(
    users: &'a [User],
    name: &str,
    password: &str,
    peer: IpAddr,
) -> Option<&'a User> {
    let user = users
        .iter()
        .find(|u| u.name == name && u.password == password)?;
    if user.loopback_only && !peer.is_loopback() {
        tracing::warn!(%peer, user = %name, "user may log in only from loopback");
        return None;
    }
    Some(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<User> {
        vec![
            User {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
            },
            User {
                name: "alice".into(),
                password: "secret".into(),
                loopback_only: false,
            },
        ]
    }

    #[test]
    fn debug_output_masks_the_password() {
        let printed = format!("{:?}", users());
        assert!(printed.contains("alice"), "{printed}");
        assert!(!printed.contains("secret"), "{printed}");
    }

    #[test]
    fn loopback_only_users_are_refused_from_elsewhere() {
        let users = users();
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let remote = IpAddr::from([10, 0, 0, 7]);
        assert!(authenticate(&users, "guest", "guest", loopback).is_some());
        assert!(authenticate(&users, "guest", "guest", remote).is_none());
        assert!(authenticate(&users, "alice", "secret", remote).is_some());
        assert!(authenticate(&users, "alice", "wrong", loopback).is_none());
        assert!(authenticate(&users, "bob", "secret", loopback).is_none());
    }
}
