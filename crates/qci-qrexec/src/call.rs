//! Calling qrexec services. STUB.
