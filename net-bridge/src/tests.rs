//! Bridge rules and properties.
