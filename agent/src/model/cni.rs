//! CNI attachments in the model: the key a runtime knows a container by, the Tollgate
//! container name derived from it, and the limits the plugin and the daemon share.

pub use super::state::{CniAttachment, CniKey};

pub use super::network::DEFAULT_NETWORK;

/// The most DELs the plugin may queue while the daemon is down (the queue is replayed at
/// start; a bound keeps a broken node from filling its disk).
pub const CNI_QUEUE_MAX: usize = 4096;

/// A container name for a CNI key: `cni-` + the start of the container id + a hash of the
/// whole key, so two interfaces of one container, or one id on two networks, never clash.
pub fn container_name(key: &CniKey) -> String {
    let id: String = key
        .container_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("cni-{id}-{:08x}", fnv32(key))
}

/// FNV-1a over the key's parts (stable across versions and platforms, unlike `DefaultHasher`).
fn fnv32(key: &CniKey) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in [&key.network, &key.container_id, &key.ifname] {
        for b in part.bytes().chain([0]) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// The MTU the kernel gives a new veth.
pub const VETH_MTU: u32 = 1500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_tell_keys_apart() {
        let k = |id: &str, ifname: &str| CniKey {
            network: "default".into(),
            container_id: id.into(),
            ifname: ifname.into(),
        };
        let a = container_name(&k(&"f".repeat(64), "eth0"));
        assert!(super::super::state::validate_name(&a).is_ok(), "{a}");
        assert_ne!(a, container_name(&k(&"f".repeat(64), "eth1")));
        assert_ne!(a, container_name(&k(&"f".repeat(63), "eth0")));
        let odd = container_name(&k("a/b c", "eth0"));
        assert!(super::super::state::validate_name(&odd).is_ok(), "{odd}");
    }
}
