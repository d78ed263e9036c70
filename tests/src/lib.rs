//! Helpers shared by the integration tests: locating binaries and the test guest, running VMs.
