//! Host tests, named after the rules they check.
