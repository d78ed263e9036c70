//! Backend daemon plumbing (stub).
