//! The emulated Qubes machine. STUB.
