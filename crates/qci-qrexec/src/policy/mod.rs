//! The Qubes 4.1+ `policy.d` policy engine. STUB: to be implemented.
