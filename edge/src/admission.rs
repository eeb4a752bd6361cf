//! Connection admission: concurrent connections per address, per user and
//! in total on this edge. A slot is a guard: dropping it (the connection
//! ended, or the upgrade never completed) gives the slot back. The counts
//! also feed `GET /status`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// Which limit refused a connection (the `reason` of `conn_limited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Global,
    PerIp,
    PerUser,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::PerIp => "per_ip",
            Self::PerUser => "per_user",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    peak: usize,
    by_ip: HashMap<IpAddr, usize>,
    /// Signed-in connections per user, and whether the user is anonymous.
    by_user: HashMap<String, (usize, bool)>,
    authenticated: usize,
    anonymous: usize,
}

/// The counts of this edge's connections.
pub(crate) struct Admission {
    counts: Mutex<Counts>,
    max_total: usize,
    max_per_ip: usize,
    max_per_user: usize,
    started: Instant,
}

/// A connection's slot; given back on drop.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

/// A signed-in user's slot; given back on drop.
pub(crate) struct UserSlot {
    admission: Arc<Admission>,
    user: String,
}

/// What `GET /status` reports about connections.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Snapshot {
    pub total: usize,
    pub authenticated: usize,
    pub anonymous: usize,
    pub peak: usize,
    /// Users with the most connections, most first (at most 20).
    pub top_users: Vec<(String, usize)>,
    pub uptime_s: u64,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: Mutex::default(),
            max_total,
            max_per_ip,
            max_per_user,
            started: Instant::now(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection from `ip`, unless a limit is reached.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut counts = self.counts();
        if counts.total >= self.max_total {
            return Err(Refused::Global);
        }
        let per_ip = counts.by_ip.entry(ip).or_default();
        if *per_ip >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *per_ip += 1;
        counts.total += 1;
        counts.peak = counts.peak.max(counts.total);
        Ok(Slot {
            admission: self.clone(),
            ip,
        })
    }

    /// A slot for one more connection of `user`, unless at the limit.
    pub fn sign_in(self: &Arc<Self>, user: &str, anonymous: bool) -> Result<UserSlot, Refused> {
        let mut counts = self.counts();
        let entry = counts
            .by_user
            .entry(user.to_string())
            .or_insert((0, anonymous));
        if entry.0 >= self.max_per_user {
            if entry.0 == 0 {
                counts.by_user.remove(user);
            }
            return Err(Refused::PerUser);
        }
        entry.0 += 1;
        if anonymous {
            counts.anonymous += 1;
        } else {
            counts.authenticated += 1;
        }
        Ok(UserSlot {
            admission: self.clone(),
            user: user.to_string(),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        let counts = self.counts();
        let mut top_users: Vec<(String, usize)> = counts
            .by_user
            .iter()
            .map(|(user, (n, _))| (user.clone(), *n))
            .collect();
        top_users.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top_users.truncate(20);
        Snapshot {
            total: counts.total,
            authenticated: counts.authenticated,
            anonymous: counts.anonymous,
            peak: counts.peak,
            top_users,
            uptime_s: self.started.elapsed().as_secs(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.by_ip.remove(&self.ip);
            }
        }
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        let Some((n, anonymous)) = counts.by_user.get_mut(&self.user) else {
            return;
        };
        *n -= 1;
        let (empty, anonymous) = (*n == 0, *anonymous);
        if empty {
            counts.by_user.remove(&self.user);
        }
        if anonymous {
            counts.anonymous = counts.anonymous.saturating_sub(1);
        } else {
            counts.authenticated = counts.authenticated.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_global_limits_give_slots_back_on_drop() {
        let admission = Admission::new(3, 2, 5);
        let a: IpAddr = "203.0.113.1".parse().expect("ip");
        let b: IpAddr = "203.0.113.2".parse().expect("ip");
        let a1 = admission.open(a).expect("first");
        let _a2 = admission.open(a).expect("second");
        assert_eq!(admission.open(a).err(), Some(Refused::PerIp));
        let _b1 = admission.open(b).expect("other address");
        assert_eq!(admission.open(b).err(), Some(Refused::Global));
        drop(a1);
        let _a3 = admission.open(a).expect("slot given back");
        assert_eq!(admission.snapshot().total, 3);
        assert_eq!(admission.snapshot().peak, 3);
    }

    #[test]
    fn per_user_limit_and_counts() {
        let admission = Admission::new(100, 100, 2);
        let s1 = admission.sign_in("alice", false).expect("one");
        let _s2 = admission.sign_in("alice", false).expect("two");
        assert_eq!(
            admission.sign_in("alice", false).err(),
            Some(Refused::PerUser)
        );
        let _anon = admission.sign_in("anon_1", true).expect("anonymous");
        let snap = admission.snapshot();
        assert_eq!((snap.authenticated, snap.anonymous), (2, 1));
        assert_eq!(snap.top_users[0], ("alice".to_string(), 2));
        drop(s1);
        let _s3 = admission.sign_in("alice", false).expect("slot given back");
        assert_eq!(admission.snapshot().authenticated, 2);
    }
}
