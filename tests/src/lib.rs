//! Multi-process integration tests of fleet against discord-mock live in `tests/`.
