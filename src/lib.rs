//! Holds the end-to-end tests in `tests/`; it has no code of its own.
