//! Userspace proxies for node-to-node links (being written).
