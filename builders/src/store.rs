//! Nix store-path math (being written).
