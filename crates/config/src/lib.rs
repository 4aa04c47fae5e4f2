//! One typed configuration: defaults, then a TOML file, then TIDINGS_* environment variables
