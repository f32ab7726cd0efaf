//! The cap on open connections per client address (`--max-connections-per-ip`), so that one
//! client cannot hold every place under the connection cap. Counted on the TCP peer at accept
//! time, before a byte is read; an IPv6 client counts per /64, the block one host usually gets.
//! A `--trusted-proxy` peer is not counted (all traffic comes through it; the proxy limits per
//! client). A connection over the cap is closed at once rather than left in the backlog, where it
//! would stall the connections of everyone else.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Open connections per client address.
pub struct PerIp {
    /// 0: no cap.
    max: usize,
    exempt: Vec<IpAddr>,
    open: Mutex<HashMap<IpAddr, usize>>,
    /// Connections closed at once for being over the cap (for `/metrics`).
    refused: Arc<AtomicU64>,
}

impl PerIp {
    pub fn new(max: usize, exempt: Vec<IpAddr>, refused: Arc<AtomicU64>) -> Arc<PerIp> {
        Arc::new(PerIp {
            max,
            exempt,
            open: Mutex::new(HashMap::new()),
            refused,
        })
    }

    /// No cap (the metrics address).
    pub fn off() -> Arc<PerIp> {
        PerIp::new(0, Vec::new(), Arc::default())
    }

    /// A place for a new connection from `peer`, or `None` when its address has the most open.
    pub fn admit(self: &Arc<PerIp>, peer: IpAddr) -> Option<IpPlace> {
        let peer = peer.to_canonical();
        if self.max == 0 || self.exempt.contains(&peer) {
            return Some(IpPlace {
                counts: self.clone(),
                key: None,
            });
        }
        let key = client_key(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            drop(open);
            self.refused.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "connection from {peer} closed: {} open from its address already",
                self.max
            );
            return None;
        }
        *count += 1;
        Some(IpPlace {
            counts: self.clone(),
            key: Some(key),
        })
    }
}

/// The address a client is counted under: IPv4 as it is, IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
    }
}

/// One connection's place in its address's count, given back when the socket is gone.
pub struct IpPlace {
    counts: Arc<PerIp>,
    key: Option<IpAddr>,
}

impl Drop for IpPlace {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_places_back_and_others_and_the_exempt_are_apart() {
        let per_ip = PerIp::new(2, vec!["10.0.0.1".parse().unwrap()], Arc::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = per_ip.admit(a).unwrap();
        let _second = per_ip.admit(a).unwrap();
        assert!(per_ip.admit(a).is_none());
        assert!(per_ip.admit("192.0.2.2".parse().unwrap()).is_some());
        let proxy: Vec<_> = (0..5)
            .map(|_| per_ip.admit("10.0.0.1".parse().unwrap()))
            .collect();
        assert!(proxy.iter().all(Option::is_some));
        drop(first);
        assert!(per_ip.admit(a).is_some());
        assert_eq!(per_ip.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_ipv6_client_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let per_ip = PerIp::new(1, Vec::new(), Arc::default());
        let _held = per_ip.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(per_ip
            .admit("2001:db8:1:2::ffff".parse().unwrap())
            .is_none());
        assert!(per_ip.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _v4 = per_ip.admit("192.0.2.9".parse().unwrap()).unwrap();
        assert!(per_ip.admit("::ffff:192.0.2.9".parse().unwrap()).is_none());
    }
}
