//! Caps on builder connections that have not authenticated yet, overall and per address, so
//! a flood of idle sockets (which answer pings and never say hello) cannot exhaust file
//! descriptors or memory. A connection holds an [`UnauthenticatedSlot`] from its accept until
//! it authenticates or closes; dropping the slot gives it back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
}

/// Why a connection was refused before its upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionRefused {
    #[error("too many unauthenticated builder connections ({0}); retry later")]
    Overall(usize),
    #[error("too many unauthenticated builder connections from this address ({0}); retry later")]
    PerAddress(usize),
}

impl Admission {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_total,
            max_per_address,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent under a panic elsewhere: every change is one statement.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a new connection from `peer`, or says which cap it would break.
    pub fn admit(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
    ) -> Result<UnauthenticatedSlot, AdmissionRefused> {
        let mut counts = self.counts();
        if counts.total >= self.max_total {
            return Err(AdmissionRefused::Overall(self.max_total));
        }
        if let Some(ip) = peer {
            let from_peer = counts.by_address.entry(ip).or_insert(0);
            if *from_peer >= self.max_per_address {
                return Err(AdmissionRefused::PerAddress(self.max_per_address));
            }
            *from_peer += 1;
        }
        counts.total += 1;
        Ok(UnauthenticatedSlot {
            admission: self.clone(),
            peer,
        })
    }

    /// Unauthenticated connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    fn release(&self, peer: Option<IpAddr>) {
        let mut counts = self.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(ip) = peer {
            if let Some(n) = counts.by_address.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.by_address.remove(&ip);
                }
            }
        }
    }
}

/// One unauthenticated connection's place; given back when dropped.
#[derive(Debug)]
pub struct UnauthenticatedSlot {
    admission: Arc<Admission>,
    peer: Option<IpAddr>,
}

impl Drop for UnauthenticatedSlot {
    fn drop(&mut self) {
        self.admission.release(self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_overall_and_gives_slots_back() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([10, 0, 0, 1]));
        let b = IpAddr::from([10, 0, 0, 2]);
        let first = admission.admit(Some(a));
        let second = admission.admit(Some(a));
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(
            admission.admit(Some(a)).err(),
            Some(AdmissionRefused::PerAddress(2))
        );
        let third = admission.admit(Some(b));
        assert!(third.is_ok());
        assert_eq!(
            admission.admit(Some(b)).err(),
            Some(AdmissionRefused::Overall(3))
        );
        drop(first);
        assert_eq!(admission.open(), 2);
        assert!(admission.admit(Some(a)).is_ok(), "a freed slot is reusable");
    }
}
