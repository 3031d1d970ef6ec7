//! Daemon-wide settings the programs read from the single-entry `TG_CONFIG` array.

/// `Config.flags` bits.
pub const CFG_READY: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Cookie of the node's network namespace. The cgroup socket hooks are attached to the
    /// machine-wide cgroup v2 root, so they act only on sockets whose netns cookie matches.
    pub netns_cookie: u64,
    /// ifindex of the uplink in the node namespace.
    pub uplink_ifindex: u32,
    /// `CFG_*` bits; `CFG_READY` is set once the agent filled every map.
    pub flags: u32,
}

crate::impl_pod!(Config);

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::Config>(), 16);
        assert_eq!(core::mem::align_of::<super::Config>(), 8);
    }
}
