//! vhost-user backend devices.
