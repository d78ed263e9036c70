//! vhost-user frontend session (stub).
